//! What an Otoroshi WASM plugin may touch: the entity's `config.authorizations`, with
//! Otoroshi's names and defaults (`WasmAuthorizations` in MAIF/otoroshi `app/wasm/wasm.scala`).
//!
//! As in Otoroshi, a host function the plugin is not authorized to use is not offered at all;
//! here a module that imports one fails to instantiate with an error naming the function and the
//! setting that would grant it ([`Requirement::setting`]), instead of a bare "unknown import".

use std::fmt;

/// Read and write rights on one store (`{"read": bool, "write": bool}`, both false by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataRights {
    pub read: bool,
    pub write: bool,
}

/// `config.authorizations`. Every field defaults to "denied" and the timeout to 5000 ms, as in
/// Otoroshi.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorizations {
    /// `httpAccess`: `proxy_http_call`.
    pub http_access: bool,
    /// `proxyHttpCallTimeout`: how long `proxy_http_call` waits for its answer, in milliseconds.
    pub proxy_http_call_timeout_ms: u64,
    /// `globalDataStoreAccess`: `proxy_datastore_*`.
    pub global_data_store_access: DataRights,
    /// `pluginDataStoreAccess`: `proxy_plugin_datastore_*`.
    pub plugin_data_store_access: DataRights,
    /// `globalMapAccess`: `proxy_global_map*`.
    pub global_map_access: DataRights,
    /// `pluginMapAccess`: `proxy_plugin_map*`.
    pub plugin_map_access: DataRights,
    /// `proxyStateAccess`: `proxy_state`, `proxy_state_value`, `proxy_global_config`.
    pub proxy_state_access: bool,
    /// `configurationAccess`: `proxy_config`, `proxy_cluster_state`, `proxy_cluster_state_value`.
    pub configuration_access: bool,
}

impl Authorizations {
    pub const DEFAULT_PROXY_HTTP_CALL_TIMEOUT_MS: u64 = 5000;

    /// Whether `requirement` is granted.
    #[must_use]
    pub fn grants(&self, requirement: Requirement) -> bool {
        use Requirement::*;
        match requirement {
            Always => true,
            HttpAccess => self.http_access,
            GlobalDataStoreRead => self.global_data_store_access.read,
            GlobalDataStoreWrite => self.global_data_store_access.write,
            PluginDataStoreRead => self.plugin_data_store_access.read,
            PluginDataStoreWrite => self.plugin_data_store_access.write,
            GlobalMapRead => self.global_map_access.read,
            GlobalMapWrite => self.global_map_access.write,
            PluginMapRead => self.plugin_map_access.read,
            PluginMapWrite => self.plugin_map_access.write,
            ProxyStateAccess => self.proxy_state_access,
            ConfigurationAccess => self.configuration_access,
            // Decided by the entity's `opa` flag, not by `authorizations`.
            Opa => false,
        }
    }
}

impl Default for Authorizations {
    fn default() -> Self {
        Authorizations {
            http_access: false,
            proxy_http_call_timeout_ms: Self::DEFAULT_PROXY_HTTP_CALL_TIMEOUT_MS,
            global_data_store_access: DataRights::default(),
            plugin_data_store_access: DataRights::default(),
            global_map_access: DataRights::default(),
            plugin_map_access: DataRights::default(),
            proxy_state_access: false,
            configuration_access: false,
        }
    }
}

/// The right a host function needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requirement {
    Always,
    HttpAccess,
    GlobalDataStoreRead,
    GlobalDataStoreWrite,
    PluginDataStoreRead,
    PluginDataStoreWrite,
    GlobalMapRead,
    GlobalMapWrite,
    PluginMapRead,
    PluginMapWrite,
    ProxyStateAccess,
    ConfigurationAccess,
    /// The OPA imports: only when the entity sets `opa: true`.
    Opa,
}

impl Requirement {
    /// The entity setting that grants it, as written in the entity.
    #[must_use]
    pub fn setting(self) -> &'static str {
        use Requirement::*;
        match self {
            Always => "nothing",
            HttpAccess => "config.authorizations.httpAccess: true",
            GlobalDataStoreRead => "config.authorizations.globalDataStoreAccess.read: true",
            GlobalDataStoreWrite => "config.authorizations.globalDataStoreAccess.write: true",
            PluginDataStoreRead => "config.authorizations.pluginDataStoreAccess.read: true",
            PluginDataStoreWrite => "config.authorizations.pluginDataStoreAccess.write: true",
            GlobalMapRead => "config.authorizations.globalMapAccess.read: true",
            GlobalMapWrite => "config.authorizations.globalMapAccess.write: true",
            PluginMapRead => "config.authorizations.pluginMapAccess.read: true",
            PluginMapWrite => "config.authorizations.pluginMapAccess.write: true",
            ProxyStateAccess => "config.authorizations.proxyStateAccess: true",
            ConfigurationAccess => "config.authorizations.configurationAccess: true",
            Opa => "config.opa: true",
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.setting())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_but_logging_is_denied_by_default() {
        let a = Authorizations::default();
        assert!(a.grants(Requirement::Always));
        for r in [
            Requirement::HttpAccess,
            Requirement::PluginMapRead,
            Requirement::GlobalDataStoreWrite,
            Requirement::ProxyStateAccess,
            Requirement::ConfigurationAccess,
        ] {
            assert!(!a.grants(r), "{r:?}");
        }
        assert_eq!(a.proxy_http_call_timeout_ms, 5000);
    }

    #[test]
    fn each_right_is_granted_by_its_own_setting() {
        let a = Authorizations { plugin_map_access: DataRights { read: true, write: false }, ..Default::default() };
        assert!(a.grants(Requirement::PluginMapRead));
        assert!(!a.grants(Requirement::PluginMapWrite));
        assert!(!a.grants(Requirement::GlobalMapRead));
    }
}
