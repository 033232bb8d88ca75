# Proxy-Wasm host: build, test and demo. Every target installs what it needs
# (scripts/install-deps.sh) on Debian 12 as root.

SHELL := /bin/bash
# The rustup toolchain comes first: /usr/bin/cargo is Debian's 1.65, used only for wasm32 plugins.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all build deps plugins ats nginx nginx-src test demo clean bench fuzz

all: build

# Copies a built library into place by renaming a fresh copy over it: a server
# that has the old file loaded keeps its mapping (cp over it would crash it).
install_so = cp $(1) $(2).tmp && mv -f $(2).tmp $(2)

deps:
	@bash scripts/install-deps.sh

## build: the Traffic Server plugin, the host library with its C API, and every test plugin (release).
build: deps plugins nginx-src
	@mkdir -p build
	$(NGINX_ENV) $(CARGO) build --release --locked --workspace
	$(call install_so,target/release/libproxy_wasm_ats.so,build/proxy_wasm_ats.so)
	$(call install_so,target/release/libngx_http_proxy_wasm_module.so,build/ngx_http_proxy_wasm_module.so)
	$(call install_so,target/release/libproxy_wasm_host.so,build/libproxy_wasm_host.so)
	@echo "built build/proxy_wasm_ats.so, build/ngx_http_proxy_wasm_module.so, build/libproxy_wasm_host.so (C header: include/proxy_wasm_host.h) and build/plugins/*.wasm"

## ats: the Traffic Server plugin (debug build, for the tests) at build/proxy_wasm_ats.so.
ats: deps
	@mkdir -p build
	$(CARGO) build --locked -p proxy-wasm-ats
	$(call install_so,target/debug/libproxy_wasm_ats.so,build/proxy_wasm_ats.so)

## nginx-src: Debian's nginx 1.22.1 source kit (nginx-dev), configured with its own flags, in build/nginx-src.
NGINX_SRC ?= $(CURDIR)/build/nginx-src
# What the `ngx` crate needs to generate its bindings (servers/nginx).
NGINX_ENV = NGINX_SOURCE_DIR=$(NGINX_SRC) NGINX_BUILD_DIR=$(NGINX_SRC)/objs
nginx-src: deps
	@bash scripts/nginx-src.sh $(NGINX_SRC) >/dev/null

## nginx: the NGINX dynamic module (debug build, for the tests) at build/ngx_http_proxy_wasm_module.so.
nginx: deps nginx-src
	@mkdir -p build
	$(NGINX_ENV) $(CARGO) build --locked -p ngx-http-proxy-wasm-module
	$(call install_so,target/debug/libngx_http_proxy_wasm_module.so,build/ngx_http_proxy_wasm_module.so)

## plugins: the test plugins into build/plugins/: the Rust-SDK filter with every Rust SDK release
## that builds here, the AssemblyScript filter with each AssemblyScript SDK release, the C filter
## (Zig's cc from PyPI, in a venv under build/), the WAT modules, the benchmark filter and the
## APISIX examples (examples/fault-injection, forward-auth, response-rewrite).
plugins: deps
	@bash scripts/build-plugins.sh

## test: every test (unit and integration), with the plugins built from source; the end-to-end
## suites (real Traffic Server and NGINX) run a second time with every plugin on WAMR
## (scripts/run-tests.sh: logs in build/test-logs/, the failed tests and why at the end).
test: deps plugins ats nginx
	python3 scripts/module-deps.py
	CARGO=$(CARGO) bash scripts/run-tests.sh

## demo: Traffic Server on 127.0.0.1 with the example plugin and requests through it, then the core demo.
demo: deps plugins ats nginx
	bash scripts/demo-ats.sh
	bash scripts/demo-nginx.sh
	$(CARGO) run --locked --example demo -- examples/demo/demo.yaml examples/demo/request.txt

## fuzz: every fuzz target of tests/fuzz.rs for FUZZ_SECONDS each (default 600), one after the
## other, then a table (target, time, cases, result); `make test` runs the same targets for a few
## seconds each. FUZZ_SEED, FUZZ_TARGETS, FUZZ_JOBS: see scripts/fuzz.sh; results in docs/robustness.md.
fuzz: deps
	FUZZ_SECONDS=$${FUZZ_SECONDS:-600} bash scripts/fuzz.sh

## bench: throughput, CPU, memory and start-up benchmarks (issue 6; see docs/benchmarks.md).
## Release builds of the Traffic Server plugin and (if it builds) the NGINX module into build/bench/,
## then scripts/bench.sh (BENCH_* variables: rounds, duration, rows, BENCH_LONG=1 for the 5-minute run).
bench: deps nginx-src
	@bash scripts/build-plugins.sh bench rust otoroshi
	@mkdir -p build/bench
	$(CARGO) build --release --locked -p proxy-wasm-ats
	$(call install_so,target/release/libproxy_wasm_ats.so,build/bench/proxy_wasm_ats.so)
	@if $(NGINX_ENV) $(CARGO) build --release --locked -p ngx-http-proxy-wasm-module; then \
	    cp target/release/libngx_http_proxy_wasm_module.so build/bench/ngx_http_proxy_wasm_module.so; \
	else echo "bench: the NGINX module does not build; its rows will say so"; rm -f build/bench/ngx_http_proxy_wasm_module.so; fi
	bash scripts/bench.sh

clean:
	rm -rf build target
