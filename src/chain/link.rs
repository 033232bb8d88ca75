//! One plugin's place in a chain, and the callbacks it takes.

use crate::abi::StreamType;
use crate::loader::LoadedPlugin;

use super::flow::Phase;

/// The stream callbacks a plugin exports and its `capability_restriction_config`
/// allows, one bit each, computed once per plugin set: the chain skips a link
/// for a callback it lacks without entering (or locking) its VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Callbacks(u8);

impl Callbacks {
    const REQUEST_HEADERS: u8 = 1;
    const REQUEST_BODY: u8 = 2;
    const RESPONSE_HEADERS: u8 = 4;
    const RESPONSE_BODY: u8 = 8;
    /// `proxy_on_done`, `proxy_on_log` or `proxy_on_delete`.
    const END: u8 = 16;

    #[inline]
    fn bit(phase: Phase) -> u8 {
        match phase {
            Phase::RequestHeaders => Self::REQUEST_HEADERS,
            Phase::RequestBody => Self::REQUEST_BODY,
            Phase::ResponseHeaders => Self::RESPONSE_HEADERS,
            Phase::ResponseBody => Self::RESPONSE_BODY,
        }
    }

    /// What `plugin`'s module exports and its configuration lets run.
    pub fn of(plugin: &LoadedPlugin) -> Callbacks {
        let takes =
            |name: &str| plugin.code.exports_function(name) && plugin.info.authorizations.allows_capability(name);
        let mut bits = 0;
        for (name, bit) in [
            ("proxy_on_request_headers", Self::REQUEST_HEADERS),
            ("proxy_on_request_body", Self::REQUEST_BODY),
            ("proxy_on_response_headers", Self::RESPONSE_HEADERS),
            ("proxy_on_response_body", Self::RESPONSE_BODY),
            ("proxy_on_done", Self::END),
            ("proxy_on_log", Self::END),
            ("proxy_on_delete", Self::END),
        ] {
            if takes(name) {
                bits |= bit;
            }
        }
        Callbacks(bits)
    }

    /// The stream callbacks `plugin`'s module exports but its
    /// `capability_restriction_config` does not allow: the chain never calls
    /// them (not even to refuse), so a server logs them once, at load time.
    pub fn denied(plugin: &LoadedPlugin) -> Vec<&'static str> {
        [
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_response_headers",
            "proxy_on_response_body",
            "proxy_on_done",
            "proxy_on_log",
            "proxy_on_delete",
        ]
        .into_iter()
        .filter(|name| plugin.code.exports_function(name) && !plugin.info.authorizations.allows_capability(name))
        .collect()
    }

    /// The phases an Otoroshi entity's `steps` run at (see `super::extism`): PreRoute and
    /// ValidateAccess at the request headers (TransformRequest too, which reads the request as it
    /// came), TransformRequest at the request body, TransformResponse at the response headers
    /// (held) and body.
    pub fn of_steps(steps: &[crate::extism::entity::Step]) -> Callbacks {
        use crate::extism::entity::Step;
        let mut bits = 0;
        for step in steps {
            bits |= match step {
                Step::MatchRoute | Step::PreRoute | Step::ValidateAccess => Self::REQUEST_HEADERS,
                Step::TransformRequest | Step::CallBackend | Step::Sink | Step::HandlesRequest => {
                    Self::REQUEST_HEADERS | Self::REQUEST_BODY
                }
                Step::TransformResponse => Self::RESPONSE_HEADERS | Self::RESPONSE_BODY,
                _ => 0,
            };
        }
        Callbacks(bits)
    }

    /// The line each server logs (a warning, once when it loads the plugins)
    /// for each callback of [`Callbacks::denied`]: one text for every server,
    /// so that their logs do not drift apart.
    pub fn denied_lines(plugin: &LoadedPlugin) -> Vec<String> {
        Self::denied(plugin)
            .into_iter()
            .map(|callback| {
                format!(
                    "{}: denied callback {callback}: not in capability_restriction_config.allowed_capabilities; it is never called",
                    plugin.config.name
                )
            })
            .collect()
    }

    /// Whether the plugin's callback for `phase` runs.
    #[inline]
    pub fn has(self, phase: Phase) -> bool {
        self.0 & Self::bit(phase) != 0
    }

    /// Whether any of `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` runs.
    #[inline]
    pub fn has_end(self) -> bool {
        self.0 & Self::END != 0
    }
}

/// Index of a direction in per-direction arrays.
#[inline]
pub(crate) fn dir_index(direction: StreamType) -> usize {
    usize::from(direction == StreamType::HttpResponse)
}

/// One plugin's stream context in a chain.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Index into the plugin set.
    pub plugin: usize,
    /// Index into the generation's VMs.
    pub vm: usize,
    /// The stream context in that VM.
    pub ctx: u32,
    pub(crate) callbacks: Callbacks,
    /// The plugin failed in this transaction (under `fail_open`): it is
    /// skipped from then on, without a log line per phase.
    pub(crate) failed: bool,
    /// Body bytes the plugin holds (it paused before they could go on), per
    /// direction: what `max_body_size` bounds.
    pub(crate) held: [u64; 2],
    /// An Otoroshi entity's link: its index in the set's entities (`vm` and
    /// `ctx` mean nothing then; its state is the chain's, see `super::extism`).
    pub(crate) entity: Option<usize>,
}

impl Link {
    /// Whether the link's plugin failed during this transaction.
    #[inline]
    pub fn failed(&self) -> bool {
        self.failed
    }
}
