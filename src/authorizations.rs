//! What a plugin may touch, decided by the operator per plugin: which
//! hostcalls and callbacks it may use (Envoy's and Traffic Server's
//! `capability_restriction_config`), which upstreams it may call, which shared
//! data it may read or write, which properties it may read or set. The names
//! follow Otoroshi's `authorizations` where they fit (`allowed_hosts`,
//! `plugin_map_access`, `global_map_access`).
//!
//! The environment a plugin sees is decided by `vm_config.environment_variables`
//! (nothing from the host unless listed), so it has no entry here.

use std::collections::BTreeSet;

/// Read and write rights on a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

impl Access {
    pub const NONE: Access = Access { read: false, write: false };
    pub const ALL: Access = Access { read: true, write: true };
}

/// A plugin's rights. [`Authorizations::default`] is what a YAML plugin gets
/// when it says nothing: every hostcall and callback, no outgoing call, its own
/// shared data only, every property. Programs embedding the core (and the
/// core's own tests) use [`Authorizations::unrestricted`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authorizations {
    /// The hostcalls and callbacks it may use; `None` for all.
    pub capabilities: Option<BTreeSet<String>>,
    /// Upstreams `proxy_http_call` may reach, as the plugin names them
    /// (`host:port`); `*` allows any. Empty: no outgoing calls.
    pub allowed_hosts: Vec<String>,
    /// Its own shared data (the keys of its `vm_id`) and shared queues.
    pub plugin_map_access: Access,
    /// Shared data of other VMs, addressed as `<vm_id>::<key>`, and their
    /// queues (through `proxy_resolve_shared_queue` or a queue id).
    pub global_map_access: Access,
    /// Property paths (dotted prefixes such as `request.headers`, or `*`) it may read.
    pub property_read: Vec<String>,
    /// Property paths it may set.
    pub property_write: Vec<String>,
}

impl Default for Authorizations {
    fn default() -> Self {
        Authorizations {
            capabilities: None,
            allowed_hosts: Vec::new(),
            plugin_map_access: Access::ALL,
            global_map_access: Access::NONE,
            property_read: vec!["*".into()],
            property_write: vec!["*".into()],
        }
    }
}

/// Exports a module must be able to run whatever the restriction says: its
/// start functions and the allocator the host uses to hand it data.
const ALWAYS_ALLOWED: &[&str] = &["_initialize", "_start", "proxy_on_memory_allocate", "malloc"];

/// The separator between a VM id and a key in `global_map_access` keys.
pub const NAMESPACE_SEPARATOR: &str = "::";

impl Authorizations {
    /// Everything allowed, outgoing calls included.
    pub fn unrestricted() -> Authorizations {
        Authorizations { allowed_hosts: vec!["*".into()], global_map_access: Access::ALL, ..Default::default() }
    }

    /// Whether the plugin may use a hostcall or have a callback called.
    pub fn allows_capability(&self, name: &str) -> bool {
        match &self.capabilities {
            None => true,
            Some(set) => set.contains(name) || ALWAYS_ALLOWED.contains(&name) || name.starts_with("proxy_abi_version_"),
        }
    }

    /// Whether `proxy_http_call` may reach `upstream`.
    pub fn allows_upstream(&self, upstream: &str) -> bool {
        self.allowed_hosts.iter().any(|h| h == "*" || h.eq_ignore_ascii_case(upstream))
    }

    /// Where a shared-data key lives: `(vm_id, key)` and the rights the plugin
    /// has there. A `<vm_id>::<key>` naming another VM counts only when the
    /// plugin has some `global_map_access`; otherwise it is a plain key of its own.
    pub fn shared_data_target<'k>(&self, own_vm_id: &'k str, key: &'k [u8]) -> (&'k str, &'k [u8], Access) {
        if self.global_map_access != Access::NONE {
            if let Some(i) = key.windows(2).position(|w| w == NAMESPACE_SEPARATOR.as_bytes()) {
                if let Ok(vm_id) = std::str::from_utf8(&key[..i]) {
                    if vm_id != own_vm_id {
                        return (vm_id, &key[i + 2..], self.global_map_access);
                    }
                    return (own_vm_id, &key[i + 2..], self.plugin_map_access);
                }
            }
        }
        (own_vm_id, key, self.plugin_map_access)
    }

    /// The rights the plugin has on the shared data and queues of `vm_id`:
    /// `plugin_map_access` for its own VM's, `global_map_access` for another's.
    /// Queues follow shared data: dequeuing reads, enqueuing writes, and
    /// registering (in its own VM) or resolving a queue needs either right.
    pub fn access_to(&self, own_vm_id: &str, vm_id: &str) -> Access {
        if vm_id == own_vm_id {
            self.plugin_map_access
        } else {
            self.global_map_access
        }
    }

    /// Whether the plugin may read the property at `path` (segments).
    pub fn allows_property_read(&self, path: &[&[u8]]) -> bool {
        matches_any(&self.property_read, path)
    }

    /// Whether the plugin may set the property at `path` (segments).
    pub fn allows_property_write(&self, path: &[&[u8]]) -> bool {
        matches_any(&self.property_write, path)
    }
}

/// A path matches a pattern when the pattern's dotted segments are a prefix of it.
fn matches_any(patterns: &[String], path: &[&[u8]]) -> bool {
    patterns.iter().any(|p| {
        if p == "*" {
            return true;
        }
        let segments: Vec<&[u8]> = p.split('.').map(str::as_bytes).collect();
        segments.len() <= path.len() && segments.iter().zip(path).all(|(a, b)| a == b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_denies_calls_and_other_vms_but_allows_the_rest() {
        let a = Authorizations::default();
        assert!(!a.allows_upstream("127.0.0.1:8080"));
        assert!(a.allows_capability("proxy_log"));
        assert_eq!(a.shared_data_target("vm", b"other::k"), ("vm", &b"other::k"[..], Access::ALL));
        assert!(a.allows_property_read(&[b"request", b"path"]));
    }

    #[test]
    fn capabilities_restrict_but_keep_what_a_module_needs_to_run() {
        let a = Authorizations { capabilities: Some(["proxy_log".to_string()].into()), ..Default::default() };
        assert!(a.allows_capability("proxy_log"));
        assert!(!a.allows_capability("proxy_http_call"));
        assert!(a.allows_capability("proxy_on_memory_allocate"));
        assert!(a.allows_capability("proxy_abi_version_0_2_1"));
    }

    #[test]
    fn other_vms_are_addressed_with_a_prefix_when_granted() {
        let a = Authorizations { global_map_access: Access { read: true, write: false }, ..Default::default() };
        assert_eq!(
            a.shared_data_target("me", b"them::count"),
            ("them", &b"count"[..], Access { read: true, write: false })
        );
        assert_eq!(a.shared_data_target("me", b"me::count"), ("me", &b"count"[..], Access::ALL));
        assert_eq!(a.shared_data_target("me", b"count"), ("me", &b"count"[..], Access::ALL));
    }

    #[test]
    fn queues_of_a_vm_id_have_the_rights_of_its_shared_data() {
        let a = Authorizations {
            plugin_map_access: Access { read: true, write: false },
            global_map_access: Access { read: false, write: true },
            ..Default::default()
        };
        assert_eq!(a.access_to("me", "me"), Access { read: true, write: false });
        assert_eq!(a.access_to("me", "them"), Access { read: false, write: true });
        assert_eq!(Authorizations::default().access_to("me", "them"), Access::NONE);
    }

    #[test]
    fn property_patterns_are_dotted_prefixes() {
        let a = Authorizations {
            property_read: vec!["request.headers".into(), "plugin_name".into()],
            ..Default::default()
        };
        assert!(a.allows_property_read(&[b"request", b"headers", b"x-a"]));
        assert!(!a.allows_property_read(&[b"request", b"path"]));
        assert!(a.allows_property_read(&[b"plugin_name"]));
        assert!(!a.allows_property_read(&[b"source", b"address"]));
    }
}
