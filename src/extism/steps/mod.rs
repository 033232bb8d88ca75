//! The proxy-engine steps an Otoroshi WASM plugin runs at, with Otoroshi's JSON contracts:
//! the function each step calls ([`StepFunction`]), its input ([`input`], built from a
//! [`view::RequestView`] the server implements) and how its output is read ([`output`], into
//! server-neutral verdicts). docs/otoroshi.md says where each step runs on NGINX and Traffic
//! Server.

pub mod input;
pub mod json_text;
pub mod output;
pub mod route;
pub mod stream;
pub mod view;

use super::entity::Step;

/// A function a step calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepFunction {
    MatchesRoute,
    FindRoute,
    PreRoute,
    Access,
    TransformRequest,
    TransformResponse,
    CallBackend,
    SinkMatches,
    SinkHandle,
    HandleRequest,
    JobStart,
    JobRun,
    JobStop,
}

impl StepFunction {
    /// The export Otoroshi calls by default.
    #[must_use]
    pub fn default_name(self) -> &'static str {
        use StepFunction::*;
        match self {
            MatchesRoute => "matches_route",
            FindRoute => "find_route",
            PreRoute => "pre_route",
            Access => "access",
            TransformRequest => "transform_request",
            TransformResponse => "transform_response",
            CallBackend => "call_backend",
            SinkMatches => "sink_matches",
            SinkHandle => "sink_handle",
            HandleRequest => "handle_request",
            JobStart => "job_start",
            JobRun => "job_run",
            JobStop => "job_stop",
        }
    }

    /// The export to call given the entity's `functionName`: Otoroshi ignores `functionName` for
    /// `sink_matches`, `job_start` and `job_stop` (their names are fixed), and uses it for every
    /// other function.
    #[must_use]
    pub fn export(self, function_name: Option<&str>) -> &str {
        match self {
            StepFunction::SinkMatches | StepFunction::JobStart | StepFunction::JobStop => self.default_name(),
            _ => function_name.unwrap_or(self.default_name()),
        }
    }

    /// The functions a step calls.
    #[must_use]
    pub fn of(step: Step) -> &'static [StepFunction] {
        use StepFunction::*;
        match step {
            Step::MatchRoute => &[MatchesRoute],
            Step::Router => &[FindRoute],
            Step::PreRoute => &[PreRoute],
            Step::ValidateAccess => &[Access],
            Step::TransformRequest => &[TransformRequest],
            Step::TransformResponse => &[TransformResponse],
            Step::CallBackend => &[CallBackend],
            Step::Sink => &[SinkMatches, SinkHandle],
            Step::HandlesRequest => &[HandleRequest],
            Step::Job => &[JobStart, JobRun, JobStop],
            Step::HandlesTunnel | Step::DataExporterFilter | Step::DataExporterTransform => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_name_overrides_all_but_the_fixed_names() {
        assert_eq!(StepFunction::Access.export(Some("execute")), "execute");
        assert_eq!(StepFunction::Access.export(None), "access");
        assert_eq!(StepFunction::SinkMatches.export(Some("execute")), "sink_matches");
        assert_eq!(StepFunction::SinkHandle.export(Some("execute")), "execute");
        assert_eq!(StepFunction::JobRun.export(Some("tick")), "tick");
        assert_eq!(StepFunction::JobStop.export(Some("tick")), "job_stop");
    }

    #[test]
    fn every_step_that_runs_calls_something() {
        for name in Step::NAMES {
            let step = Step::from_name(name).unwrap();
            assert_eq!(!StepFunction::of(step).is_empty(), step.runs_here(), "{name}");
        }
    }
}
