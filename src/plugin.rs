//! A configured plugin as plain data ([`PluginInfo`]): its names, its
//! configuration bytes and what it may use. A leaf below the hostcalls and
//! the VM (which read it) and above nothing but the configuration's types;
//! its code, compiled and linked, is `hostcalls::code::WasmCode`.

use std::time::Duration;

use crate::authorizations::Authorizations;
use crate::config::{PluginConfig, Quotas};
use crate::host::PluginRef;

/// What the core needs to know of a configured plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    /// The plugin configuration (`proxy_on_configure`'s buffer).
    pub configuration: Vec<u8>,
    /// What the plugin may touch.
    pub authorizations: Authorizations,
    /// Host-side caps counted for this plugin (`vm_config.limits`): log lines
    /// per second, the shortest tick period, ...
    pub quotas: Quotas,
    /// `max_body_size`: the most body bytes the host holds for the plugin.
    pub max_body_size: u64,
    /// How long the host waits for `proxy_done` after the plugin's `on_done`
    /// returned false, before it deletes the context anyway (the plugin's
    /// `pause_timeout`: the longest the host waits for it, see `Vm::expire_awaiting_done`).
    pub done_timeout: Duration,
}

impl PluginInfo {
    pub fn new(
        name: impl Into<String>,
        root_id: impl Into<String>,
        vm_id: impl Into<String>,
        configuration: impl Into<Vec<u8>>,
    ) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            root_id: root_id.into(),
            vm_id: vm_id.into(),
            configuration: configuration.into(),
            authorizations: Authorizations::unrestricted(),
            quotas: Quotas::default(),
            max_body_size: PluginConfig::DEFAULT_MAX_BODY_SIZE,
            done_timeout: PluginConfig::DEFAULT_PAUSE_TIMEOUT,
        }
    }

    /// The same plugin with these caps (the YAML loader sets them from
    /// `vm_config.limits`; [`PluginInfo::new`] has the YAML defaults).
    pub fn with_quotas(mut self, quotas: Quotas) -> PluginInfo {
        self.quotas = quotas;
        self
    }

    /// The same plugin with this `max_body_size`.
    pub fn with_max_body_size(mut self, max_body_size: u64) -> PluginInfo {
        self.max_body_size = max_body_size;
        self
    }

    /// The same plugin with this wait for `proxy_done` (its `pause_timeout`).
    pub fn with_done_timeout(mut self, done_timeout: Duration) -> PluginInfo {
        self.done_timeout = done_timeout;
        self
    }

    /// The same plugin with the operator's authorizations (the YAML loader
    /// always sets them; [`PluginInfo::new`] allows everything).
    pub fn with_authorizations(mut self, authorizations: Authorizations) -> PluginInfo {
        self.authorizations = authorizations;
        self
    }

    pub fn log_ref(&self) -> PluginRef {
        PluginRef { name: self.name.clone(), root_id: self.root_id.clone(), vm_id: self.vm_id.clone() }
    }
}
