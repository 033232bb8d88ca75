// c-filter: the as-filter protocol (tests/plugins/README.md, "as-filter")
// written in C directly against the Proxy-Wasm ABI, the way the C++ SDK's
// intrinsics (proxy_wasm_intrinsics.h / .cc) are: every hostcall imported from
// module "env" with the ABI's C signature, every callback exported by its ABI
// name, the ABI marker exported as a function, buffers the host returns
// allocated through proxy_on_memory_allocate (= malloc; malloc itself is
// exported too, as the C++ SDK's builds do) and freed by the filter, the root
// context created on proxy_on_context_create(id, 0) after reading the
// plugin_root_id property, the configuration read in proxy_on_configure with
// proxy_get_buffer_bytes(PluginConfiguration, 0, size).
//
// Built by scripts/build-plugins.sh with Zig's C compiler (PyPI `ziglang`) as a
// WASI reactor, twice:
//   c_filter.wasm          ABI 0.2.1 (proxy_on_memory_allocate and malloc)
//   c_filter_0_1_0.wasm    -DPROXY_ABI_0_1_0: ABI 0.1.0, as the C++ SDK of
//                          that ABI (malloc only, proxy_get_configuration,
//                          header callbacks without end_of_stream)
// Default tag: "c-filter" (`x-proxy-wasm`, `x-as-filter`); everything else is
// the as-filter protocol, texts included.

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WASM_EXPORT(name) __attribute__((export_name(#name)))
#define WASM_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

typedef uint32_t WasmResult; // proxy_status_t
enum { WasmResult_Ok = 0 };
enum { LogLevel_trace, LogLevel_debug, LogLevel_info, LogLevel_warn, LogLevel_error, LogLevel_critical };
enum { HeaderMap_RequestHeaders = 0, HeaderMap_ResponseHeaders = 2 };
enum { Buffer_PluginConfiguration = 7 };
enum { FilterHeaders_Continue = 0, FilterHeaders_StopIteration = 1 };

WASM_IMPORT(proxy_log)
WasmResult proxy_log(uint32_t level, const char *message, size_t message_size);
WASM_IMPORT(proxy_get_property)
WasmResult proxy_get_property(const char *path, size_t path_size, char **value, size_t *value_size);
WASM_IMPORT(proxy_get_header_map_value)
WasmResult proxy_get_header_map_value(uint32_t map, const char *key, size_t key_size, char **value, size_t *value_size);
WASM_IMPORT(proxy_add_header_map_value)
WasmResult proxy_add_header_map_value(uint32_t map, const char *key, size_t key_size, const char *value, size_t value_size);
WASM_IMPORT(proxy_send_local_response)
WasmResult proxy_send_local_response(uint32_t status, const char *details, size_t details_size, const char *body,
                                     size_t body_size, const char *pairs, size_t pairs_size, int32_t grpc_status);
#ifdef PROXY_ABI_0_1_0
WASM_IMPORT(proxy_get_configuration)
WasmResult proxy_get_configuration(char **value, size_t *value_size);
#else
WASM_IMPORT(proxy_get_buffer_bytes)
WasmResult proxy_get_buffer_bytes(uint32_t buffer, size_t start, size_t length, char **value, size_t *value_size);
#endif

#ifdef PROXY_ABI_0_1_0
WASM_EXPORT(proxy_abi_version_0_1_0) void proxy_abi_version_0_1_0(void) {}
#else
WASM_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

WASM_EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size); }
#endif

// ------------------------------------------------------------------ strings

// A byte string: `data` is owned (malloc) unless `borrowed`.
typedef struct {
    char *data;
    size_t size;
} Bytes;

static Bytes bytes_copy(const char *data, size_t size) {
    Bytes b = {malloc(size + 1), size};
    if (size) memcpy(b.data, data, size);
    b.data[size] = 0;
    return b;
}

static Bytes bytes_of(const char *text) { return bytes_copy(text, strlen(text)); }

static int bytes_eq(Bytes a, const char *text) { return a.size == strlen(text) && memcmp(a.data, text, a.size) == 0; }

// `a` + `b` (a new string; neither is freed).
static Bytes bytes_cat(Bytes a, const char *b, size_t b_size) {
    Bytes out = {malloc(a.size + b_size + 1), a.size + b_size};
    memcpy(out.data, a.data, a.size);
    memcpy(out.data + a.size, b, b_size);
    out.data[out.size] = 0;
    return out;
}

static void log_text(uint32_t level, const char *text, size_t size) { proxy_log(level, text, size); }

// ------------------------------------------------------------------ settings

typedef struct {
    Bytes raw;
    Bytes tag;
    Bytes local_path;
    uint32_t local_status;
    int reject;
} Settings;

static Settings *settings_default(void) {
    Settings *s = calloc(1, sizeof(Settings));
    s->raw = bytes_of("");
    s->tag = bytes_of("c-filter");
    s->local_path = bytes_of("/as-local");
    s->local_status = 403;
    return s;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

static void trim(const char **p, size_t *n) {
    while (*n && is_space(**p)) (*p)++, (*n)--;
    while (*n && is_space((*p)[*n - 1])) (*n)--;
}

// AssemblyScript's I32.parseInt for what the protocol needs: optional sign,
// decimal digits; anything else ends the number; no digits gives 0.
static int64_t parse_int(const char *p, size_t n) {
    size_t i = 0;
    int neg = 0;
    int64_t v = 0;
    if (i < n && (p[i] == '+' || p[i] == '-')) neg = p[i++] == '-';
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        v = v * 10 + (p[i] - '0');
        if (v > 0x7fffffff) return neg ? -v : v;
    }
    return neg ? -v : v;
}

// "key=value" items separated by ';' or newlines; keys tag, local_path,
// local_status (200..599, else the configuration is rejected), reject.
static Settings *settings_parse(const char *raw, size_t raw_size) {
    Settings *s = settings_default();
    free(s->raw.data);
    s->raw = bytes_copy(raw, raw_size);
    size_t at = 0;
    while (at <= raw_size) {
        size_t end = at;
        while (end < raw_size && raw[end] != ';' && raw[end] != '\n') end++;
        const char *item = raw + at;
        size_t n = end - at;
        trim(&item, &n);
        at = end + 1;
        if (n == 0) continue;
        const char *eq = memchr(item, '=', n);
        const char *key = item, *value = "";
        size_t key_n = n, value_n = 0;
        if (eq) {
            key_n = (size_t)(eq - item);
            value = eq + 1;
            value_n = n - key_n - 1;
            trim(&key, &key_n);
            trim(&value, &value_n);
        }
        Bytes k = {(char *)key, key_n};
        if (bytes_eq(k, "tag")) {
            free(s->tag.data);
            s->tag = bytes_copy(value, value_n);
        } else if (bytes_eq(k, "local_path")) {
            free(s->local_path.data);
            s->local_path = bytes_copy(value, value_n);
        } else if (bytes_eq(k, "local_status")) {
            int64_t st = parse_int(value, value_n);
            if (st >= 200 && st <= 599) {
                s->local_status = (uint32_t)st;
            } else {
                s->reject = 1;
            }
        } else if (bytes_eq(k, "reject")) {
            s->reject = 1;
        }
    }
    return s;
}

// ------------------------------------------------------------------ contexts

// Root contexts (id -> settings) and stream contexts (id -> root id). A
// reconfigured root keeps its old settings alive for the streams that
// started with them: settings are small and configurations rare.
typedef struct {
    uint32_t id;
    Settings *settings;
} Root;

typedef struct {
    uint32_t id;
    Settings *settings;
} Stream;

static Root *roots;
static size_t roots_n;
static Stream *streams;
static size_t streams_n, streams_cap;

static Root *root_find(uint32_t id) {
    for (size_t i = 0; i < roots_n; i++)
        if (roots[i].id == id) return &roots[i];
    return NULL;
}

static Stream *stream_find(uint32_t id) {
    for (size_t i = 0; i < streams_n; i++)
        if (streams[i].id == id) return &streams[i];
    return NULL;
}

// The property as the C++ SDK reads it: each part of the path followed by a
// NUL, the last one's included in the size (one part here). NULL when the
// host has none.
static Bytes *property(const char *path) {
    char *value = NULL;
    size_t size = 0;
    if (proxy_get_property(path, strlen(path) + 1, &value, &size) != WasmResult_Ok) return NULL;
    Bytes *b = malloc(sizeof(Bytes));
    b->data = value;
    b->size = size;
    return b;
}

WASM_EXPORT(proxy_on_context_create) void proxy_on_context_create(uint32_t context_id, uint32_t parent_context_id) {
    if (parent_context_id == 0) {
        // As the C++ SDK does: the root context factory is looked up by
        // plugin_root_id (this filter serves every root id).
        Bytes *root_id = property("plugin_root_id");
        if (root_id) {
            free(root_id->data);
            free(root_id);
        }
        if (!root_find(context_id)) {
            roots = realloc(roots, (roots_n + 1) * sizeof(Root));
            roots[roots_n].id = context_id;
            roots[roots_n].settings = settings_default();
            roots_n++;
        }
        return;
    }
    Root *root = root_find(parent_context_id);
    if (streams_n == streams_cap) {
        streams_cap = streams_cap ? streams_cap * 2 : 16;
        streams = realloc(streams, streams_cap * sizeof(Stream));
    }
    streams[streams_n].id = context_id;
    streams[streams_n].settings = root ? root->settings : settings_default();
    streams_n++;
}

WASM_EXPORT(proxy_on_vm_start) uint32_t proxy_on_vm_start(uint32_t root_context_id, size_t vm_configuration_size) {
    (void)root_context_id;
    (void)vm_configuration_size;
    return 1;
}

WASM_EXPORT(proxy_on_configure) uint32_t proxy_on_configure(uint32_t root_context_id, size_t configuration_size) {
    char *data = NULL;
    size_t size = 0;
#ifdef PROXY_ABI_0_1_0
    (void)configuration_size;
    WasmResult r = proxy_get_configuration(&data, &size);
#else
    WasmResult r = proxy_get_buffer_bytes(Buffer_PluginConfiguration, 0, configuration_size, &data, &size);
#endif
    if (r != WasmResult_Ok) {
        data = NULL;
        size = 0;
    }
    Settings *s = settings_parse(data ? data : "", data ? size : 0);
    free(data);
    if (s->reject) {
        Bytes msg = bytes_of("as-filter: configuration rejected: ");
        Bytes line = bytes_cat(msg, s->raw.data, s->raw.size);
        log_text(LogLevel_error, line.data, line.size);
        free(msg.data);
        free(line.data);
        return 0;
    }
    Root *root = root_find(root_context_id);
    if (root) root->settings = s;
    Bytes a = bytes_of("as-filter: configured, tag=");
    Bytes b = bytes_cat(a, s->tag.data, s->tag.size);
    Bytes c = bytes_cat(b, " local_path=", 12);
    Bytes d = bytes_cat(c, s->local_path.data, s->local_path.size);
    log_text(LogLevel_info, d.data, d.size);
    free(a.data);
    free(b.data);
    free(c.data);
    free(d.data);
    return 1;
}

// ------------------------------------------------------------------ headers

static Bytes header(uint32_t map, const char *key) {
    char *value = NULL;
    size_t size = 0;
    if (proxy_get_header_map_value(map, key, strlen(key), &value, &size) != WasmResult_Ok || !value) {
        free(value);
        return bytes_of("");
    }
    Bytes b = bytes_copy(value, size);
    free(value);
    return b;
}

static void add_header(uint32_t map, const char *key, const char *value, size_t value_size) {
    proxy_add_header_map_value(map, key, strlen(key), value, value_size);
}

// Printable ASCII only (others become '_'), at most 256 bytes.
static Bytes header_safe(Bytes s) {
    size_t n = s.size < 256 ? s.size : 256;
    Bytes out = bytes_copy(s.data, n);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out.data[i] < 0x20 || (unsigned char)out.data[i] > 0x7e) out.data[i] = '_';
    return out;
}

// The ABI's header map: count, (key size, value size) pairs, then each key
// and value followed by a NUL.
static Bytes serialize_pairs(const char *const *kv, size_t pairs) {
    size_t size = 4 + 8 * pairs;
    for (size_t i = 0; i < 2 * pairs; i++) size += strlen(kv[i]) + 1;
    Bytes out = {calloc(1, size), size};
    uint32_t *words = (uint32_t *)out.data;
    words[0] = (uint32_t)pairs;
    char *at = out.data + 4 + 8 * pairs;
    for (size_t i = 0; i < pairs; i++) {
        size_t k = strlen(kv[2 * i]), v = strlen(kv[2 * i + 1]);
        words[1 + 2 * i] = (uint32_t)k;
        words[2 + 2 * i] = (uint32_t)v;
        memcpy(at, kv[2 * i], k);
        at += k + 1;
        memcpy(at, kv[2 * i + 1], v);
        at += v + 1;
    }
    return out;
}

static Settings *stream_settings(uint32_t context_id) {
    Stream *s = stream_find(context_id);
    static Settings *fallback;
    if (s) return s->settings;
    if (!fallback) fallback = settings_default();
    return fallback;
}

static uint32_t on_request_headers(uint32_t context_id) {
    Settings *s = stream_settings(context_id);
    add_header(HeaderMap_RequestHeaders, "x-as-filter", s->tag.data, s->tag.size);
    Bytes path = header(HeaderMap_RequestHeaders, ":path");
    Bytes x_as_local = header(HeaderMap_RequestHeaders, "x-as-local");
    char *q = memchr(path.data, '?', path.size);
    size_t path_n = q ? (size_t)(q - path.data) : path.size;
    int local = (path_n == s->local_path.size && memcmp(path.data, s->local_path.data, path_n) == 0) || x_as_local.size > 0;
    free(path.data);
    free(x_as_local.data);
    if (!local) return FilterHeaders_Continue;
    const char *kv[] = {"x-proxy-wasm", s->tag.data, "x-as-local", "1", "content-type", "text/plain"};
    Bytes pairs = serialize_pairs(kv, 3);
    static const char body[] = "local response from as-filter\n";
    proxy_send_local_response(s->local_status, "as-filter", 9, body, sizeof(body) - 1, pairs.data, pairs.size, -1);
    free(pairs.data);
    return FilterHeaders_StopIteration;
}

static uint32_t on_response_headers(uint32_t context_id) {
    Settings *s = stream_settings(context_id);
    add_header(HeaderMap_ResponseHeaders, "x-proxy-wasm", s->tag.data, s->tag.size);
    if (s->raw.size > 0) {
        Bytes safe = header_safe(s->raw);
        add_header(HeaderMap_ResponseHeaders, "x-as-config", safe.data, safe.size);
        free(safe.data);
    }
    return FilterHeaders_Continue;
}

#ifdef PROXY_ABI_0_1_0
WASM_EXPORT(proxy_on_request_headers) uint32_t proxy_on_request_headers(uint32_t context_id, uint32_t headers) {
    (void)headers;
    return on_request_headers(context_id);
}

WASM_EXPORT(proxy_on_response_headers) uint32_t proxy_on_response_headers(uint32_t context_id, uint32_t headers) {
    (void)headers;
    return on_response_headers(context_id);
}
#else
WASM_EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t context_id, uint32_t headers, uint32_t end_of_stream) {
    (void)headers;
    (void)end_of_stream;
    return on_request_headers(context_id);
}

WASM_EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t context_id, uint32_t headers, uint32_t end_of_stream) {
    (void)headers;
    (void)end_of_stream;
    return on_response_headers(context_id);
}
#endif

// ------------------------------------------------------------------ lifecycle

WASM_EXPORT(proxy_on_done) uint32_t proxy_on_done(uint32_t context_id) {
    (void)context_id;
    return 1;
}

WASM_EXPORT(proxy_on_log) void proxy_on_log(uint32_t context_id) { (void)context_id; }

WASM_EXPORT(proxy_on_delete) void proxy_on_delete(uint32_t context_id) {
    for (size_t i = 0; i < streams_n; i++) {
        if (streams[i].id == context_id) {
            streams[i] = streams[--streams_n];
            return;
        }
    }
    for (size_t i = 0; i < roots_n; i++) {
        if (roots[i].id == context_id) {
            roots[i] = roots[--roots_n];
            return;
        }
    }
}
