//! Tests of the plugin configuration loader (`proxy_wasm_host::config`).
//!
//! Good configurations are written at run time into a fresh temporary folder, next to an empty
//! stand-in `.wasm` file (the loader only checks that code files exist). Malformed ones are fixtures
//! in `tests/configs/malformed/`, which point at the committed `placeholder.code` where they need a
//! code file; each test asserts the whole message, position included.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proxy_wasm_host::config::{CodeSource, ConfigError, ConfigOrigin, FailurePolicy, RuntimeKind};
use proxy_wasm_host::files::{load_file, load_files, load_str};

/// A temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pwh-config-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` (folders created as needed) and returns the full path.
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        path
    }

    /// An empty stand-in for a module: only its existence matters to the loader.
    fn wasm(&self, name: &str) -> PathBuf {
        self.write(name, "")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

#[test]
fn ats_wasm_plugin_file_loads_unchanged() {
    // The shape of plugins/experimental/wasm/examples/*/*.yaml in Traffic Server 10 (licence
    // header, block-scalar JSON configuration, camelCase ids, absolute filename), with our values.
    let dir = TempDir::new();
    let wasm = dir.wasm("var/wasm/headers.wasm");
    let yaml = format!(
        r#"#  Licensed to the Apache Software Foundation (ASF) under one
#  or more contributor license agreements.
#
#      http://www.apache.org/licenses/LICENSE-2.0
config:
  configuration: |
      {{
        "add": ["x-filtered: 1"]
      }}
  name: "headers-filter"
  rootId: "headers_root"
  vmConfig:
    code:
      local:
        filename: {}
    runtime: ats.wasm.runtime.wamr
    vmId: "headers-filter_vm_id"
    allow_precompiled: true
"#,
        wasm.display()
    );
    let file = dir.write("headers.yaml", &yaml);

    let plugins = load_file(&file).unwrap();
    assert_eq!(plugins.len(), 1);
    let p = &plugins[0];
    assert_eq!(p.name, "headers-filter");
    assert_eq!(p.root_id, "headers_root");
    assert_eq!(text(&p.configuration), "{\n  \"add\": [\"x-filtered: 1\"]\n}\n");
    assert_eq!(p.failure_policy, FailurePolicy::FailClosed);
    assert_eq!(p.allowed_capabilities, None);
    assert_eq!(p.vm.runtime, RuntimeKind::Wamr);
    assert_eq!(p.vm.vm_id, "headers-filter_vm_id");
    assert!(p.vm.configuration.is_empty());
    assert!(p.vm.allow_precompiled);
    assert!(p.vm.environment.is_empty());
    assert_eq!(p.vm.code, CodeSource::LocalFile(wasm));
    assert_eq!(p.origin, ConfigOrigin { file: file.clone(), line: 5 });
}

#[test]
fn every_key_in_snake_case() {
    let dir = TempDir::new();
    dir.wasm("myrust.wasm");
    let file = dir.write(
        "all.yaml",
        r#"config:
  name: "myrust"
  root_id: "root1"
  configuration: "plugin text"
  fail_open: true
  capability_restriction_config:
    allowed_capabilities:
      proxy_log: {}
      proxy_get_property:
      proxy_log: {}
  vm_config:
    runtime: "ats.wasm.runtime.wasmtime"
    vm_id: "vm1"
    configuration: "vm text"
    allow_precompiled: false
    environment_variables:
      key_values: { A: "b", EMPTY: "" }
    code:
      local:
        filename: "myrust.wasm"
"#,
    );

    let p = load_file(&file).unwrap().remove(0);
    assert_eq!(p.name, "myrust");
    assert_eq!(p.root_id, "root1");
    assert_eq!(p.configuration, b"plugin text");
    assert_eq!(p.failure_policy, FailurePolicy::FailOpen);
    assert_eq!(p.allowed_capabilities, Some(vec!["proxy_log".to_owned(), "proxy_get_property".to_owned()]));
    assert_eq!(p.vm.runtime, RuntimeKind::Wasmtime);
    assert_eq!(p.vm.vm_id, "vm1");
    assert_eq!(p.vm.configuration, b"vm text");
    assert!(!p.vm.allow_precompiled);
    assert_eq!(p.vm.environment, vec![("A".to_owned(), "b".to_owned()), ("EMPTY".to_owned(), String::new())]);
    assert_eq!(p.vm.code, CodeSource::LocalFile(dir.path().join("myrust.wasm")));
    assert_eq!(p.origin.line, 1);
}

#[test]
fn camel_case_aliases() {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let file = dir.write(
        "camel.yaml",
        r"config:
  name: camel
  rootId: r
  failOpen: true
  capabilityRestrictionConfig:
    allowedCapabilities: [proxy_log, proxy_set_buffer_bytes]
  vmConfig:
    vmId: v
    allowPrecompiled: true
    environmentVariables:
      hostEnvKeys: []
      keyValues: { K: V }
    code:
      local:
        filename: p.wasm
",
    );

    let p = load_file(&file).unwrap().remove(0);
    assert_eq!(p.root_id, "r");
    assert_eq!(p.failure_policy, FailurePolicy::FailOpen);
    assert_eq!(p.allowed_capabilities, Some(vec!["proxy_log".to_owned(), "proxy_set_buffer_bytes".to_owned()]));
    assert_eq!(p.vm.vm_id, "v");
    assert!(p.vm.allow_precompiled);
    assert_eq!(p.vm.environment, vec![("K".to_owned(), "V".to_owned())]);
}

#[test]
fn defaults_when_optional_keys_are_absent() {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let file = dir
        .write("min.yaml", "config:\n  name: min\n  root_id:\n  vm_config:\n    code: {local: {filename: p.wasm}}\n");

    let p = load_file(&file).unwrap().remove(0);
    assert_eq!(p.root_id, "");
    assert!(p.configuration.is_empty());
    assert_eq!(p.failure_policy, FailurePolicy::FailClosed);
    assert_eq!(p.allowed_capabilities, None);
    assert_eq!(p.vm.runtime, RuntimeKind::Wasmtime);
    assert_eq!(p.vm.vm_id, "");
    assert!(p.vm.configuration.is_empty());
    assert!(!p.vm.allow_precompiled);
    assert!(p.vm.environment.is_empty());
}

#[test]
fn runtime_names() {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    for (name, kind) in [
        ("ats.wasm.runtime.wasmtime", RuntimeKind::Wasmtime),
        ("ats.wasm.runtime.wamr", RuntimeKind::Wamr),
        ("wasmtime", RuntimeKind::Wasmtime),
        ("wamr", RuntimeKind::Wamr),
    ] {
        let yaml = format!(
            "config:\n  name: n\n  vm_config:\n    runtime: {name}\n    code: {{local: {{filename: p.wasm}}}}\n"
        );
        let p = load_str(&yaml, &dir.path().join("r.yaml")).unwrap().remove(0);
        assert_eq!(p.vm.runtime, kind, "{name}");
    }
    assert_eq!(RuntimeKind::Wasmtime.to_string(), "wasmtime");
    assert_eq!(RuntimeKind::Wamr.to_string(), "wamr");
}

#[test]
fn empty_capability_list_means_no_restriction() {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    for caps in ["{}", "[]", ""] {
        let yaml = format!(
            "config:\n  name: n\n  capability_restriction_config:\n    allowed_capabilities: {caps}\n  vm_config:\n    code: {{local: {{filename: p.wasm}}}}\n"
        );
        let p = load_str(&yaml, &dir.path().join("c.yaml")).unwrap().remove(0);
        assert_eq!(p.allowed_capabilities, None, "{caps:?}");
    }
}

#[test]
fn top_level_list_of_plugins() {
    let dir = TempDir::new();
    dir.wasm("a.wasm");
    dir.wasm("b.wasm");
    let file = dir.write(
        "list.yaml",
        r"# Two plugins, in order.
- config:
    name: first
    vm_config:
      code: { local: { filename: a.wasm } }

- config:
    name: second
    vm_config:
      runtime: wamr
      code: { local: { filename: b.wasm } }
",
    );

    let plugins = load_file(&file).unwrap();
    let names: Vec<_> = plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(plugins[0].origin, ConfigOrigin { file: file.clone(), line: 2 });
    assert_eq!(plugins[1].origin, ConfigOrigin { file: file.clone(), line: 7 });
    assert_eq!(plugins[1].vm.runtime, RuntimeKind::Wamr);
    assert_eq!(plugins[1].vm.code, CodeSource::LocalFile(dir.path().join("b.wasm")));
}

#[test]
fn plugins_key_holding_a_list() {
    let dir = TempDir::new();
    dir.wasm("a.wasm");
    let file = dir.write(
        "plugins.yaml",
        r"plugins:
  - config: { name: one, vm_config: { code: { local: { filename: a.wasm } } } }
  - config:
      name: two
      vm_config: { code: { local: { filename: a.wasm } } }
",
    );

    let plugins = load_file(&file).unwrap();
    let names: Vec<_> = plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(plugins[0].origin.line, 2);
    assert_eq!(plugins[1].origin.line, 3);
}

#[test]
fn configuration_maps_and_lists_become_compact_json() {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let file = dir.write(
        "json.yaml",
        r#"config:
  name: json
  configuration:
    zeta: 1
    alpha: [1, -2, 2.5, true, null, "quote \" and \\ and é"]
    nested: { deny: ["/admin"], 404: "not found" }
  vm_config:
    configuration:
      - a
      - { b: c }
    code: { local: { filename: p.wasm } }
"#,
    );

    let p = load_file(&file).unwrap().remove(0);
    // Keys stay in file order; the number key 404 becomes the string "404".
    assert_eq!(
        text(&p.configuration),
        r#"{"zeta":1,"alpha":[1,-2,2.5,true,null,"quote \" and \\ and é"],"nested":{"deny":["/admin"],"404":"not found"}}"#
    );
    assert_eq!(text(&p.vm.configuration), r#"["a",{"b":"c"}]"#);
}

#[test]
fn relative_code_paths_resolve_against_the_yaml_folder() {
    let dir = TempDir::new();
    let beside = dir.wasm("conf/beside.wasm");
    let below = dir.wasm("conf/modules/below.wasm");
    let above = dir.wasm("shared/above.wasm");
    let file = dir.write(
        "conf/paths.yaml",
        r"- config: { name: a, vm_config: { code: { local: { filename: beside.wasm } } } }
- config: { name: b, vm_config: { code: { local: { filename: ./modules/below.wasm } } } }
- config: { name: c, vm_config: { code: { local: { filename: ../shared/above.wasm } } } }
",
    );

    let plugins = load_file(&file).unwrap();
    let code = |i: usize| match &plugins[i].vm.code {
        CodeSource::LocalFile(path) => path.clone(),
        other => panic!("unexpected code source {other:?}"),
    };
    assert_eq!(code(0), beside);
    assert_eq!(code(1), below);
    assert!(code(2).is_absolute());
    // `..` is kept as written (no symlink resolution); it names the same file.
    assert_eq!(code(2), dir.path().join("conf/../shared/above.wasm"));
    assert_eq!(fs::canonicalize(code(2)).unwrap(), fs::canonicalize(above).unwrap());
}

#[test]
fn host_env_keys_are_copied_from_the_environment() {
    // A name no other test uses: tests run in parallel in one process.
    std::env::set_var("PWH_CONFIG_TEST_FROM_HOST", "host value");
    std::env::remove_var("PWH_CONFIG_TEST_UNSET");
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let file = dir.write(
        "env.yaml",
        r#"config:
  name: env
  vm_config:
    environment_variables:
      host_env_keys: [PWH_CONFIG_TEST_UNSET, PWH_CONFIG_TEST_FROM_HOST]
      key_values:
        FIXED: "1"
    code: { local: { filename: p.wasm } }
"#,
    );

    let p = load_file(&file).unwrap().remove(0);
    assert_eq!(
        p.vm.environment,
        vec![("PWH_CONFIG_TEST_FROM_HOST".to_owned(), "host value".to_owned()), ("FIXED".to_owned(), "1".to_owned()),]
    );
}

#[test]
fn key_values_override_host_values_in_place() {
    std::env::set_var("PWH_CONFIG_TEST_OVERRIDDEN", "from host");
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let file = dir.write(
        "env.yaml",
        r"config:
  name: env
  vm_config:
    environment_variables:
      keyValues: { A: a, PWH_CONFIG_TEST_OVERRIDDEN: from file }
      hostEnvKeys: [PWH_CONFIG_TEST_OVERRIDDEN]
    code: { local: { filename: p.wasm } }
",
    );

    let p = load_file(&file).unwrap().remove(0);
    assert_eq!(
        p.vm.environment,
        vec![("PWH_CONFIG_TEST_OVERRIDDEN".to_owned(), "from file".to_owned()), ("A".to_owned(), "a".to_owned()),]
    );
}

#[test]
fn load_files_keeps_order_across_files() {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let one = dir.write("1.yaml", "config: { name: one, vm_config: { code: { local: { filename: p.wasm } } } }\n");
    let two = dir.write(
        "2.yaml",
        "- config: { name: two, vm_config: { code: { local: { filename: p.wasm } } } }\n\
         - config: { name: three, vm_config: { code: { local: { filename: p.wasm } } } }\n",
    );

    let plugins = load_files(&[two.clone(), one.clone()]).unwrap();
    let names: Vec<_> = plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["two", "three", "one"]);
    assert_eq!(plugins[2].origin, ConfigOrigin { file: one, line: 1 });
    assert_eq!(plugins[1].origin, ConfigOrigin { file: two, line: 2 });
}

#[test]
fn load_str_resolves_against_the_given_file_name() {
    let dir = TempDir::new();
    let wasm = dir.wasm("p.wasm");
    // The YAML file itself need not exist.
    let p = load_str(
        "config: { name: s, vm_config: { code: { local: { filename: p.wasm } } } }",
        &dir.path().join("not-written.yaml"),
    )
    .unwrap()
    .remove(0);
    assert_eq!(p.vm.code, CodeSource::LocalFile(wasm));
    assert_eq!(p.origin.file, dir.path().join("not-written.yaml"));
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The folder of the malformed fixtures.
fn malformed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/malformed")
}

/// Loads fixture `name` and returns the error message, whose `<file>:` prefix is checked and
/// replaced with `name:` to keep the expectations readable.
fn fixture_error(name: &str) -> String {
    let path = malformed_dir().join(name);
    let error = match load_file(&path) {
        Ok(plugins) => panic!("{name} loaded: {plugins:?}"),
        Err(error) => error,
    };
    let message = error.to_string();
    let prefix = path.display().to_string();
    let rest = message.strip_prefix(&prefix).unwrap_or_else(|| panic!("{message:?} does not start with {prefix:?}"));
    format!("{name}{rest}")
}

#[test]
fn malformed_unknown_top_level_key() {
    assert_eq!(
        fixture_error("unknown_top_key.yaml"),
        r#"unknown_top_key.yaml:2:1: top level: unknown key "confg"; expected one of config, plugins, wasm_plugins, otoroshi"#
    );
}

#[test]
fn malformed_unknown_config_key() {
    assert_eq!(
        fixture_error("unknown_config_key.yaml"),
        r#"unknown_config_key.yaml:3:3: config: unknown key "vm_confg"; expected one of name, root_id, configuration, fail_open, failure_policy, pause_timeout, max_body_size, capability_restriction_config, authorizations, vm_config"#
    );
}

#[test]
fn malformed_unknown_vm_config_key() {
    assert_eq!(
        fixture_error("unknown_vm_config_key.yaml"),
        r#"unknown_vm_config_key.yaml:6:5: config.vm_config: unknown key "vm_ids"; expected one of runtime, vm_id, configuration, allow_precompiled, environment_variables, code, kill_options, limits"#
    );
}

#[test]
fn malformed_runtime_not_available() {
    assert_eq!(
        fixture_error("runtime_unavailable.yaml"),
        r#"runtime_unavailable.yaml:6:14: config.vm_config.runtime: runtime "ats.wasm.runtime.wasmedge" is not available in this host; expected one of ats.wasm.runtime.wasmtime, ats.wasm.runtime.wamr, wasmtime, wamr"#
    );
}

#[test]
fn malformed_runtime_unknown() {
    assert_eq!(
        fixture_error("runtime_unknown.yaml"),
        r#"runtime_unknown.yaml:4:14: config.vm_config.runtime: unknown runtime "wasmtim"; expected one of ats.wasm.runtime.wasmtime, ats.wasm.runtime.wamr, wasmtime, wamr"#
    );
}

#[test]
fn malformed_fail_open_not_a_boolean() {
    assert_eq!(
        fixture_error("fail_open_not_bool.yaml"),
        r#"fail_open_not_bool.yaml:3:14: config.fail_open: expected a boolean (true or false), found the string "yes""#
    );
}

#[test]
fn malformed_missing_name() {
    // Reported at the start of the `config` map.
    assert_eq!(fixture_error("missing_name.yaml"), r#"missing_name.yaml:3:3: config: missing required key "name""#);
}

#[test]
fn malformed_empty_name() {
    assert_eq!(
        fixture_error("empty_name.yaml"),
        r"empty_name.yaml:2:9: config.name: expected a non-empty string, found an empty one"
    );
}

#[test]
fn malformed_missing_code() {
    assert_eq!(
        fixture_error("missing_code.yaml"),
        r#"missing_code.yaml:4:5: config.vm_config: missing required key "code""#
    );
}

#[test]
fn malformed_code_without_source() {
    assert_eq!(
        fixture_error("missing_code_source.yaml"),
        r#"missing_code_source.yaml:4:11: config.vm_config.code: missing code source; expected "local" or "remote""#
    );
}

#[test]
fn malformed_code_file_not_found() {
    let missing = malformed_dir().join("missing.wasm");
    assert_eq!(
        fixture_error("code_file_not_found.yaml"),
        format!(
            r#"code_file_not_found.yaml:8:19: config.vm_config.code.local.filename: file "{}" not found"#,
            missing.display()
        )
    );
}

#[test]
fn malformed_yaml_syntax() {
    assert_eq!(
        fixture_error("invalid_syntax.yaml"),
        "invalid_syntax.yaml:3:4: invalid YAML: did not find expected key, while parsing a block mapping at line 2 column 3"
    );
}

#[test]
fn syntax_errors_are_reported_before_schema_errors() {
    // The unknown key "nam" comes first in the text, but the real problem is the unclosed list.
    let error = load_str("config:\n  nam: x\n  vm_config: [\n", Path::new("t.yaml")).unwrap_err();
    assert!(matches!(error, ConfigError::Syntax { .. }));
    assert_eq!(
        error.to_string(),
        "t.yaml:4:1: invalid YAML: did not find expected node content, while parsing a flow node"
    );
}

#[test]
fn malformed_several_yaml_documents() {
    assert_eq!(
        fixture_error("multiple_documents.yaml"),
        "multiple_documents.yaml:4:1: invalid YAML: a second YAML document starts here (after `---`, or where a line is indented less than the first one); a configuration file holds one document"
    );
}

#[test]
fn a_line_indented_less_than_the_first_is_reported_at_its_line() {
    // The first line is indented: the unindented one starts a second document (found by fuzzing:
    // the error had no line).
    let error = load_str("  config:\n    name: x\nfail_open: true\n", Path::new("t.yaml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "t.yaml:3:1: invalid YAML: a second YAML document starts here (after `---`, or where a line is indented less than the first one); a configuration file holds one document"
    );
}

#[test]
fn flow_collections_nested_a_thousand_deep_are_refused_before_parsing() {
    // libyaml scans them in quadratic time: 20 000 levels took seconds.
    let text = format!("config:\n  name: deep\n  configuration: {}x{}\n", "{a: ".repeat(50_000), "}".repeat(50_000));
    let error = load_str(&text, Path::new("t.yaml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "t.yaml:3:4018: invalid YAML: more than 1000 nested `[` and `{` (counted in strings too); a configuration nests at most 128 levels"
    );
}

#[test]
fn malformed_duplicate_plugin_names() {
    let first = malformed_dir().join("duplicate_names.yaml");
    assert_eq!(
        fixture_error("duplicate_names.yaml"),
        format!(
            r#"duplicate_names.yaml:13:13: plugins[1].config.name: duplicate plugin name "myrust"; already defined at {}:2"#,
            first.display()
        )
    );
}

#[test]
fn malformed_configuration_number() {
    // Numbers and booleans are refused rather than silently stringified.
    assert_eq!(
        fixture_error("configuration_number.yaml"),
        r"configuration_number.yaml:3:18: config.configuration: expected a string, a map or a list, found the number 42; quote it to pass it as text"
    );
}

#[test]
fn malformed_configuration_not_json() {
    assert_eq!(
        fixture_error("configuration_not_json.yaml"),
        r"configuration_not_json.yaml:4:5: config.configuration: limits.rate: the number .inf cannot be represented in JSON"
    );
}

#[test]
fn malformed_empty_file() {
    assert_eq!(
        fixture_error("empty.yaml"),
        r#"empty.yaml:4:1: top level: no plugin configured (the document is empty); expected a "config" map, a "plugins" list or a list of "- config:" entries"#
    );
}

#[test]
fn malformed_empty_plugin_list() {
    assert_eq!(
        fixture_error("empty_plugin_list.yaml"),
        r#"empty_plugin_list.yaml:1:10: plugins: no plugin configured; expected a list of "- config:" entries"#
    );
}

#[test]
fn malformed_config_and_plugins_together() {
    assert_eq!(
        fixture_error("config_and_plugins.yaml"),
        r#"config_and_plugins.yaml:1:1: top level: use either "config" or "plugins", not both"#
    );
}

#[test]
fn malformed_list_item_not_a_map() {
    assert_eq!(
        fixture_error("list_item_not_map.yaml"),
        r#"list_item_not_map.yaml:7:3: [1]: expected a map, found the string "second""#
    );
}

#[test]
fn malformed_allowed_capabilities_wrong_type() {
    assert_eq!(
        fixture_error("capabilities_wrong_type.yaml"),
        r#"capabilities_wrong_type.yaml:4:27: config.capability_restriction_config.allowed_capabilities: expected a map of capability names to {} or a list of capability names, found the string "proxy_log""#
    );
}

#[test]
fn malformed_capability_settings() {
    assert_eq!(
        fixture_error("capability_settings.yaml"),
        r"capability_settings.yaml:6:24: config.capability_restriction_config.allowed_capabilities.proxy_http_call: capability settings are not supported; expected {}"
    );
}

#[test]
fn malformed_key_given_twice_through_its_alias() {
    assert_eq!(
        fixture_error("duplicate_alias_key.yaml"),
        r#"duplicate_alias_key.yaml:5:5: config.vm_config: key "vmId" is given twice (it is another name for "vm_id")"#
    );
}

#[test]
fn malformed_unquoted_number_for_text() {
    assert_eq!(
        fixture_error("vm_id_number.yaml"),
        r"vm_id_number.yaml:4:12: config.vm_config.vm_id: expected a string, found the number 1; quote it to use it as text"
    );
}

#[test]
fn malformed_environment_variable_name() {
    assert_eq!(
        fixture_error("env_name_with_equals.yaml"),
        r#"env_name_with_equals.yaml:6:9: config.vm_config.environment_variables.key_values: variable name "MODE=fast" must not contain '='"#
    );
}

#[test]
fn missing_config_file() {
    let path = malformed_dir().join("no-such-file.yaml");
    let error = load_file(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert_eq!(error.to_string(), format!("{}: cannot read: No such file or directory", path.display()));
}

#[test]
fn duplicate_names_across_files() {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let first = dir.write("a.yaml", "config:\n  name: same\n  vm_config: {code: {local: {filename: p.wasm}}}\n");
    let second =
        dir.write("b.yaml", "# second file\nconfig:\n  vm_config: {code: {local: {filename: p.wasm}}}\n  name: same\n");

    let error = load_files(&[first.clone(), second.clone()]).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            r#"{}:4:9: config.name: duplicate plugin name "same"; already defined at {}:1"#,
            second.display(),
            first.display()
        )
    );
    let at = error.position().unwrap();
    assert_eq!((at.file.as_path(), at.line, at.column), (second.as_path(), Some(4), Some(9)));
}

#[test]
fn errors_in_a_top_level_list_name_the_item() {
    let dir = TempDir::new();
    let file =
        dir.write("list.yaml", "- config:\n    name: ok\n    vm_config: {code: {local: {filename: missing.wasm}}}\n");
    let error = load_file(&file).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            r#"{}:3:42: [0].config.vm_config.code.local.filename: file "{}" not found"#,
            file.display(),
            dir.path().join("missing.wasm").display()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Code sources other than `code.local.filename`

const SOME_SHA256: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn inline_bytes_are_base64_and_may_be_folded_or_unpadded() {
    // "\0asm\x01\0\0\0" is "AGFzbQEAAAA=" in base64.
    let file = Path::new("/nowhere/inline.yaml");
    let folded = "config:\n  name: i\n  vm_config:\n    code:\n      local:\n        inline_bytes: |\n          AGFz\n          bQEAAAA\n";
    let p = load_str(folded, file).unwrap().remove(0);
    assert_eq!(p.vm.code, CodeSource::Inline(b"\0asm\x01\0\0\0".to_vec()));
    let camel = "config: { name: i, vm_config: { code: { local: { inlineBytes: AGFzbQEAAAA= } } } }";
    assert_eq!(load_str(camel, file).unwrap()[0].vm.code, p.vm.code);
}

#[test]
fn inline_string_is_taken_as_its_utf8_bytes() {
    let yaml = "config: { name: s, vm_config: { code: { local: { inline_string: \"\\0asm\\x01\\0\\0\\0\" } } } }";
    let p = load_str(yaml, Path::new("s.yaml")).unwrap().remove(0);
    assert_eq!(p.vm.code, CodeSource::Inline(b"\0asm\x01\0\0\0".to_vec()));
}

#[test]
fn remote_code_in_envoy_shape_with_our_cache_dir() {
    use proxy_wasm_host::config::RemoteCode;
    use std::time::Duration;
    let dir = TempDir::new();
    let file = dir.write(
        "remote.yaml",
        &format!(
            "config:\n  name: r\n  vm_config:\n    code:\n      remote:\n        http_uri:\n          uri: http://plugins.example:8080/filters/a.wasm?v=2\n          timeout: 1.5s\n        sha256: {}\n        cache_dir: cache\n",
            SOME_SHA256.to_uppercase()
        ),
    );
    let p = load_file(&file).unwrap().remove(0);
    let CodeSource::Remote(remote) = p.vm.code else { panic!("{:?}", p.vm.code) };
    let mut sha256 = [0u8; 32];
    for (i, b) in sha256.iter_mut().enumerate() {
        *b = u8::from_str_radix(&SOME_SHA256[2 * i..2 * i + 2], 16).unwrap();
    }
    assert_eq!(
        remote,
        RemoteCode {
            uri: "http://plugins.example:8080/filters/a.wasm?v=2".into(),
            upstream: "plugins.example:8080".into(),
            authority: "plugins.example:8080".into(),
            path: "/filters/a.wasm?v=2".into(),
            timeout: Duration::from_millis(1500),
            sha256,
            cache_dir: Some(dir.path().join("cache")),
        }
    );
    assert_eq!(remote.sha256_hex(), SOME_SHA256);
}

#[test]
fn remote_code_with_a_plain_uri_gets_the_defaults() {
    use proxy_wasm_host::config::RemoteCode;
    let yaml = format!("config: {{ name: r, vm_config: {{ code: {{ remote: {{ uri: \"http://[::1]\", sha256: {SOME_SHA256} }} }} }} }}");
    let p = load_str(&yaml, Path::new("r.yaml")).unwrap().remove(0);
    let CodeSource::Remote(remote) = p.vm.code else { panic!("{:?}", p.vm.code) };
    assert_eq!((remote.upstream.as_str(), remote.authority.as_str(), remote.path.as_str()), ("[::1]:80", "[::1]", "/"));
    assert_eq!(remote.timeout, RemoteCode::DEFAULT_TIMEOUT);
    assert_eq!(remote.cache_dir, None);
    let with_ms = yaml.replace("uri: \"http://[::1]\"", "http_uri: { uri: \"http://h/x\", timeout: 250ms }");
    let CodeSource::Remote(remote) = load_str(&with_ms, Path::new("r.yaml")).unwrap().remove(0).vm.code else {
        panic!()
    };
    assert_eq!(remote.timeout, std::time::Duration::from_millis(250));
}

#[test]
fn malformed_inline_bytes_not_base64() {
    assert_eq!(
        fixture_error("inline_bytes_not_base64.yaml"),
        r"inline_bytes_not_base64.yaml:6:23: config.vm_config.code.local.inline_bytes: expected the module as base64 text, but it is not valid base64: Invalid symbol 42, offset 6."
    );
}

#[test]
fn malformed_local_with_two_sources() {
    assert_eq!(
        fixture_error("local_two_sources.yaml"),
        r#"local_two_sources.yaml:6:9: config.vm_config.code.local: give only one of "filename", "inline_bytes" and "inline_string""#
    );
}

#[test]
fn malformed_local_without_source() {
    assert_eq!(
        fixture_error("local_without_source.yaml"),
        r#"local_without_source.yaml:5:14: config.vm_config.code.local: missing code; expected one of "filename", "inline_bytes" and "inline_string""#
    );
}

#[test]
fn malformed_local_and_remote() {
    assert_eq!(
        fixture_error("local_and_remote.yaml"),
        r#"local_and_remote.yaml:5:7: config.vm_config.code: use either "local" or "remote", not both"#
    );
}

#[test]
fn malformed_remote_without_sha256() {
    assert_eq!(
        fixture_error("remote_missing_sha256.yaml"),
        r#"remote_missing_sha256.yaml:6:9: config.vm_config.code.remote: missing required key "sha256": remote code must be pinned by its SHA-256"#
    );
}

#[test]
fn malformed_remote_sha256() {
    assert_eq!(
        fixture_error("remote_sha256_malformed.yaml"),
        r#"remote_sha256_malformed.yaml:7:17: config.vm_config.code.remote.sha256: expected a SHA-256 as 64 hexadecimal digits, found "0123abcd""#
    );
}

#[test]
fn malformed_remote_https() {
    assert_eq!(
        fixture_error("remote_https.yaml"),
        r#"remote_https.yaml:7:16: config.vm_config.code.remote.http_uri.uri: "https://example.com/plugin.wasm": only http:// is supported: this host downloads remote code with its own small HTTP/1.1 client, which has no TLS; the sha256 pin guarantees the code whatever the transport, so use an http:// URL or a local file"#
    );
}

#[test]
fn malformed_remote_unsupported_scheme() {
    assert_eq!(
        fixture_error("remote_unsupported_scheme.yaml"),
        r#"remote_unsupported_scheme.yaml:6:14: config.vm_config.code.remote.uri: "ftp://example.com/plugin.wasm": unsupported scheme "ftp"; expected an http:// URL"#
    );
}

#[test]
fn malformed_remote_bad_port() {
    assert_eq!(
        fixture_error("remote_bad_port.yaml"),
        r#"remote_bad_port.yaml:6:14: config.vm_config.code.remote.uri: "http://example.com:http/plugin.wasm": invalid host or port "example.com:http""#
    );
}

#[test]
fn malformed_remote_uri_given_twice() {
    assert_eq!(
        fixture_error("remote_uri_twice.yaml"),
        r#"remote_uri_twice.yaml:6:9: config.vm_config.code.remote: use either "http_uri" or "uri", not both"#
    );
}

#[test]
fn malformed_remote_without_uri() {
    assert_eq!(
        fixture_error("remote_missing_uri.yaml"),
        r#"remote_missing_uri.yaml:6:9: config.vm_config.code.remote: missing required key "http_uri" (or its shorthand "uri")"#
    );
}

#[test]
fn malformed_remote_http_uri_without_uri() {
    assert_eq!(
        fixture_error("remote_http_uri_without_uri.yaml"),
        r#"remote_http_uri_without_uri.yaml:6:19: config.vm_config.code.remote.http_uri: missing required key "uri""#
    );
}

#[test]
fn malformed_remote_timeout_without_unit() {
    assert_eq!(
        fixture_error("remote_bad_timeout.yaml"),
        r#"remote_bad_timeout.yaml:8:20: config.vm_config.code.remote.http_uri.timeout: expected a duration like "10s", "1.5s" or "500ms", found the number 10; write the unit, like "10s""#
    );
}

#[test]
fn malformed_remote_http_uri_cluster_is_not_supported() {
    // Envoy's `cluster` has no meaning here: the host connects to the URL's host itself.
    assert_eq!(
        fixture_error("remote_unknown_key.yaml"),
        r#"remote_unknown_key.yaml:8:11: config.vm_config.code.remote.http_uri: unknown key "cluster"; expected one of uri, timeout"#
    );
}

#[test]
fn remote_timeouts_out_of_range_or_misspelt_are_refused() {
    for (timeout, found) in [("0s", "\"0s\""), ("10m", "\"10m\""), ("-1s", "\"-1s\""), ("2d", "\"2d\"")] {
        let yaml = format!("config: {{ name: t, vm_config: {{ code: {{ remote: {{ http_uri: {{ uri: \"http://h/\", timeout: \"{timeout}\" }}, sha256: {SOME_SHA256} }} }} }} }}");
        let message = load_str(&yaml, Path::new("t.yaml")).unwrap_err().to_string();
        assert!(
            message.contains("config.vm_config.code.remote.http_uri.timeout: expected a duration like"),
            "{message}"
        );
        assert!(message.ends_with(&format!("found {found}")), "{message}");
    }
}

// ---------------------------------------------------------------- failure policy and authorizations

fn load_plugin_with(extra: &str) -> Result<proxy_wasm_host::config::PluginConfig, String> {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let yaml = format!("config:\n  name: n\n{extra}\n  vm_config:\n    code: {{local: {{filename: p.wasm}}}}\n");
    load_str(&yaml, &dir.path().join("c.yaml")).map(|mut v| v.remove(0)).map_err(|e| e.to_string())
}

#[test]
fn failure_policy_names_and_the_fail_open_mapping() {
    for (extra, policy) in [
        ("  failure_policy: fail_closed", FailurePolicy::FailClosed),
        ("  failure_policy: fail_open", FailurePolicy::FailOpen),
        ("  failure_policy: reload", FailurePolicy::Reload),
        ("  failurePolicy: reload", FailurePolicy::Reload),
        ("  fail_open: true", FailurePolicy::FailOpen),
        ("  fail_open: false", FailurePolicy::FailClosed),
        ("", FailurePolicy::FailClosed),
    ] {
        assert_eq!(load_plugin_with(extra).unwrap().failure_policy, policy, "{extra:?}");
    }
}

#[test]
fn failure_policy_errors_name_the_key_and_the_choices() {
    let e = load_plugin_with("  failure_policy: crash").unwrap_err();
    assert!(e.ends_with("c.yaml:3:19: config.failure_policy: unknown failure policy \"crash\"; expected one of fail_closed, fail_open, reload"), "{e}");
    let e = load_plugin_with("  fail_open: true\n  failure_policy: reload").unwrap_err();
    assert!(e.contains("config: both fail_open and failure_policy are given; expected only one of them"), "{e}");
}

#[test]
fn pause_timeout_defaults_to_60_seconds_and_reads_a_duration() {
    use std::time::Duration;
    assert_eq!(load_plugin_with("").unwrap().pause_timeout, Duration::from_secs(60));
    assert_eq!(load_plugin_with("  pause_timeout: 1.5s").unwrap().pause_timeout, Duration::from_millis(1500));
    assert_eq!(load_plugin_with("  pauseTimeout: 300ms").unwrap().pause_timeout, Duration::from_millis(300));
    let e = load_plugin_with("  pause_timeout: 5").unwrap_err();
    assert!(e.contains("config.pause_timeout: expected a duration like \"10s\", \"1.5s\" or \"500ms\", found the number 5; write the unit, like \"5s\""), "{e}");
}

#[test]
fn authorizations_default_to_no_outgoing_calls_own_shared_data_and_every_property() {
    use proxy_wasm_host::authorizations::{Access, Authorizations};
    let a = load_plugin_with("").unwrap().authorizations;
    assert_eq!(a, Authorizations::default());
    assert!(a.allowed_hosts.is_empty());
    assert_eq!((a.plugin_map_access, a.global_map_access), (Access::ALL, Access::NONE));
    assert_eq!((a.property_read.clone(), a.property_write.clone()), (vec!["*".to_string()], vec!["*".to_string()]));
}

#[test]
fn authorizations_are_read_with_otoroshi_names() {
    use proxy_wasm_host::authorizations::Access;
    let a = load_plugin_with(
        "  authorizations:\n    allowed_hosts: [\"127.0.0.1:8081\", \"auth:80\"]\n    plugin_map_access: { read: true }\n    globalMapAccess: { read: true, write: true }\n    properties: { read: [request, source.address] }\n  capability_restriction_config:\n    allowed_capabilities: [proxy_log]",
    )
    .unwrap()
    .authorizations;
    assert_eq!(a.allowed_hosts, vec!["127.0.0.1:8081", "auth:80"]);
    assert_eq!(a.plugin_map_access, Access { read: true, write: false });
    assert_eq!(a.global_map_access, Access::ALL);
    assert_eq!(a.property_read, vec!["request", "source.address"]);
    assert_eq!(a.property_write, vec!["*"]);
    assert_eq!(a.capabilities, Some(["proxy_log".to_string()].into()));
}

#[test]
fn authorizations_errors_name_the_key() {
    let e = load_plugin_with("  authorizations:\n    allowed_host: [x]").unwrap_err();
    assert!(e.contains("config.authorizations: unknown key \"allowed_host\"; expected one of allowed_hosts, plugin_map_access, global_map_access, properties"), "{e}");
    let e = load_plugin_with("  authorizations:\n    plugin_map_access: { read: yes please }").unwrap_err();
    assert!(e.contains("config.authorizations.plugin_map_access.read: expected a boolean (true or false)"), "{e}");
}

#[test]
fn kill_options_use_otoroshis_names_and_default_to_off() {
    use proxy_wasm_host::config::KillOptions;
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let load = |kill: &str| {
        let yaml = format!("config:\n  name: n\n  vm_config:\n{kill}    code: {{local: {{filename: p.wasm}}}}\n");
        load_str(&yaml, &dir.path().join("c.yaml")).map(|mut v| v.remove(0).vm.kill_options).map_err(|e| e.to_string())
    };
    assert_eq!(load("").unwrap(), KillOptions::default());
    let k = load("    kill_options: { max_calls: 1000, maxMemoryUsage: 0.8, max_unused_duration: 300s }\n").unwrap();
    assert_eq!(k.max_calls, Some(1000));
    assert_eq!(k.max_memory_usage, Some(0.8));
    assert_eq!(k.max_unused_duration, Some(std::time::Duration::from_secs(300)));
    let e = load("    kill_options: { max_calls: 0 }\n").unwrap_err();
    assert!(
        e.contains("config.vm_config.kill_options.max_calls: expected a whole number greater than 0, found 0"),
        "{e}"
    );
    let e = load("    kill_options: { max_memory_usage: 1.5 }\n").unwrap_err();
    assert!(e.contains("config.vm_config.kill_options.max_memory_usage: expected a fraction greater than 0 and at most 1, like 0.8, found 1.5"), "{e}");
    let e = load("    kill_options: { max_unused: 3s }\n").unwrap_err();
    assert!(
        e.contains("unknown key \"max_unused\"; expected one of max_calls, max_memory_usage, max_unused_duration"),
        "{e}"
    );
}

#[test]
fn limits_default_to_none_and_read_sizes_and_durations() {
    use proxy_wasm_host::runtime::Limits;
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let load = |limits: &str| {
        let yaml = format!("config:\n  name: n\n  vm_config:\n{limits}    code: {{local: {{filename: p.wasm}}}}\n");
        load_str(&yaml, &dir.path().join("c.yaml")).map(|mut v| v.remove(0).vm.limits).map_err(|e| e.to_string())
    };
    assert_eq!(load("").unwrap(), Limits::default());
    assert_eq!(load("    limits: {}\n").unwrap(), Limits::default());
    let l = load("    limits: { max_memory: 64MiB, callback_timeout: 100ms }\n").unwrap();
    assert_eq!(l.max_memory_bytes, Some(64 * 1024 * 1024));
    assert_eq!(l.callback_timeout, Some(std::time::Duration::from_millis(100)));
    let l = load("    limits: { maxMemory: 131072, callbackTimeout: 1.5s }\n").unwrap();
    assert_eq!(l.max_memory_bytes, Some(131072));
    assert_eq!(l.callback_timeout, Some(std::time::Duration::from_millis(1500)));
    assert_eq!(load("    limits: { max_memory: 512KiB }\n").unwrap().max_memory_bytes, Some(512 * 1024));
    assert_eq!(load("    limits: { max_memory: 4GiB }\n").unwrap().max_memory_bytes, Some(4 << 30));
    let expected =
        "expected a memory size like \"64MiB\", \"512KiB\", \"1GiB\" or a number of bytes, from 64KiB to 4GiB";
    let e = load("    limits: { max_memory: 5GiB }\n").unwrap_err();
    assert!(e.contains(&format!("config.vm_config.limits.max_memory: {expected}, found the string \"5GiB\"")), "{e}");
    let e = load("    limits: { max_memory: 1000 }\n").unwrap_err();
    assert!(e.contains(&format!("config.vm_config.limits.max_memory: {expected}, found the number 1000")), "{e}");
    let e = load("    limits: { max_memory: 64MB }\n").unwrap_err();
    assert!(e.contains("config.vm_config.limits.max_memory: expected a memory size"), "{e}");
    let e = load("    limits: { callback_timeout: 100 }\n").unwrap_err();
    assert!(e.contains("config.vm_config.limits.callback_timeout: expected a duration like \"10s\", \"1.5s\" or \"500ms\", found the number 100; write the unit, like \"100s\""), "{e}");
    let e = load("    limits: { memory: 1MiB }\n").unwrap_err();
    assert!(e.contains("config.vm_config.limits: unknown key \"memory\"; expected one of max_memory, callback_timeout, max_pending_http_calls"), "{e}");
}

#[test]
fn max_body_size_defaults_to_16_mib_and_reads_a_size() {
    assert_eq!(load_plugin_with("").unwrap().max_body_size, 16 << 20);
    assert_eq!(load_plugin_with("  max_body_size: 1MiB").unwrap().max_body_size, 1 << 20);
    assert_eq!(load_plugin_with("  maxBodySize: 100").unwrap().max_body_size, 100);
    let e = load_plugin_with("  max_body_size: 0").unwrap_err();
    assert!(e.contains("config.max_body_size: expected a size like \"16MiB\", \"512KiB\", \"1GiB\" or a number of bytes, from 1 byte to 1TiB, found the number 0"), "{e}");
    let e = load_plugin_with("  max_body_size: 16MB").unwrap_err();
    assert!(e.contains("config.max_body_size: expected a size like"), "{e}");
}

#[test]
fn host_side_caps_are_on_by_default_and_read_from_limits() {
    use proxy_wasm_host::config::Quotas;
    use std::time::Duration;
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let quotas = |limits: &str| {
        let yaml = format!(
            "config:\n  name: n\n  vm_config:\n    limits: {{ {limits} }}\n    code: {{local: {{filename: p.wasm}}}}\n"
        );
        load_str(&yaml, &dir.path().join("c.yaml")).map(|mut v| v.remove(0).vm.quotas).map_err(|e| e.to_string())
    };
    let d = load_plugin_with("").unwrap().vm.quotas;
    assert_eq!(d, Quotas::default());
    assert_eq!(
        (
            d.max_pending_http_calls,
            d.max_http_call_response_size,
            d.max_queue_length,
            d.max_shared_data_size,
            d.max_log_lines_per_second,
            d.min_tick_period
        ),
        (1024, 16 << 20, 10_000, 16 << 20, 1000, Duration::from_millis(1))
    );
    let q = quotas("max_pending_http_calls: 2, max_http_call_response_size: 1KiB, max_queue_length: 3, max_shared_data_size: 4MiB, max_log_lines_per_second: 5, min_tick_period: 50ms").unwrap();
    assert_eq!(
        (
            q.max_pending_http_calls,
            q.max_http_call_response_size,
            q.max_queue_length,
            q.max_shared_data_size,
            q.max_log_lines_per_second,
            q.min_tick_period
        ),
        (2, 1024, 3, 4 << 20, 5, Duration::from_millis(50))
    );
    let q = quotas("maxPendingHttpCalls: 7, maxLogLinesPerSecond: 9").unwrap();
    assert_eq!((q.max_pending_http_calls, q.max_log_lines_per_second), (7, 9));
    let e = quotas("max_pending_http_calls: 0").unwrap_err();
    assert!(
        e.contains(
            "config.vm_config.limits.max_pending_http_calls: expected a whole number from 1 to 4294967295, found 0"
        ),
        "{e}"
    );
    let e = quotas("max_queue_length: 5000000000").unwrap_err();
    assert!(e.contains("config.vm_config.limits.max_queue_length: expected a whole number"), "{e}");
}

#[test]
fn max_metrics_defaults_to_256_and_is_read_from_limits() {
    let dir = TempDir::new();
    dir.wasm("p.wasm");
    let quotas = |limits: &str| {
        let yaml = format!(
            "config:\n  name: n\n  vm_config:\n    limits: {{ {limits} }}\n    code: {{local: {{filename: p.wasm}}}}\n"
        );
        load_str(&yaml, &dir.path().join("c.yaml")).map(|mut v| v.remove(0).vm.quotas).map_err(|e| e.to_string())
    };
    assert_eq!(load_plugin_with("").unwrap().vm.quotas.max_metrics, 256);
    assert_eq!(quotas("max_metrics: 3").unwrap().max_metrics, 3);
    assert_eq!(quotas("maxMetrics: 4").unwrap().max_metrics, 4);
    let e = quotas("max_metrics: 0").unwrap_err();
    assert!(
        e.contains("config.vm_config.limits.max_metrics: expected a whole number from 1 to 4294967295, found 0"),
        "{e}"
    );
}

#[test]
fn an_error_at_the_end_of_a_file_without_a_final_line_break_is_on_its_last_line() {
    // libyaml puts the end of such a file on the line after the last (found by fuzzing).
    let error = load_str("config:\n  name: x\n  vm_config: [", Path::new("t.yaml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "t.yaml:3:15: invalid YAML: did not find expected node content, while parsing a flow node"
    );
}

// Otoroshi WASM plugin entities (issue 14): read from the same files, beside Proxy-Wasm plugins.

/// An entity as Otoroshi's admin API exports it (`GET .../wasm-plugins/<id>`), pretty JSON.
const OTOROSHI_EXPORT: &str = r#"{
  "_loc" : { "tenant" : "default", "teams" : [ "default" ] },
  "id" : "wasm-plugin_dev_access",
  "name" : "access control",
  "description" : "",
  "config" : {
    "source" : { "kind" : "File", "path" : "access.wasm", "opts" : { } },
    "memoryPages" : 50,
    "functionName" : null,
    "config" : { "header" : "foo" },
    "allowedHosts" : [ ],
    "allowedPaths" : { },
    "wasi" : false,
    "opa" : false,
    "httpWasm" : false,
    "authorizations" : {
      "httpAccess" : false,
      "proxyHttpCallTimeout" : 5000,
      "globalDataStoreAccess" : { "read" : false, "write" : false },
      "pluginDataStoreAccess" : { "read" : false, "write" : false },
      "globalMapAccess" : { "read" : false, "write" : false },
      "pluginMapAccess" : { "read" : false, "write" : false },
      "proxyStateAccess" : false,
      "configurationAccess" : false
    },
    "instances" : 1,
    "killOptions" : { "immortal" : false, "max_calls" : 2147483647, "max_memory_usage" : 0.0, "max_avg_call_duration" : 0, "max_unused_duration" : 300000 },
    "isJS" : false
  },
  "steps" : [ "ValidateAccess" ],
  "metadata" : { },
  "tags" : [ ],
  "kind" : "plugins.otoroshi.io/WasmPlugin"
}"#;

#[test]
fn otoroshi_export_loads_beside_a_proxy_wasm_file() {
    let dir = TempDir::new();
    dir.wasm("access.wasm");
    dir.wasm("f.wasm");
    let entity = dir.write("access.json", OTOROSHI_EXPORT);
    let yaml =
        dir.write("f.yaml", "config:\n  name: f\n  vm_config:\n    code:\n      local:\n        filename: f.wasm\n");

    let loaded = proxy_wasm_host::files::load_all(&[yaml, entity.clone()]).unwrap();
    assert_eq!(loaded.plugins.len(), 1);
    assert_eq!(loaded.plugins[0].name, "f");
    assert_eq!(loaded.entities.len(), 1);
    let e = &loaded.entities[0];
    assert_eq!(e.id, "wasm-plugin_dev_access");
    assert_eq!(e.file, entity);
    assert_eq!(e.line, 1);
    assert_eq!(e.config.memory_pages, 50);
    assert!(loaded.otoroshi.is_none());
}

#[test]
fn one_yaml_file_holds_plugins_entities_and_settings() {
    let dir = TempDir::new();
    dir.wasm("access.wasm");
    dir.wasm("f.wasm");
    // The exported JSON pasted as it is under wasm_plugins:, in flow style.
    let yaml = format!(
        "otoroshi:\n  storage_root: edge\n  callback_timeout: 250ms\nplugins:\n  - config:\n      name: f\n      vm_config:\n        code:\n          local:\n            filename: f.wasm\nwasm_plugins:\n  - {}\n",
        OTOROSHI_EXPORT.replace('\n', "\n    ")
    );
    let file = dir.write("mixed.yaml", &yaml);

    let loaded = proxy_wasm_host::files::load_all(&[file.clone()]).unwrap();
    assert_eq!(loaded.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["f"]);
    assert_eq!(loaded.plugins[0].origin, ConfigOrigin { file: file.clone(), line: 5 });
    assert_eq!(loaded.entities.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["wasm-plugin_dev_access"]);
    assert_eq!(loaded.entities[0].line, 12);
    let settings = loaded.otoroshi.unwrap();
    assert_eq!(settings.storage_root, "edge");
    assert_eq!(settings.callback_timeout, std::time::Duration::from_millis(250));
}

#[test]
fn a_load_keeps_plugins_and_entities_in_file_order() {
    use proxy_wasm_host::files::Member;
    let dir = TempDir::new();
    dir.wasm("access.wasm");
    dir.wasm("f.wasm");
    let entity = dir.write("access.json", OTOROSHI_EXPORT);
    let plugin = |name: &str| {
        format!("config:\n  name: {name}\n  vm_config:\n    code:\n      local:\n        filename: f.wasm\n")
    };
    let (f, g) = (dir.write("f.yaml", &plugin("f")), dir.write("g.yaml", &plugin("g")));
    // The entity's file between two plugin files: plugin, entity, plugin.
    let loaded = proxy_wasm_host::files::load_all(&[f, entity, g]).unwrap();
    assert_eq!(loaded.order, [Member::Plugin(0), Member::Entity(0), Member::Plugin(1)]);
    assert_eq!(loaded.chain_order(), [0, 2, 1]);
    // In one file: by line (`wasm_plugins:` before `plugins:` here).
    let yaml = format!(
        "wasm_plugins:\n  - {}\nplugins:\n  - config:\n      name: f\n      vm_config:\n        code:\n          local:\n            filename: f.wasm\n",
        OTOROSHI_EXPORT.replace('\n', "\n    ")
    );
    let loaded = proxy_wasm_host::files::load_all(&[dir.write("mixed.yaml", &yaml)]).unwrap();
    assert_eq!(loaded.order, [Member::Entity(0), Member::Plugin(0)]);
    assert_eq!(loaded.chain_order(), [1, 0]);
}

#[test]
fn otoroshi_only_yaml_file_needs_no_proxy_wasm_plugin() {
    let dir = TempDir::new();
    dir.wasm("access.wasm");
    let file = dir.write(
        "o.yaml",
        "wasm_plugins:\n  - id: a\n    config:\n      source: { kind: File, path: access.wasm }\n    steps: [ValidateAccess]\n",
    );
    let loaded = proxy_wasm_host::files::load_all(&[file]).unwrap();
    assert!(loaded.plugins.is_empty());
    assert_eq!(loaded.entities[0].id, "a");
}

#[test]
fn otoroshi_yaml_file_that_configures_nothing_is_refused() {
    let dir = TempDir::new();
    let file = dir.write("o.yaml", "otoroshi:\n  storage_root: x\nwasm_plugins: []\n");
    let err = proxy_wasm_host::files::load_all(&[file.clone()]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: top level: no plugin configured; expected a non-empty \"wasm_plugins\" or \"plugins\" list",
            file.display()
        )
    );
}

#[test]
fn entity_with_an_unknown_key_names_file_line_and_key() {
    let dir = TempDir::new();
    dir.wasm("access.wasm");
    let file = dir.write("bad.json", &OTOROSHI_EXPORT.replace("\"memoryPages\"", "\"memoryPage\""));
    let err = proxy_wasm_host::files::load_all(&[file.clone()]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:8:17: config.memoryPage: unknown key; expected one of source, memoryPages, functionName, config, allowedHosts, allowedPaths, wasi, opa, httpWasm, authorizations, instances, killOptions, isJS, compiler_source, raw_source, lifetime, preserve",
            file.display()
        )
    );
}

#[test]
fn entity_id_may_not_name_a_proxy_wasm_plugin() {
    let dir = TempDir::new();
    dir.wasm("access.wasm");
    dir.wasm("f.wasm");
    let yaml = dir.write(
        "f.yaml",
        "config:\n  name: wasm-plugin_dev_access\n  vm_config:\n    code:\n      local:\n        filename: f.wasm\n",
    );
    let entity = dir.write("access.json", OTOROSHI_EXPORT);
    let err = proxy_wasm_host::files::load_all(&[yaml.clone(), entity.clone()]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:1: id: entity id \"wasm-plugin_dev_access\" is also the name of the Proxy-Wasm plugin at {}:1; expected a name unique across plugins and entities (chains name both)",
            entity.display(),
            yaml.display()
        )
    );
}

#[test]
fn servers_loader_refuses_entities_it_cannot_run_yet() {
    let dir = TempDir::new();
    dir.wasm("access.wasm");
    let entity = dir.write("access.json", OTOROSHI_EXPORT);
    let err = load_files(&[entity.clone()]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:1: id: Otoroshi WASM plugin entity \"wasm-plugin_dev_access\" is valid, but this build does not run Extism plugins on the servers yet (docs/otoroshi.md); only Proxy-Wasm plugins can be configured here",
            entity.display()
        )
    );
}

/// `otoroshi.jobs`: the schedule of entities listing Job; errors name file, line and key.
#[test]
fn otoroshi_jobs_schedule_entities_that_list_job() {
    let dir = TempDir::new();
    dir.wasm("job.wasm");
    let entity =
        "wasm_plugins:\n  - id: tick\n    config:\n      source: { kind: File, path: job.wasm }\n    steps: [Job]\n";
    let file = dir.write(
        "jobs.yaml",
        &format!("otoroshi:\n  jobs:\n    - plugin: tick\n      interval: 5s\n      initial_delay: 250ms\n{entity}"),
    );
    let loaded = proxy_wasm_host::files::load_all(&[file.clone()]).unwrap();
    let jobs = loaded.otoroshi.unwrap().jobs;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].plugin.as_str(), jobs[0].interval, jobs[0].initial_delay, jobs[0].line, jobs[0].one_worker),
        ("tick", std::time::Duration::from_secs(5), std::time::Duration::from_millis(250), 3, false)
    );

    let cases = [
        (
            "otoroshi:\n  jobs:\n    - { plugin: tick, interval: 5s, every: 1s }\n",
            "3:37: otoroshi.jobs[0].every: unknown key; expected one of plugin, interval, initial_delay, instantiation",
        ),
        (
            "otoroshi:\n  jobs:\n    - { plugin: tick, interval: 5s, instantiation: cluster }\n",
            "otoroshi.jobs[0].instantiation: unknown instantiation \"cluster\"; expected \"per_worker\" (every NGINX worker runs the job) or \"one\" (one worker at a time)",
        ),
        ("otoroshi:\n  jobs:\n    - { plugin: tick }\n", "otoroshi.jobs[0]: the job has no interval (e.g. \"10s\")"),
        (
            "otoroshi:\n  jobs:\n    - { plugin: tick, interval: soon }\n",
            "otoroshi.jobs[0].interval: expected a duration like \"100ms\" or \"1.5s\"",
        ),
        (
            "otoroshi:\n  jobs:\n    - { plugin: other, interval: 1s }\n",
            "3: otoroshi.jobs[0].plugin: no Otoroshi entity \"other\" in this configuration; expected the id of an entity listing the step Job (tick)",
        ),
        (
            "otoroshi:\n  jobs:\n    - { plugin: tick, interval: 1s }\n    - { plugin: tick, interval: 2s }\n",
            "4: otoroshi.jobs[1].plugin: entity \"tick\" is already scheduled by otoroshi.jobs[0]; expected one schedule per entity",
        ),
    ];
    for (settings, expected) in cases {
        let file = dir.write("bad-jobs.yaml", &format!("{settings}{entity}"));
        let err = proxy_wasm_host::files::load_all(&[file.clone()]).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:", file.display())), "{err}");
        assert!(err.contains(expected), "{err}\nexpected: {expected}");
    }
    let file = dir.write(
        "not-a-job.yaml",
        &format!(
            "otoroshi:\n  jobs:\n    - {{ plugin: tick, interval: 1s }}\n{}",
            entity.replace("[Job]", "[ValidateAccess]")
        ),
    );
    let err = proxy_wasm_host::files::load_all(&[file.clone()]).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}:3: otoroshi.jobs[0].plugin: entity \"tick\" (at {}:5) does not list the step Job",
            file.display(),
            file.display()
        )),
        "{err}"
    );
}
