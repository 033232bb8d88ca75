# Proxy-Wasm host: build, test and demo. Every target installs what it needs
# (scripts/install-deps.sh) on Debian 12 as root.

SHELL := /bin/bash
# The rustup toolchain comes first: /usr/bin/cargo is Debian's 1.65, used only for wasm32 plugins.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: all build deps plugins ats nginx nginx-src test demo clean

all: build

deps:
	@bash scripts/install-deps.sh

## build: the Traffic Server plugin, the host library with its C API, and every test plugin (release).
build: deps plugins nginx-src
	@mkdir -p build
	$(CARGO) build --release --locked --features ats
	cp target/release/libproxy_wasm_host.so build/proxy_wasm_ats.so
	NGINX_SOURCE_DIR=$(NGINX_SRC) NGINX_BUILD_DIR=$(NGINX_SRC)/objs $(CARGO) build --release --locked --features nginx
	cp target/release/libproxy_wasm_host.so build/ngx_http_proxy_wasm_module.so
	$(CARGO) build --release --locked
	cp target/release/libproxy_wasm_host.so build/libproxy_wasm_host.so
	@echo "built build/proxy_wasm_ats.so, build/ngx_http_proxy_wasm_module.so, build/libproxy_wasm_host.so (C header: include/proxy_wasm_host.h) and build/plugins/*.wasm"

## ats: the Traffic Server plugin (debug build, for the tests) at build/proxy_wasm_ats.so.
ats: deps
	@mkdir -p build
	$(CARGO) build --locked --features ats
	cp target/debug/libproxy_wasm_host.so build/proxy_wasm_ats.so

## nginx-src: Debian's nginx 1.22.1 source kit (nginx-dev), configured with its own flags, in build/nginx-src.
NGINX_SRC ?= $(CURDIR)/build/nginx-src
nginx-src: deps
	@bash scripts/nginx-src.sh $(NGINX_SRC) >/dev/null

## nginx: the NGINX dynamic module (debug build, for the tests) at build/ngx_http_proxy_wasm_module.so.
## Copied right away: a plain `cargo build`/`cargo test` rebuilds the library without the feature.
nginx: deps nginx-src
	@mkdir -p build
	NGINX_SOURCE_DIR=$(NGINX_SRC) NGINX_BUILD_DIR=$(NGINX_SRC)/objs $(CARGO) build --locked --features nginx
	cp target/debug/libproxy_wasm_host.so build/ngx_http_proxy_wasm_module.so

## plugins: the Rust-SDK, AssemblyScript and WAT test plugins into build/plugins/.
plugins: deps
	@bash scripts/build-plugins.sh

## test: every test (unit and integration), with the plugins built from source.
test: deps plugins ats nginx
	$(CARGO) test --locked --no-fail-fast

## demo: Traffic Server on 127.0.0.1 with the example plugin and requests through it, then the core demo.
demo: deps plugins ats nginx
	bash scripts/demo-ats.sh
	bash scripts/demo-nginx.sh
	$(CARGO) run --locked --example demo -- examples/demo/demo.yaml examples/demo/request.txt

clean:
	rm -rf build target
