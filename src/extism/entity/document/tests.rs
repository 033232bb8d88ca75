use super::*;
use crate::extism::authorizations::DataRights;
use crate::extism::entity::{Source, Step};

/// What `GET /apis/plugins.otoroshi.io/v1/wasm-plugins/<id>` answers (pretty), written from
/// Otoroshi's `WasmPlugin.format.writes` and the admin API's added `kind`.
const EXPORT: &str = r#"{
  "_loc" : {
    "tenant" : "default",
    "teams" : [ "default" ]
  },
  "id" : "wasm-plugin_dev_a1b2c3",
  "name" : "access control",
  "description" : "Delegate route access to a wasm plugin",
  "config" : {
    "source" : {
      "kind" : "Base64",
      "path" : "AGFzbQEAAAA=",
      "opts" : { }
    },
    "memoryPages" : 50,
    "functionName" : "execute",
    "config" : {
      "header" : "foo"
    },
    "allowedHosts" : [ "*.internal" ],
    "allowedPaths" : { },
    "wasi" : true,
    "opa" : false,
    "httpWasm" : false,
    "authorizations" : {
      "httpAccess" : true,
      "proxyHttpCallTimeout" : 2000,
      "globalDataStoreAccess" : { "read" : true, "write" : false },
      "pluginDataStoreAccess" : { "read" : true, "write" : true },
      "globalMapAccess" : { "read" : false, "write" : false },
      "pluginMapAccess" : { "read" : true, "write" : true },
      "proxyStateAccess" : false,
      "configurationAccess" : false
    },
    "instances" : 2,
    "killOptions" : {
      "immortal" : false,
      "max_calls" : 2147483647,
      "max_memory_usage" : 0.0,
      "max_avg_call_duration" : 0,
      "max_unused_duration" : 300000
    },
    "isJS" : false
  },
  "steps" : [ "ValidateAccess", "TransformResponse" ],
  "metadata" : { },
  "tags" : [ "wasmo" ],
  "kind" : "plugins.otoroshi.io/WasmPlugin"
}"#;

fn parse_str(text: &str) -> Result<Document, ConfigError> {
    parse(text, Path::new("/etc/plugins/entity.json"), &["plugins"])
}

fn error(text: &str) -> String {
    parse_str(text).unwrap_err().to_string()
}

fn check_export(e: &Entity) {
    assert_eq!(e.id, "wasm-plugin_dev_a1b2c3");
    assert_eq!(e.name, "access control");
    assert_eq!(e.steps, vec![Step::ValidateAccess, Step::TransformResponse]);
    assert_eq!(e.tags, vec!["wasmo"]);
    let c = &e.config;
    assert_eq!(c.source, Source::Base64(vec![0, b'a', b's', b'm', 1, 0, 0, 0]));
    assert_eq!((c.memory_pages, c.instances, c.wasi, c.is_js), (50, 2, true, false));
    assert_eq!(c.function_name.as_deref(), Some("execute"));
    assert_eq!(c.config, vec![("header".to_owned(), "foo".to_owned())]);
    assert_eq!(c.allowed_hosts, vec!["*.internal"]);
    let a = &c.authorizations;
    assert!(a.http_access);
    assert_eq!(a.proxy_http_call_timeout_ms, 2000);
    assert_eq!(a.global_data_store_access, DataRights { read: true, write: false });
    assert_eq!(a.plugin_map_access, DataRights { read: true, write: true });
    assert_eq!(c.kill_options.max_calls, 2_147_483_647);
    assert_eq!(c.kill_options.max_unused_duration, std::time::Duration::from_secs(300));
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
}

#[test]
fn an_exported_entity_loads_unchanged() {
    let doc = parse_str(EXPORT).unwrap();
    assert_eq!(doc.layout, Layout::Entity);
    check_export(&doc.entities[0]);
    assert_eq!(doc.entities[0].line, 1);
}

#[test]
fn the_compact_json_otoroshi_also_writes_loads() {
    let compact: String = serde_json::to_string(&serde_json::from_str::<Value>(EXPORT).unwrap()).unwrap();
    assert!(!compact.contains('\n'));
    check_export(&parse_str(&compact).unwrap().entities[0]);
}

#[test]
fn the_same_entity_in_yaml_loads() {
    let yaml = serde_yaml_ng::to_string(&serde_json::from_str::<Value>(EXPORT).unwrap()).unwrap();
    let doc = parse(&yaml, Path::new("/etc/plugins/entity.yaml"), &[]).unwrap();
    check_export(&doc.entities[0]);
}

#[test]
fn a_list_export_loads_with_each_entity_line() {
    let second = EXPORT.replace("wasm-plugin_dev_a1b2c3", "second");
    let list = format!("[ {EXPORT},\n{second} ]");
    let doc = parse_str(&list).unwrap();
    assert_eq!(doc.layout, Layout::List);
    assert_eq!(doc.entities.len(), 2);
    assert_eq!(doc.entities[1].id, "second");
    assert_eq!(doc.entities[1].path, "[1]");
    assert_eq!(doc.entities[1].line, EXPORT.lines().count() + 1);
}

#[test]
fn the_kubernetes_form_loads() {
    let yaml = format!(
        "apiVersion: proxy.otoroshi.io/v1\nkind: WasmPlugin\nmetadata:\n  name: access control\nspec:\n{}",
        serde_yaml_ng::to_string(&serde_json::from_str::<Value>(EXPORT).unwrap())
            .unwrap()
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let doc = parse(&yaml, Path::new("k8s.yaml"), &[]).unwrap();
    assert_eq!(doc.layout, Layout::Kubernetes);
    check_export(&doc.entities[0]);
    assert_eq!(doc.entities[0].line, 6);
}

#[test]
fn our_yaml_holds_entities_settings_and_proxy_wasm_plugins_together() {
    let yaml = r#"
otoroshi:
  storage_root: oto
  callback_timeout: 250ms
  wasmo:
    url: http://wasmo.internal:5001/
    client_id: id
    client_secret: secret
plugins:
  - config: { name: headers, vm_config: { code: { local: { filename: x.wasm } } } }
wasm_plugins:
  - { "id": "a", "name": "A", "config": { "source": { "kind": "Wasmo", "path": "a-1.0.0.wasm", "opts": {} } }, "steps": ["PreRoute"] }
  - id: b
    name: B
    config:
      source: { kind: local, path: a }
      functionName: other
"#;
    let doc = parse(yaml, Path::new("/etc/plugins/all.yaml"), &["plugins"]).unwrap();
    assert_eq!(doc.layout, Layout::WasmPluginsKey);
    let settings = doc.settings.unwrap();
    assert_eq!(settings.storage_root, "oto");
    assert_eq!(settings.callback_timeout, std::time::Duration::from_millis(250));
    assert_eq!(settings.wasmo.as_ref().unwrap().url, "http://wasmo.internal:5001");
    assert_eq!(doc.entities.len(), 2);
    assert_eq!(doc.entities[0].line, 12);
    assert_eq!(doc.entities[1].path, "wasm_plugins[1]");
    assert!(matches!(&doc.entities[0].config.source, Source::Wasmo { path, .. } if path == "a-1.0.0.wasm"));
    let resolved = resolve(&doc.entities).unwrap();
    assert_eq!(resolved[1].target.id, "a");
    assert_eq!(resolved[1].function_name, Some("other"));
}

#[test]
fn an_unknown_key_is_an_error_naming_file_line_and_key() {
    let text = EXPORT.replace("\"memoryPages\" : 50", "\"memoryPage\" : 50");
    assert_eq!(
        error(&text),
        "/etc/plugins/entity.json:15:17: config.memoryPage: unknown key; expected one of source, memoryPages, functionName, config, allowedHosts, allowedPaths, wasi, opa, httpWasm, authorizations, instances, killOptions, isJS, compiler_source, raw_source, lifetime, preserve"
    );
}

#[test]
fn a_value_of_the_wrong_type_is_an_error_naming_its_key() {
    let text = EXPORT.replace("\"httpAccess\" : true", "\"httpAccess\" : \"yes\"");
    let e = error(&text);
    assert!(e.starts_with("/etc/plugins/entity.json:26:"), "{e}");
    assert!(
        e.contains("config.authorizations.httpAccess: expected a boolean (true or false), found the string \"yes\""),
        "{e}"
    );
}

#[test]
fn yaml_errors_carry_line_and_column() {
    let e =
        parse("id: x\nconfig:\n  source: { kind: file, path: /nope.wasm }\n  wasi: maybe\n", Path::new("e.yaml"), &[])
            .unwrap_err()
            .to_string();
    assert!(e.starts_with("e.yaml:3:"), "{e}");
    assert!(e.contains("config.source.path: file \"/nope.wasm\" not found"), "{e}");
}

#[test]
fn an_unknown_step_is_an_error() {
    let e = error(&EXPORT.replace("\"TransformResponse\"", "\"TransformEverything\""));
    assert!(e.contains("steps[1]: unknown step \"TransformEverything\""), "{e}");
}

#[test]
fn steps_that_never_run_here_are_warnings() {
    let doc = parse_str(&EXPORT.replace("\"TransformResponse\"", "\"HandlesTunnel\"")).unwrap();
    assert_eq!(doc.entities[0].warnings.len(), 1);
    assert_eq!(doc.entities[0].warnings[0].key, "steps[1]");
}

#[test]
fn an_https_source_is_refused_with_the_reason() {
    let e = error(r#"{"id":"x","config":{"source":{"kind":"http","path":"https://cdn/x.wasm","opts":{}}}}"#);
    assert!(e.contains("config.source.path") && e.contains("no TLS"), "{e}");
}

#[test]
fn http_source_options_are_read_and_checked() {
    let doc = parse_str(r#"{"id":"x","config":{"source":{"kind":"Http","path":"http://cdn/x.wasm","opts":{"timeout":3000,"followRedirect":false,"headers":{"a":"b"},"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}}}"#).unwrap();
    let Source::Http { timeout, follow_redirects, headers, sha256, method, .. } = &doc.entities[0].config.source else {
        panic!()
    };
    assert_eq!((timeout.as_millis(), *follow_redirects, method.as_str()), (3000, false, "GET"));
    assert_eq!(headers, &vec![("a".to_owned(), "b".to_owned())]);
    assert_eq!(sha256.unwrap()[0], 0x9f);
    let e = error(r#"{"id":"x","config":{"source":{"kind":"Http","path":"http://cdn/x.wasm","opts":{"retries":3}}}}"#);
    assert!(e.contains("config.source.opts.retries: unknown option"), "{e}");
}

#[test]
fn an_entity_without_id_or_source_is_an_error() {
    assert!(error(
        r#"{"name":"x","kind":"plugins.otoroshi.io/WasmPlugin","config":{"source":{"kind":"local","path":"y"}}}"#
    )
    .contains("top level: the entity has no id"));
    assert!(error(r#"{"id":"x","config":{"memoryPages":4}}"#).contains("config.source: the plugin has no source"));
    assert!(error(r#"{"id":"x"}"#).contains("the entity has no config"));
}

#[test]
fn another_kind_of_entity_is_refused() {
    let e = error(r#"{"id":"x","kind":"proxy.otoroshi.io/Route","config":{}}"#);
    assert!(e.contains("this file holds another kind of Otoroshi entity"), "{e}");
}

#[test]
fn defaults_are_otoroshis() {
    let doc = parse_str(r#"{"id":"x","name":"n","config":{"source":{"kind":"local","path":"y"}}}"#).unwrap();
    let c = &doc.entities[0].config;
    assert_eq!((c.memory_pages, c.instances, c.function_name.as_deref()), (100, 1, None));
    assert_eq!(c.authorizations, crate::extism::authorizations::Authorizations::default());
    assert_eq!(c.kill_options.max_calls, i32::MAX as u64);
}

#[test]
fn old_exports_with_raw_source_load() {
    let doc =
        parse_str(r#"{"id":"x","config":{"raw_source":"base64://AGFzbQEAAAA=","lifetime":"Forever","preserve":true}}"#)
            .unwrap();
    assert!(matches!(doc.entities[0].config.source, Source::Base64(_)));
    let doc = parse_str(r#"{"id":"x","config":{"compiler_source":"my-plugin.wasm"}}"#).unwrap();
    assert!(matches!(&doc.entities[0].config.source, Source::Wasmo { path, .. } if path == "my-plugin.wasm"));
}

#[test]
fn proxy_wasm_files_are_not_taken_for_entities() {
    assert_eq!(sniff("config:\n  name: a\n  vm_config: {}\n"), None);
    assert_eq!(sniff("- config: { name: a }\n"), None);
    assert_eq!(sniff("plugins:\n  - config: { name: a }\n"), None);
    assert_eq!(sniff(EXPORT), Some(Layout::Entity));
    assert_eq!(sniff("wasm_plugins: []\nplugins: []\n"), Some(Layout::WasmPluginsKey));
}

#[test]
fn ids_must_be_unique_and_local_references_must_resolve() {
    let a = parse_str(r#"[{"id":"a","config":{"source":{"kind":"local","path":"b"}}},{"id":"b","config":{"source":{"kind":"local","path":"a"}}}]"#).unwrap();
    assert!(resolve(&a.entities).unwrap_err().to_string().contains("cycle: a -> b -> a"));
    let missing = parse_str(r#"[{"id":"a","config":{"source":{"kind":"local","path":"zz"}}}]"#).unwrap();
    assert!(resolve(&missing.entities)
        .unwrap_err()
        .to_string()
        .contains("[0].config.source.path: no entity with id \"zz\""));
    let dup = parse_str(r#"[{"id":"a","config":{"source":{"kind":"local","path":"x"}}},{"id":"a","config":{"source":{"kind":"local","path":"x"}}}]"#).unwrap();
    assert!(resolve(&dup.entities).unwrap_err().to_string().contains("duplicate entity id \"a\""));
}

#[test]
fn the_context_config_refers_to_the_entity_instead_of_carrying_its_module() {
    let doc = parse_str(EXPORT).unwrap();
    let json = doc.entities[0].config.context_json("wasm-plugin_dev_a1b2c3");
    assert_eq!(json["source"], serde_json::json!({"kind": "Local", "path": "wasm-plugin_dev_a1b2c3", "opts": {}}));
    assert_eq!(json["authorizations"]["pluginMapAccess"], serde_json::json!({"read": true, "write": true}));
    assert_eq!(json["killOptions"]["max_unused_duration"], 300000);
    assert_eq!(json["config"], serde_json::json!({"header": "foo"}));
}

#[test]
fn wasmo_requests_carry_otoroshis_headers() {
    let s = WasmoSettings {
        url: "http://w:5001".into(),
        client_id: "id".into(),
        client_secret: "secret".into(),
        plugins_filter: "*".into(),
        legacy_auth: false,
    };
    let r = wasmo_request(&s, "p.wasm", std::time::Duration::from_secs(5), 1 << 20);
    assert_eq!(r.url, "http://w:5001/wasm/p.wasm");
    assert!(r.headers.contains(&("Authorization".into(), "Basic aWQ6c2VjcmV0".into())));
    assert!(r.headers.contains(&("kind".into(), "*".into())));
    let legacy =
        wasmo_request(&WasmoSettings { legacy_auth: true, ..s }, "p.wasm", std::time::Duration::from_secs(5), 1);
    assert!(legacy.headers.iter().any(|(k, v)| k == "Otoroshi-User" && v.split('.').count() == 3));
}

#[test]
fn hmac_sha512_matches_rfc_4231() {
    let mac = hmac_sha512(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737");
}

#[test]
fn settings_errors_name_their_key() {
    let e =
        parse("otoroshi:\n  runtime: wasmedge\nwasm_plugins: []\n", Path::new("s.yaml"), &[]).unwrap_err().to_string();
    assert!(e.starts_with("s.yaml:2:") && e.contains("otoroshi.runtime: expected one of"), "{e}");
    let ok =
        parse("otoroshi:\n  runtime: ats.wasm.runtime.wamr\nwasm_plugins: []\n", Path::new("s.yaml"), &[]).unwrap();
    assert_eq!(ok.settings.unwrap().runtime, Some(crate::config::RuntimeKind::Wamr));
    let e = parse("otoroshi:\n  callback_timeout: soon\nwasm_plugins: []\n", Path::new("s.yaml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("s.yaml:2:") && e.contains("otoroshi.callback_timeout: expected a duration"), "{e}");
    let e = parse("otoroshi:\n  wasmo: { url: https://w }\nwasm_plugins: []\n", Path::new("s.yaml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("otoroshi.wasmo.url: expected an http:// URL"), "{e}");
    let e = parse("wasm_plugins: []\nextra: 1\n", Path::new("s.yaml"), &["plugins"]).unwrap_err().to_string();
    assert!(
        e.contains("extra: unknown top-level key \"extra\"; expected one of wasm_plugins, otoroshi, plugins"),
        "{e}"
    );
}
