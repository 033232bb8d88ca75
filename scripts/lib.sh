# Shell helpers shared by the demo and benchmark scripts (sourced, not run).

# free_port: a TCP port on 127.0.0.1 that is free now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ats_runroot DIR [SYSTEM_CONFIG_DIR]: a private Traffic Server layout in DIR, as tests/e2e/ats.rs
# makes it: a runroot.yaml with absolute paths (TS_RUNROOT=DIR/runroot.yaml), a copy of the
# system's configuration in DIR/etc (the stock records.config also kept as
# DIR/records.config.stock), an empty storage.config and plugin.config, and DIR/plugins for the
# plugins (the caller links them there).
ats_runroot() {
    local d=$1 sys=${2:-/etc/trafficserver}
    mkdir -p "$d/etc" "$d/run" "$d/logs" "$d/cache" "$d/var" "$d/plugins"
    cp -a "$sys/." "$d/etc/"
    cp "$d/etc/records.config" "$d/records.config.stock"
    cat >"$d/runroot.yaml" <<YAML
prefix: $d
exec_prefix: $d
bindir: /usr/bin
sbindir: /usr/bin
sysconfdir: $d/etc
datadir: $d/var
includedir: /usr/include
libdir: /usr/lib/trafficserver
libexecdir: $d/plugins
localstatedir: $d/var
runtimedir: $d/run
logdir: $d/logs
cachedir: $d/cache
YAML
    : >"$d/etc/storage.config"
    : >"$d/etc/plugin.config"
}

# plugin_entry NAME CONFIGURATION RUNTIME VM_ID CODE: one plugin of a Proxy-Wasm YAML's
# `plugins:` list (the compiled-module cache allowed).
plugin_entry() {
    cat <<YAML
  - config:
      name: "$1"
      root_id: ""
      configuration: "$2"
      vm_config:
        runtime: "$3"
        vm_id: "$4"
        allow_precompiled: true
        code:
          local:
            filename: "$5"
YAML
}

# plugin_yaml FILE NAME CONFIGURATION RUNTIME CODE: a one-plugin Proxy-Wasm YAML (its own vm_id),
# as the callgrind scripts load it on either server.
plugin_yaml() {
    { echo "plugins:"; plugin_entry "$2" "$3" "$4" "$2" "$5"; } >"$1"
}

# w6_yaml FILE NAME WORKLOAD RUNTIME WASM COUNT: COUNT plugins NAME-1.. of WASM with WORKLOAD, all
# on the one VM NAME (scripts/bench.sh's W6: a chain of eight filters sharing a VM), as the
# callgrind scripts load it on either server.
w6_yaml() {
    local i
    {
        echo "plugins:"
        for ((i = 1; i <= $6; i++)); do plugin_entry "$2-$i" "$3" "$4" "$2" "$5"; done
    } >"$1"
}
