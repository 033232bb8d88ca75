/*
 * A minimal C "server" driving libproxy_wasm_host through its C API, used by
 * tests/ffi_c.rs. It loads the Rust-SDK test filter (see tests/plugins/README.md),
 * runs two transactions against C-side header maps and checks what the plugin did.
 *
 * Usage: smoke <path/to/rust_sdk_filter.wasm>
 * Prints one line per step; exits 0 when every check passed.
 */
#define _XOPEN_SOURCE 700 /* mkdtemp, realpath, strncasecmp */

#include "proxy_wasm_host.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, what)                                                                   \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            failures++;                                                                     \
            fprintf(stderr, "CHECK FAILED (line %d): %s: %s\n", __LINE__, #cond, (what));   \
        }                                                                                   \
    } while (0)

static pwh_bytes bytes_of(const char *s) {
    pwh_bytes b = {(const uint8_t *)s, strlen(s)};
    return b;
}

static const char *verdict_name(int32_t v) {
    switch (v) {
    case PWH_VERDICT_CONTINUE: return "CONTINUE";
    case PWH_VERDICT_PAUSE: return "PAUSE";
    case PWH_VERDICT_STOP: return "STOP";
    case PWH_VERDICT_ERROR: return "ERROR";
    default: return "?";
    }
}

static const char *level_name(int32_t level) {
    static const char *names[] = {"trace", "debug", "info", "warn", "error", "critical"};
    return level >= 0 && level <= 5 ? names[level] : "?";
}

/* ------------------------------------------------------------ header maps */

#define MAX_HEADERS 64

typedef struct {
    char *key;
    char *value;
} header;

typedef struct {
    header h[MAX_HEADERS];
    size_t n;
} header_map;

static char *copy_bytes(const uint8_t *p, size_t len) {
    char *s = malloc(len + 1);
    if (!s) abort();
    if (len) memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

static int map_add(header_map *m, pwh_bytes key, pwh_bytes value) {
    if (m->n == MAX_HEADERS) return PWH_STATUS_INTERNAL_FAILURE;
    m->h[m->n].key = copy_bytes(key.ptr, key.len);
    m->h[m->n].value = copy_bytes(value.ptr, value.len);
    m->n++;
    return PWH_STATUS_OK;
}

static void map_add_str(header_map *m, const char *key, const char *value) {
    map_add(m, bytes_of(key), bytes_of(value));
}

static int key_is(const header *h, pwh_bytes key) {
    return strlen(h->key) == key.len && (key.len == 0 || strncasecmp(h->key, (const char *)key.ptr, key.len) == 0);
}

static void map_remove(header_map *m, pwh_bytes key) {
    size_t out = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (key_is(&m->h[i], key)) {
            free(m->h[i].key);
            free(m->h[i].value);
        } else {
            m->h[out++] = m->h[i];
        }
    }
    m->n = out;
}

static void map_clear(header_map *m) {
    for (size_t i = 0; i < m->n; i++) {
        free(m->h[i].key);
        free(m->h[i].value);
    }
    m->n = 0;
}

static const char *map_get(const header_map *m, const char *key) {
    for (size_t i = 0; i < m->n; i++)
        if (key_is(&m->h[i], bytes_of(key))) return m->h[i].value;
    return NULL;
}

/* Replaces `m` with the pairs encoding `pairs`. */
static int map_set_pairs(header_map *m, pwh_bytes pairs) {
    int64_t n = pwh_pairs_count(pairs);
    if (n < 0) return PWH_STATUS_BAD_ARGUMENT;
    map_clear(m);
    for (size_t i = 0; i < (size_t)n; i++) {
        pwh_bytes k, v;
        if (pwh_pairs_get(pairs, i, &k, &v) != PWH_STATUS_OK) return PWH_STATUS_BAD_ARGUMENT;
        if (map_add(m, k, v) != PWH_STATUS_OK) return PWH_STATUS_INTERNAL_FAILURE;
    }
    return PWH_STATUS_OK;
}

/* ------------------------------------------------------------ the stream */

typedef struct {
    header_map request, request_trailers, response, response_trailers;
    int local_status; /* 0 = no local response */
    char *local_body;
    header_map local_headers;
    int *destroyed; /* outlives the stream, so the test can count destroy calls */
    pwh_vms *reenter; /* when set, the first header read calls back into these VMs */
    int reentered_rc;
    char reentered_error[200];
} stream;

static header_map *stream_map(stream *s, int32_t map_type) {
    switch (map_type) {
    case PWH_MAP_TYPE_HTTP_REQUEST_HEADERS: return &s->request;
    case PWH_MAP_TYPE_HTTP_REQUEST_TRAILERS: return &s->request_trailers;
    case PWH_MAP_TYPE_HTTP_RESPONSE_HEADERS: return &s->response;
    case PWH_MAP_TYPE_HTTP_RESPONSE_TRAILERS: return &s->response_trailers;
    default: return NULL;
    }
}

static int32_t st_get_header_map(void *user, int32_t map_type, pwh_buffer *out) {
    stream *s = user;
    if (s->reenter) {
        /* Forbidden, and refused: the VMs are busy running this very callback. */
        pwh_buffer *e = pwh_buffer_new();
        s->reentered_rc = pwh_on_tick(s->reenter, 0, e);
        snprintf(s->reentered_error, sizeof s->reentered_error, "%s", pwh_buffer_cstr(e));
        pwh_buffer_free(e);
        s->reenter = NULL;
    }
    header_map *m = stream_map(s, map_type);
    if (!m) return PWH_STATUS_OK; /* other maps are empty */
    for (size_t i = 0; i < m->n; i++) {
        int32_t rc = pwh_pairs_add(out, bytes_of(m->h[i].key), bytes_of(m->h[i].value));
        if (rc != PWH_STATUS_OK) return rc;
    }
    return PWH_STATUS_OK;
}

static int32_t st_set_header_map(void *user, int32_t map_type, pwh_bytes pairs) {
    header_map *m = stream_map(user, map_type);
    return m ? map_set_pairs(m, pairs) : PWH_STATUS_BAD_ARGUMENT;
}

static int32_t st_add_header(void *user, int32_t map_type, pwh_bytes key, pwh_bytes value) {
    header_map *m = stream_map(user, map_type);
    return m ? map_add(m, key, value) : PWH_STATUS_BAD_ARGUMENT;
}

static int32_t st_replace_header(void *user, int32_t map_type, pwh_bytes key, pwh_bytes value) {
    header_map *m = stream_map(user, map_type);
    if (!m) return PWH_STATUS_BAD_ARGUMENT;
    map_remove(m, key);
    return map_add(m, key, value);
}

static int32_t st_remove_header(void *user, int32_t map_type, pwh_bytes key) {
    header_map *m = stream_map(user, map_type);
    if (!m) return PWH_STATUS_BAD_ARGUMENT;
    map_remove(m, key);
    return PWH_STATUS_OK;
}

static int32_t st_send_local_response(void *user, uint32_t status, pwh_bytes details, pwh_bytes body,
                                      pwh_bytes headers, int32_t grpc_status) {
    stream *s = user;
    (void)details;
    (void)grpc_status;
    s->local_status = (int)status;
    free(s->local_body);
    s->local_body = copy_bytes(body.ptr, body.len);
    return map_set_pairs(&s->local_headers, headers);
}

static int32_t st_resume(void *user, int32_t stream_type) {
    (void)user;
    printf("resume %d\n", stream_type);
    return PWH_STATUS_OK;
}

static int32_t st_close(void *user, int32_t stream_type) {
    (void)user;
    printf("close %d\n", stream_type);
    return PWH_STATUS_OK;
}

static int32_t st_get_property(void *user, pwh_bytes path, pwh_buffer *out) {
    stream *s = user;
    if (path.len == strlen("request.path") && memcmp(path.ptr, "request.path", path.len) == 0) {
        const char *p = map_get(&s->request, ":path");
        if (!p) return PWH_STATUS_NOT_FOUND;
        return pwh_buffer_set(out, (const uint8_t *)p, strlen(p));
    }
    return PWH_STATUS_NOT_FOUND;
}

static void st_destroy(void *user) {
    stream *s = user;
    (*s->destroyed)++;
    map_clear(&s->request);
    map_clear(&s->request_trailers);
    map_clear(&s->response);
    map_clear(&s->response_trailers);
    map_clear(&s->local_headers);
    free(s->local_body);
    free(s);
}

static pwh_stream_vtable stream_vtable(stream *s) {
    pwh_stream_vtable vt = {
        .user_data = s,
        .get_header_map = st_get_header_map,
        .set_header_map = st_set_header_map,
        .add_header = st_add_header,
        .replace_header = st_replace_header,
        .remove_header = st_remove_header,
        .send_local_response = st_send_local_response,
        .resume = st_resume,
        .close = st_close,
        .get_property = st_get_property,
        .set_property = NULL, /* the host keeps what plugins set */
        .destroy = st_destroy,
    };
    return vt;
}

static stream *stream_new(int *destroyed) {
    stream *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->destroyed = destroyed;
    map_add_str(&s->request, ":method", "GET");
    map_add_str(&s->request, ":path", "/smoke?x=1");
    map_add_str(&s->request, ":authority", "example.com");
    map_add_str(&s->request, ":scheme", "http");
    map_add_str(&s->request, "user-agent", "c-smoke");
    return s;
}

/* ------------------------------------------------------------ the server */

typedef struct {
    int logs;
    int tick_armed;
    size_t tick_vm;
    uint32_t tick_root;
    uint32_t tick_ms;
} server;

static void sv_log(void *user, pwh_bytes plugin, int32_t level, pwh_bytes message) {
    server *sv = user;
    sv->logs++;
    printf("[log %.*s %s] %.*s\n", (int)plugin.len, (const char *)plugin.ptr, level_name(level), (int)message.len,
           (const char *)message.ptr);
}

static int32_t sv_log_level(void *user) {
    (void)user;
    return PWH_LOG_LEVEL_INFO;
}

static int32_t sv_dispatch_http_call(void *user, size_t vm_index, uint32_t root_context_id, uint32_t token,
                                     pwh_bytes upstream, pwh_bytes headers, pwh_bytes body, pwh_bytes trailers,
                                     uint32_t timeout_ms) {
    (void)user, (void)vm_index, (void)root_context_id, (void)token, (void)headers, (void)body, (void)trailers;
    printf("http call to %.*s refused (timeout %u ms): no network here\n", (int)upstream.len, (const char *)upstream.ptr,
           timeout_ms);
    return PWH_STATUS_INTERNAL_FAILURE;
}

static void sv_set_tick_period(void *user, size_t vm_index, uint32_t root_context_id, uint32_t period_ms) {
    server *sv = user;
    sv->tick_armed = period_ms != 0;
    sv->tick_vm = vm_index;
    sv->tick_root = root_context_id;
    sv->tick_ms = period_ms;
}

static void sv_notify_queue_ready(void *user, size_t vm_index, uint32_t root_context_id, uint32_t queue_id) {
    (void)user;
    printf("queue %u ready for root %zu/%u\n", queue_id, vm_index, root_context_id);
}

static int32_t sv_get_property(void *user, pwh_bytes path, pwh_buffer *out) {
    (void)user;
    if (path.len == strlen("node.id") && memcmp(path.ptr, "node.id", path.len) == 0)
        return pwh_buffer_set(out, (const uint8_t *)"c-smoke-node", strlen("c-smoke-node"));
    return PWH_STATUS_NOT_FOUND;
}

/* ------------------------------------------------------------ helpers */

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* ------------------------------------------------------------ transactions */

static void plain_request(pwh_vms *vms, pwh_buffer *err) {
    int destroyed = 0;
    stream *s = stream_new(&destroyed);
    pwh_stream_vtable vt = stream_vtable(s);
    uint32_t ctx = pwh_stream_create(vms, 0, &vt, err);
    CHECK(ctx != 0, pwh_buffer_cstr(err));
    if (ctx == 0) return;

    s->reenter = vms;
    int32_t v = pwh_on_request_headers(vms, 0, ctx, s->request.n, false, err);
    printf("request headers: %s\n", verdict_name(v));
    CHECK(v == PWH_VERDICT_CONTINUE, pwh_buffer_cstr(err));
    printf("re-entrant call from a callback: %d: %s\n", s->reentered_rc, s->reentered_error);
    CHECK(s->reentered_rc == -1, "a callback cannot call into its own VMs");

    v = pwh_on_request_body(vms, 0, ctx, bytes_of("hello"), true, err);
    printf("request body: %s\n", verdict_name(v));
    CHECK(v == PWH_VERDICT_CONTINUE, pwh_buffer_cstr(err));
    pwh_buffer *body = pwh_buffer_new();
    int32_t rc = pwh_take_body(vms, 0, ctx, PWH_STREAM_TYPE_HTTP_REQUEST, body, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    printf("request body passed on: %s\n", pwh_buffer_cstr(body));
    pwh_buffer_free(body);

    map_add_str(&s->response, ":status", "200");
    map_add_str(&s->response, "content-type", "text/plain");
    v = pwh_on_response_headers(vms, 0, ctx, s->response.n, true, err);
    printf("response headers: %s\n", verdict_name(v));
    CHECK(v == PWH_VERDICT_CONTINUE, pwh_buffer_cstr(err));
    const char *tag = map_get(&s->response, "x-proxy-wasm");
    printf("response header x-proxy-wasm: %s\n", tag ? tag : "(none)");
    CHECK(tag && strcmp(tag, "c-smoke") == 0, "the filter adds x-proxy-wasm: <tag>");

    rc = pwh_finish_stream(vms, 0, ctx, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    printf("stream finished: destroy called %d time(s)\n", destroyed);
    CHECK(destroyed == 1, "destroy runs exactly once");

    /* The context is gone: using it again is an error, not a crash. */
    v = pwh_on_request_headers(vms, 0, ctx, 0, true, err);
    printf("finished context: %s: %s\n", verdict_name(v), pwh_buffer_cstr(err));
    CHECK(v == PWH_VERDICT_ERROR, "a finished context is unknown");
}

static void local_response_request(pwh_vms *vms, pwh_buffer *err) {
    int destroyed = 0;
    stream *s = stream_new(&destroyed);
    map_add_str(&s->request, "x-pw-test", "local");
    pwh_stream_vtable vt = stream_vtable(s);
    uint32_t ctx = pwh_stream_create(vms, 0, &vt, err);
    CHECK(ctx != 0, pwh_buffer_cstr(err));
    if (ctx == 0) return;

    int32_t v = pwh_on_request_headers(vms, 0, ctx, s->request.n, true, err);
    printf("local request headers: %s\n", verdict_name(v));
    CHECK(v == PWH_VERDICT_STOP, pwh_buffer_cstr(err));
    const char *tag = map_get(&s->local_headers, "x-proxy-wasm");
    printf("local response: %d %s (x-proxy-wasm: %s)\n", s->local_status, s->local_body ? s->local_body : "",
           tag ? tag : "(none)");
    CHECK(s->local_status == 403, "x-pw-test: local answers 403");

    int32_t rc = pwh_finish_stream(vms, 0, ctx, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    printf("local stream finished: destroy called %d time(s)\n", destroyed);
    CHECK(destroyed == 1, "destroy runs exactly once");
}

/* The plugin keeps the context after on_done (x-pw-test: defer-done) until its
 * next tick calls proxy_done: the C stream is destroyed by pwh_finish_stream all
 * the same, and the plugin's on_log runs later without it. */
static void deferred_done_request(pwh_vms *vms, pwh_buffer *err) {
    int destroyed = 0;
    stream *s = stream_new(&destroyed);
    map_add_str(&s->request, "x-pw-test", "defer-done");
    pwh_stream_vtable vt = stream_vtable(s);
    uint32_t ctx = pwh_stream_create(vms, 0, &vt, err);
    CHECK(ctx != 0, pwh_buffer_cstr(err));
    if (ctx == 0) return;
    int32_t v = pwh_on_request_headers(vms, 0, ctx, s->request.n, true, err);
    CHECK(v == PWH_VERDICT_CONTINUE, pwh_buffer_cstr(err));
    map_add_str(&s->response, ":status", "200");
    v = pwh_on_response_headers(vms, 0, ctx, s->response.n, true, err);
    CHECK(v == PWH_VERDICT_CONTINUE, pwh_buffer_cstr(err));
    int32_t rc = pwh_finish_stream(vms, 0, ctx, err);
    printf("deferred finish: %d, destroy called %d time(s)\n", rc, destroyed);
    CHECK(rc == 1 && destroyed == 1, "on_done false keeps the context but releases the stream");
    rc = pwh_on_tick(vms, 0, err);
    printf("tick after deferred finish: %d, destroy called %d time(s)\n", rc, destroyed);
    CHECK(rc == 0 && destroyed == 1, "proxy_done does not destroy twice");
}

/* Reads a shared-data key through the filter (x-pw-test: shared-get). */
static void shared_get(pwh_vms *vms, pwh_buffer *err, const char *key) {
    int destroyed = 0;
    stream *s = stream_new(&destroyed);
    map_add_str(&s->request, "x-pw-test", "shared-get");
    map_add_str(&s->request, "x-pw-key", key);
    pwh_stream_vtable vt = stream_vtable(s);
    uint32_t ctx = pwh_stream_create(vms, 0, &vt, err);
    CHECK(ctx != 0, pwh_buffer_cstr(err));
    if (ctx == 0) return;
    int32_t v = pwh_on_request_headers(vms, 0, ctx, s->request.n, true, err);
    CHECK(v == PWH_VERDICT_STOP, pwh_buffer_cstr(err));
    printf("shared %s: %d %s\n", key, s->local_status, s->local_body ? s->local_body : "");
    CHECK(pwh_finish_stream(vms, 0, ctx, err) == 0, pwh_buffer_cstr(err));
}

static void bad_stream_create(pwh_vms *vms, pwh_buffer *err) {
    int destroyed = 0;
    stream *s = stream_new(&destroyed);
    pwh_stream_vtable vt = stream_vtable(s);
    uint32_t ctx = pwh_stream_create(vms, 7, &vt, err);
    printf("bad plugin index: context %u, destroy called %d time(s): %s\n", ctx, destroyed, pwh_buffer_cstr(err));
    CHECK(ctx == 0 && destroyed == 1, "a failed create destroys the stream once");
}

/* ------------------------------------------------------------ the chain */

/* The server side of one transaction's chain: what the chain asked of it. */
typedef struct {
    int armed;
    uint32_t timeout_ms;
    int cancelled;
    int wakes;
} chain_server;

static void ch_arm_pause_timer(void *user, uint32_t timeout_ms) {
    chain_server *c = user;
    c->armed++;
    c->timeout_ms = timeout_ms;
}

static void ch_cancel_pause_timer(void *user) {
    chain_server *c = user;
    c->cancelled++;
}

static void ch_schedule_resume(void *user) {
    /* A real server posts an event that calls pwh_chain_resume later. */
    chain_server *c = user;
    c->wakes++;
}

static void ch_log(void *user, pwh_bytes plugin, int32_t level, pwh_bytes message) {
    (void)user;
    printf("[chain %.*s %s] %.*s\n", (int)plugin.len, (const char *)plugin.ptr, level_name(level), (int)message.len,
           (const char *)message.ptr);
}

static const char *flow_name(int32_t f) {
    switch (f) {
    case PWH_FLOW_CONTINUE: return "CONTINUE";
    case PWH_FLOW_BUFFERED: return "BUFFERED";
    case PWH_FLOW_WAIT: return "WAIT";
    case PWH_FLOW_RESPOND: return "RESPOND";
    case PWH_FLOW_ABORT: return "ABORT";
    case PWH_FLOW_RESET: return "RESET";
    case PWH_FLOW_NOTHING: return "NOTHING";
    default: return "?";
    }
}

/* A chain through plugin 0 for a request carrying `x-pw-test: <test>`. */
static pwh_chain *chain_start(pwh_vms *vms, pwh_buffer *err, const char *test, int *destroyed, stream **out,
                              chain_server *cs) {
    stream *s = stream_new(destroyed);
    map_add_str(&s->request, "x-pw-test", test);
    pwh_chain_vtable cvt = {
        .user_data = cs,
        .arm_pause_timer = ch_arm_pause_timer,
        .cancel_pause_timer = ch_cancel_pause_timer,
        .schedule_resume = ch_schedule_resume,
        .log = ch_log,
    };
    pwh_stream_vtable vt = stream_vtable(s);
    size_t plugins[] = {0};
    pwh_chain *chain = pwh_chain_new(vms, plugins, 1, &cvt, &vt, err);
    CHECK(chain != NULL, pwh_buffer_cstr(err));
    *out = s;
    return chain;
}

/* Headers and a body edited by the plugin, which buffers the body (Pause) until its end. */
static void chain_request(pwh_vms *vms, pwh_buffer *err) {
    int destroyed = 0;
    stream *s;
    chain_server cs = {0};
    pwh_chain *chain = chain_start(vms, err, "req-body-upper", &destroyed, &s, &cs);
    if (!chain) return;
    pwh_chain_step step;
    int32_t rc = pwh_chain_on_request_headers(chain, s->request.n, false, &step, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    printf("chain request headers: %s\n", flow_name(step.flow));
    CHECK(step.flow == PWH_FLOW_CONTINUE, "the headers go on");

    pwh_buffer *out = pwh_buffer_new();
    rc = pwh_chain_on_request_body(chain, bytes_of("hello "), false, out, &step, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    printf("chain request body, first chunk: %s\n", flow_name(step.flow));
    CHECK(step.flow == PWH_FLOW_BUFFERED, "the plugin buffers until the end");
    rc = pwh_chain_on_request_body(chain, bytes_of("world"), true, out, &step, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    printf("chain request body, last chunk: %s %.*s (end of stream: %d)\n", flow_name(step.flow),
           (int)pwh_buffer_len(out), (const char *)pwh_buffer_data(out), step.end_of_stream);
    CHECK(step.flow == PWH_FLOW_CONTINUE && step.end_of_stream, "the edited body goes on, whole");
    pwh_buffer_free(out);

    map_add_str(&s->response, ":status", "200");
    rc = pwh_chain_on_response_headers(chain, s->response.n, true, &step, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    const char *tag = map_get(&s->response, "x-proxy-wasm");
    printf("chain response headers: %s (x-proxy-wasm: %s)\n", flow_name(step.flow), tag ? tag : "(none)");
    pwh_chain_free(chain);
    printf("chain freed: destroy called %d time(s)\n", destroyed);
    CHECK(destroyed == 1, "destroy runs exactly once");
}

/* The plugin pauses the request until its next tick: the tick asks the server for a
 * wake-up, and pwh_chain_resume goes on. */
static void chain_paused_request(pwh_vms *vms, pwh_buffer *err) {
    int destroyed = 0;
    stream *s;
    chain_server cs = {0};
    pwh_chain *chain = chain_start(vms, err, "tick-resume", &destroyed, &s, &cs);
    if (!chain) return;
    pwh_chain_step step;
    int32_t rc = pwh_chain_on_request_headers(chain, s->request.n, true, &step, err);
    CHECK(rc == 0 && step.flow == PWH_FLOW_WAIT, pwh_buffer_cstr(err));
    printf("chain paused: %s, pause timer %u ms\n", flow_name(step.flow), cs.timeout_ms);
    rc = pwh_on_tick(vms, 0, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    printf("tick: %d wake-up(s) asked for\n", cs.wakes);
    pwh_buffer *out = pwh_buffer_new();
    rc = pwh_chain_resume(chain, out, &step, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    const char *by = map_get(&s->request, "x-pw-resumed-by");
    printf("chain resumed: %s in phase %d (x-pw-resumed-by: %s), timer cancelled %d time(s)\n", flow_name(step.flow),
           step.phase, by ? by : "(none)", cs.cancelled);
    CHECK(step.flow == PWH_FLOW_CONTINUE && step.phase == PWH_PHASE_REQUEST_HEADERS, "the request goes on");
    rc = pwh_chain_resume(chain, out, &step, err);
    printf("spurious wake-up: %s\n", flow_name(step.flow));
    CHECK(rc == 0 && step.flow == PWH_FLOW_NOTHING, "a wake-up with nothing to do is harmless");
    pwh_buffer_free(out);
    pwh_chain_free(chain);
}

/* A local response from the request headers. */
static void chain_local_request(pwh_vms *vms, pwh_buffer *err) {
    int destroyed = 0;
    stream *s;
    chain_server cs = {0};
    pwh_chain *chain = chain_start(vms, err, "local", &destroyed, &s, &cs);
    if (!chain) return;
    pwh_chain_step step;
    int32_t rc = pwh_chain_on_request_headers(chain, s->request.n, true, &step, err);
    CHECK(rc == 0 && step.flow == PWH_FLOW_RESPOND, pwh_buffer_cstr(err));
    uint32_t status = 0;
    pwh_buffer *headers = pwh_buffer_new(), *body = pwh_buffer_new();
    rc = pwh_chain_response(chain, &status, headers, body, err);
    CHECK(rc == 0, pwh_buffer_cstr(err));
    printf("chain local response: %s %u %s (%lld header(s))\n", flow_name(step.flow), status, pwh_buffer_cstr(body),
           (long long)pwh_pairs_count((pwh_bytes){pwh_buffer_data(headers), pwh_buffer_len(headers)}));
    pwh_buffer_free(headers);
    pwh_buffer_free(body);
    pwh_chain_free(chain);
    CHECK(destroyed == 1, "destroy runs exactly once");
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <rust_sdk_filter.wasm>\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("libproxy_wasm_host %s\n", pwh_version());

    /* Relative code paths in YAML are relative to the YAML file: pass an absolute one. */
    char wasm[PATH_MAX];
    if (!realpath(argv[1], wasm)) {
        perror(argv[1]);
        return 2;
    }

    const char *tmp = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/pwh-smoke-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    char yaml[600], bad_yaml[600], text[PATH_MAX + 512];
    snprintf(yaml, sizeof yaml, "%s/plugins.yaml", dir);
    snprintf(bad_yaml, sizeof bad_yaml, "%s/malformed.yaml", dir);
    int len = snprintf(text, sizeof text,
                       "config:\n"
                       "  name: \"c-smoke\"\n"
                       "  configuration: '{\"tag\": \"c-smoke\", \"tick_ms\": 1000}'\n"
                       "  vm_config:\n"
                       "    vm_id: \"c-smoke-vm\"\n"
                       "    code:\n"
                       "      local:\n"
                       "        filename: \"%s\"\n",
                       wasm);
    if (len < 0 || (size_t)len >= sizeof text) {
        fprintf(stderr, "path too long\n");
        return 2;
    }
    if (write_file(yaml, text) != 0 || write_file(bad_yaml, "config:\n  name: [unclosed\n") != 0) {
        perror("writing the YAML files");
        return 2;
    }

    pwh_buffer *err = pwh_buffer_new();

    /* A malformed file: the error names it. */
    const char *bad_paths[] = {bad_yaml};
    pwh_plugins *bad = pwh_plugins_load(bad_paths, 1, err);
    printf("malformed config: %s\n", pwh_buffer_cstr(err));
    CHECK(bad == NULL, "a malformed file does not load");
    CHECK(strstr(pwh_buffer_cstr(err), bad_yaml) != NULL, "the error names the file");
    pwh_plugins_free(bad);

    const char *paths[] = {yaml};
    pwh_plugins *plugins = pwh_plugins_load(paths, 1, err);
    if (!plugins) {
        fprintf(stderr, "pwh_plugins_load: %s\n", pwh_buffer_cstr(err));
        return 1;
    }
    pwh_bytes name = pwh_plugins_name(plugins, 0);
    printf("plugins: %zu, first: %.*s, fail_open: %d\n", pwh_plugins_count(plugins), (int)name.len,
           (const char *)name.ptr, pwh_plugins_fail_open(plugins, 0));
    CHECK(pwh_plugins_count(plugins) == 1, "one plugin");

    server sv = {0};
    pwh_server_vtable svt = {
        .user_data = &sv,
        .log = sv_log,
        .log_level = sv_log_level,
        .dispatch_http_call = sv_dispatch_http_call,
        .cancel_http_call = NULL,
        .set_tick_period = sv_set_tick_period,
        .notify_queue_ready = sv_notify_queue_ready,
        .get_property = sv_get_property,
        .call_foreign_function = NULL,
    };
    pwh_vms *vms = pwh_vms_start(plugins, &svt, err);
    if (!vms) {
        fprintf(stderr, "pwh_vms_start: %s\n", pwh_buffer_cstr(err));
        return 1;
    }
    /* The VMs no longer need the plugin list. */
    pwh_plugins_free(plugins);
    printf("vms started (%d log line(s) so far)\n", sv.logs);
    CHECK(sv.logs > 0, "the plugin logs while it is configured");

    /* The plugin armed a timer from its configure step: route the tick back. */
    CHECK(sv.tick_armed && sv.tick_ms == 1000, "tick_ms 1000 arms the timer");
    size_t plugin_index = 99;
    int32_t rc = pwh_vms_find_plugin(vms, sv.tick_vm, sv.tick_root, &plugin_index);
    CHECK(rc == PWH_STATUS_OK && plugin_index == 0, "the tick's root is plugin 0");
    rc = pwh_on_tick(vms, plugin_index, err);
    printf("tick (%u ms) delivered to plugin %zu: %d\n", sv.tick_ms, plugin_index, rc);
    CHECK(rc == 0, pwh_buffer_cstr(err));

    plain_request(vms, err);
    local_response_request(vms, err);
    deferred_done_request(vms, err);
    shared_get(vms, err, "done.deferred");
    bad_stream_create(vms, err);
    chain_request(vms, err);
    chain_paused_request(vms, err);
    chain_local_request(vms, err);

    /* NULL handles are errors, not crashes. */
    rc = pwh_on_tick(NULL, 0, err);
    printf("NULL vms: %d: %s\n", rc, pwh_buffer_cstr(err));
    CHECK(rc == -1, "NULL vms");

    pwh_vms_free(vms);
    printf("vms freed\n");
    pwh_buffer_free(err);

    unlink(yaml);
    unlink(bad_yaml);
    rmdir(dir);

    if (failures) {
        printf("smoke: %d check(s) FAILED\n", failures);
        return 1;
    }
    printf("smoke: OK\n");
    return 0;
}
