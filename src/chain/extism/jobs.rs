//! Job (`job_start`, `job_run`, `job_stop`): an entity scheduled by `otoroshi.jobs` runs outside
//! any request. The server calls [`Job::start`] once it runs the plugins, [`Job::run`] every
//! `interval` (the first after `initial_delay`), and [`Job::stop`] when it stops them (NGINX: per
//! worker, on a timer of its event loop; Traffic Server: once per process, on a task thread).
//! The input is Otoroshi's `JobContext` (`snowflake`, `attrs`, `global_config`); the output is
//! ignored, as in Otoroshi; a failed call is logged and the schedule goes on.

use std::sync::Arc;
use std::time::Duration;

use crate::extism::steps::{input, StepFunction};

use super::{snowflakes, EntityLink};

/// One scheduled entity.
pub struct Job {
    pub entity: Arc<EntityLink>,
    pub interval: Duration,
    pub initial_delay: Duration,
    /// `instantiation: one`: one NGINX worker at a time runs it.
    pub one_worker: bool,
}

/// The jobs of a set of entities: those `otoroshi.jobs` schedules ([`EntityLink::job`]).
#[must_use]
pub fn jobs_of(entities: &[Arc<EntityLink>]) -> Vec<Job> {
    entities
        .iter()
        .filter_map(|e| {
            let s = e.job.as_ref()?;
            Some(Job {
                entity: e.clone(),
                interval: s.interval,
                initial_delay: s.initial_delay,
                one_worker: s.one_worker,
            })
        })
        .collect()
}

impl Job {
    /// `job_start`.
    ///
    /// # Errors
    /// Why the call failed (a trap, an error the plugin set, a non-zero code).
    pub fn start(&self) -> Result<(), String> {
        self.call(StepFunction::JobStart)
    }

    /// `job_run` (or `functionName`).
    ///
    /// # Errors
    /// As [`Job::start`].
    pub fn run(&self) -> Result<(), String> {
        self.call(StepFunction::JobRun)
    }

    /// `job_stop`.
    ///
    /// # Errors
    /// As [`Job::start`].
    pub fn stop(&self) -> Result<(), String> {
        self.call(StepFunction::JobStop)
    }

    fn call(&self, f: StepFunction) -> Result<(), String> {
        let snowflake = snowflakes().next();
        let json = input::job(&snowflake, &serde_json::Map::new());
        let entity = &self.entity;
        entity.call(entity.export(f), &json).map(drop).map_err(|e| {
            format!(
                "[proxy_wasm] otoroshi plugin {}: {} failed: {e}; the job's schedule goes on",
                entity.plugin.id,
                f.default_name()
            )
        })
    }
}
