//! The checks of `otoroshi.jobs` that span files (run by the load, `config::load_all`): each job names an entity of the load that lists
//! the step Job, and no entity has two schedules. Errors name the settings' file, the line of the
//! job's `plugin` and its key (`otoroshi.jobs[0].plugin`).

use std::path::Path;

use super::document::JobSettings;
use super::{Entity, Step};
use crate::config::{ConfigError, Position};

/// Finds the line of each job's `plugin` in the settings' file: the lines after `jobs` that say
/// `plugin` and its id, in order.
pub fn locate(jobs: &mut [JobSettings], text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.contains("jobs")) else { return };
    let mut from = start;
    for job in jobs {
        let found = lines
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, l)| l.contains("plugin") && l.contains(job.plugin.as_str()))
            .map(|(i, _)| i);
        if let Some(i) = found {
            job.line = i + 1;
            from = i + 1;
        }
    }
}

fn error(file: &Path, job: &JobSettings, message: String) -> ConfigError {
    ConfigError::Invalid {
        at: Position { file: file.to_path_buf(), line: (job.line > 0).then_some(job.line), column: None },
        key: format!("{}.plugin", job.path),
        message,
    }
}

/// # Errors
/// The first job that names no entity listing Job, or an entity scheduled twice.
pub fn check(jobs: &[JobSettings], entities: &[Entity], file: &Path) -> Result<(), ConfigError> {
    for (i, job) in jobs.iter().enumerate() {
        let Some(entity) = entities.iter().find(|e| e.id == job.plugin) else {
            let ids: Vec<&str> =
                entities.iter().filter(|e| e.steps.contains(&Step::Job)).map(|e| e.id.as_str()).collect();
            return Err(error(
                file,
                job,
                format!(
                    "no Otoroshi entity {:?} in this configuration; expected the id of an entity listing the step Job{}",
                    job.plugin,
                    if ids.is_empty() { String::new() } else { format!(" ({})", ids.join(", ")) }
                ),
            ));
        };
        if !entity.steps.contains(&Step::Job) {
            return Err(error(
                file,
                job,
                format!(
                    "entity {:?} (at {}:{}) does not list the step Job in its steps; expected an entity with \"Job\"",
                    job.plugin,
                    entity.file.display(),
                    entity.line
                ),
            ));
        }
        if let Some(first) = jobs[..i].iter().find(|j| j.plugin == job.plugin) {
            return Err(error(
                file,
                job,
                format!(
                    "entity {:?} is already scheduled by {}; expected one schedule per entity",
                    job.plugin, first.path
                ),
            ));
        }
    }
    Ok(())
}
