# Proxy-Wasm host: build, test and demo. Every target installs what it needs
# (scripts/install-deps.sh) on Debian 12 as root.

SHELL := /bin/bash
# The rustup toolchain comes first: /usr/bin/cargo is Debian's 1.65, used only for wasm32 plugins.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all build deps plugins ats test demo clean

all: build

deps:
	@bash scripts/install-deps.sh

## build: the Traffic Server plugin, the host library with its C API, and every test plugin (release).
build: deps plugins
	@mkdir -p build
	$(CARGO) build --release --locked --features ats
	cp target/release/libproxy_wasm_host.so build/proxy_wasm_ats.so
	$(CARGO) build --release --locked
	cp target/release/libproxy_wasm_host.so build/libproxy_wasm_host.so
	@echo "built build/proxy_wasm_ats.so, build/libproxy_wasm_host.so (C header: include/proxy_wasm_host.h) and build/plugins/*.wasm"

## ats: the Traffic Server plugin (debug build, for the tests) at build/proxy_wasm_ats.so.
ats: deps
	@mkdir -p build
	$(CARGO) build --locked --features ats
	cp target/debug/libproxy_wasm_host.so build/proxy_wasm_ats.so

## plugins: the Rust-SDK, AssemblyScript and WAT test plugins into build/plugins/.
plugins: deps
	@bash scripts/build-plugins.sh

## test: every test (unit and integration), with the plugins built from source.
test: deps plugins ats
	$(CARGO) test --locked --no-fail-fast

## demo: Traffic Server on 127.0.0.1 with the example plugin and requests through it, then the core demo.
demo: deps plugins ats
	bash scripts/demo-ats.sh
	$(CARGO) run --locked --example demo -- examples/demo/demo.yaml examples/demo/request.txt

clean:
	rm -rf build target
