//! What a plugin's failure (a trap, its time or memory limit) in one
//! transaction does to that transaction. What it does to later transactions
//! (503 while failed, or a fresh instance) is admission and recycling: see
//! `Chain::new` and `super::generations`.

use crate::config::FailurePolicy;

use super::flow::{failure_response, Flow, Phase};

/// The transaction's fate after one of its links failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// `fail_open`: the plugin is skipped from now on, the transaction goes
    /// on (a body it held is passed on as it was).
    Skip,
    /// `fail_closed` and `reload`: the rest of the chain is skipped and the
    /// transaction ends with this.
    Stop(Flow),
}

/// The policy of a plugin that failed in `phase`. `response_released`: the
/// response headers have left the chain (they may be on the wire), so the
/// 503 can no longer replace them and the response is aborted instead.
pub fn on_failure(policy: FailurePolicy, phase: Phase, response_released: bool) -> OnFailure {
    match policy {
        FailurePolicy::FailOpen => OnFailure::Skip,
        FailurePolicy::FailClosed | FailurePolicy::Reload => {
            OnFailure::Stop(if phase == Phase::ResponseBody || response_released {
                Flow::Abort
            } else {
                Flow::Respond(failure_response())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_open_skips_the_plugin_in_every_phase() {
        for phase in [Phase::RequestHeaders, Phase::RequestBody, Phase::ResponseHeaders, Phase::ResponseBody] {
            assert_eq!(on_failure(FailurePolicy::FailOpen, phase, false), OnFailure::Skip);
        }
    }

    #[test]
    fn fail_closed_and_reload_answer_503_until_the_response_is_released_then_abort() {
        for policy in [FailurePolicy::FailClosed, FailurePolicy::Reload] {
            for phase in [Phase::RequestHeaders, Phase::RequestBody, Phase::ResponseHeaders] {
                assert_eq!(on_failure(policy, phase, false), OnFailure::Stop(Flow::Respond(failure_response())));
            }
            assert_eq!(on_failure(policy, Phase::ResponseBody, true), OnFailure::Stop(Flow::Abort));
            assert_eq!(on_failure(policy, Phase::RequestBody, true), OnFailure::Stop(Flow::Abort));
        }
    }
}
