# Proxy-Wasm host: build, test and demo. Every target installs what it needs
# (scripts/install-deps.sh) on Debian 12 as root.

SHELL := /bin/bash
# The rustup toolchain comes first: /usr/bin/cargo is Debian's 1.65, used only for wasm32 plugins.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all build deps plugins test unit demo clean header

all: build

deps:
	@bash scripts/install-deps.sh

## build: the host library (release) and every test plugin.
build: deps plugins
	$(CARGO) build --release --locked
	@mkdir -p build
	cp target/release/libproxy_wasm_host.so build/libproxy_wasm_host.so
	@echo "built build/libproxy_wasm_host.so and build/plugins/*.wasm; C header: include/proxy_wasm_host.h"

## plugins: the Rust-SDK, AssemblyScript and WAT test plugins into build/plugins/.
plugins: deps
	@bash scripts/build-plugins.sh

## test: every test (unit and integration), with the plugins built from source.
test: deps plugins
	$(CARGO) test --locked --no-fail-fast

## demo: runs the example plugin through the host with a recorded request.
demo: deps plugins
	$(CARGO) run --locked --release --example demo -- examples/demo/demo.yaml examples/demo/request.txt

clean:
	rm -rf build target
