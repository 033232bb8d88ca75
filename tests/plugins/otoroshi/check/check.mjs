// Checks the built Otoroshi test plugins (build/plugins/) against an independent Extism
// host, the Extism JavaScript SDK, with Otoroshi-shaped contexts: the protocol of
// ../README.md, case by case, for both PDKs. Not part of `make test` (our own host's
// end-to-end tests are); run it after changing a plugin:
//   scripts/build-plugins.sh otoroshi && cd tests/plugins/otoroshi/check && npm ci && node check.mjs
// Prints "<n> passed, <m> failed" and exits non-zero on a failure.

import createPlugin from '@extism/extism';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const plugins = path.resolve(here, '../../../../build/plugins');
let passed = 0;
let failed = 0;

function check(name, cond, detail) {
  if (cond) passed++;
  else {
    failed++;
    console.log(`FAIL ${name}${detail === undefined ? '' : ': ' + detail}`);
  }
}

// ---- Otoroshi host functions (module `env`), in memory, for the host modules.
const logs = [];
const maps = { plugin: new Map(), global: new Map() };
const store = new Map();
const text = (cc, ptr, len) => {
  const v = cc.read(ptr);
  return v === null ? null : new TextDecoder().decode(v.bytes().slice(0, Number(len)));
};
const json = (cc, ptr, len) => JSON.parse(text(cc, ptr, len));
const env = {
  proxy_log: (cc, level, ptr, len) => { logs.push(`proxy_log[${level}] ${text(cc, ptr, len)}`); return 0; },
  proxy_log_event: (cc, ptr, len) => { logs.push(`proxy_log_event ${text(cc, ptr, len)}`); return 0n; },
  proxy_http_call: (cc, ptr, len) => {
    logs.push(`proxy_http_call ${text(cc, ptr, len)}`);
    return cc.store(JSON.stringify({ status: 201, headers: { a: 'b' }, body_base64: Buffer.from('pong').toString('base64') }));
  },
};
for (const scope of ['plugin', 'global']) {
  const m = maps[scope];
  env[`proxy_${scope}_map_set`] = (cc, p, l) => { const d = json(cc, p, l); m.set(d.key, d.value); return 0n; };
  // The JS SDK mishandles zero-length host blocks: answer an absent key with handle 0.
  env[`proxy_${scope}_map_get`] = (cc, p, l) => (m.has(text(cc, p, l)) ? cc.store(m.get(text(cc, p, l))) : 0n);
  env[`proxy_${scope}_map_del`] = (cc, p, l) => { m.delete(text(cc, p, l)); return cc.store('StatusOK'); };
  env[`proxy_${scope}_map`] = (cc) =>
    cc.store(JSON.stringify(Object.fromEntries([...m].map(([k, v]) => [k, Buffer.from(v).toString('base64')]))));
}
for (const pre of ['', 'plugin_']) {
  const key = (k) => `otoroshi:${pre ? 'wasm:check:' : ''}${k}`;
  const value = (d) => d.value ?? Buffer.from(d.value_base64, 'base64').toString();
  env[`proxy_${pre}datastore_set`] = (cc, p, l) => { const d = json(cc, p, l); store.set(key(d.key), value(d)); return 1n; };
  env[`proxy_${pre}datastore_setnx`] = (cc, p, l) => {
    const d = json(cc, p, l);
    if (store.has(key(d.key))) return 0n;
    store.set(key(d.key), value(d));
    return 1n;
  };
  env[`proxy_${pre}datastore_get`] = (cc, p, l) => (store.has(key(text(cc, p, l))) ? cc.store(store.get(key(text(cc, p, l)))) : 0n);
  env[`proxy_${pre}datastore_exists`] = (cc, p, l) => (store.has(key(text(cc, p, l))) ? 1n : 0n);
  env[`proxy_${pre}datastore_pttl`] = () => -1n;
  env[`proxy_${pre}datastore_del`] = (cc, p, l) => BigInt(json(cc, p, l).keys.filter((k) => store.delete(key(k))).length);
  env[`proxy_${pre}datastore_incrby`] = (cc, p, l) => {
    const d = json(cc, p, l);
    const v = BigInt(store.get(key(d.key)) ?? 0) + BigInt(d.incr);
    store.set(key(d.key), String(v));
    return v;
  };
  env[`proxy_${pre}datastore_pexpire`] = () => 1n;
  env[`proxy_${pre}datastore_keys`] = (cc) => cc.store(JSON.stringify([...store.keys()]));
  env[`proxy_${pre}datastore_all_matching`] = (cc) => cc.store(JSON.stringify([...store.values()].map((v) => Buffer.from(v).toString('base64'))));
}
for (const f of ['proxy_state', 'proxy_global_config', 'proxy_config', 'proxy_cluster_state', 'proxy_get_attrs', 'proxy_clear_attrs']) {
  env[f] = (cc) => cc.store('{}');
}
for (const f of ['proxy_state_value', 'proxy_cluster_state_value', 'proxy_set_attr', 'proxy_del_attr']) env[f] = (cc) => cc.store('{}');
env.proxy_get_attr = (cc) => cc.store('null');

const quiet = { ...console, trace() {}, debug(...a) { logs.push(a.join(' ')); }, info(...a) { logs.push(a.join(' ')); }, warn(...a) { logs.push(a.join(' ')); }, error(...a) { logs.push(a.join(' ')); }, log() {} };

async function load(file, config = {}) {
  return createPlugin({ wasm: [{ data: readFileSync(path.join(plugins, file)) }], config }, {
    config, useWasi: false, runInWorker: false, functions: { env }, logger: quiet, allowedHosts: ['*'],
  });
}

async function call(plugin, fn, input) {
  try {
    const out = await plugin.call(fn, typeof input === 'string' ? input : JSON.stringify(input));
    const t = out === null ? null : out.text();
    let j = null;
    try { j = JSON.parse(t); } catch { /* not JSON */ }
    return { ok: true, text: t, json: j };
  } catch (e) {
    return { ok: false, error: String(e.message || e) };
  }
}

// ---- Otoroshi-shaped contexts (next/plugins/api.scala wasmJson).
const signed = (s) => [...Buffer.from(s)].map((b) => (b > 127 ? b - 256 : b));
const request = (headers, extra = {}) => ({
  id: 1, method: 'GET', headers, cookies: [], tls: false, uri: '/foo/bar?x=1', query: { x: ['1'] }, path: '/foo/bar',
  version: 'HTTP/1.1', has_body: false, remote: '127.0.0.1', client_cert_chain: null, path_params: {}, ...extra,
});
const outgoing = (headers) => ({
  url: 'http://backend:8081/foo/bar?x=1', method: 'GET', headers, query: { x: ['1'] }, version: 'HTTP/1.1',
  client_cert_chain: null, backend: null, cookies: [],
});
const cfg = (c = {}) => ({ source: { kind: 'File', path: 'x.wasm', opts: {} }, memoryPages: 50, functionName: null, config: c });
const common = (h, c) => ({ snowflake: 's1', apikey: null, user: null, request: request(h), config: cfg(c), global_config: {}, attrs: {}, route: { id: 'r1' } });
const ctx = {
  pre_route: (h, c) => { const x = common(h, c); delete x.apikey; delete x.user; return x; },
  access: (h, c) => common(h, c),
  transform_request: (h, c, body) => ({ ...common(h, c), raw_request: outgoing(h), otoroshi_request: outgoing(h), request_body_bytes: body === undefined ? null : signed(body) }),
  transform_response: (h, c, body) => ({
    ...common(h, c), raw_response: { status: 200, headers: { 'content-type': 'text/plain' }, cookies: [] },
    otoroshi_response: { status: 200, headers: { 'content-type': 'text/plain', 'x-up': '1' }, cookies: [] },
    response_body_bytes: body === undefined ? null : signed(body),
  }),
  matches_route: (h, c, p) => ({ snowflake: 's1', route: { id: 'r1' }, request: request(h, p ? { path: p } : {}), config: cfg(c), attrs: {} }),
  find_route: (h, c, p) => ({ request: request(h, p ? { path: p } : {}), config: cfg(c), attrs: {} }),
  sink_matches: (h, c) => ({ snowflake: 's1', request: request(h), config: cfg(c), attrs: {}, origin: 'NgReverseProxy', status: 404, message: 'route not found' }),
  sink_handle: (h, c, body) => ({ snowflake: 's1', request: request(h), config: cfg(c), attrs: {}, origin: 'NgReverseProxy', status: 404, message: 'route not found', body_bytes: signed(body || '') }),
  call_backend: (h, c, body) => {
    const x = common(h, c);
    return { ...x, backend: { id: 't' }, raw_request: x.request, request: outgoing(h), request_body_bytes: body === undefined ? null : signed(body) };
  },
  handle_request: (h, c, body) => ({ request: { ...request(h), ...(body === undefined ? {} : { request_body_bytes: signed(body) }) } }),
  job: () => ({ snowflake: 's1', attrs: {}, global_config: {} }),
};
const bodyOf = (o) => o.body_str ?? o.body;

// ---- the step plugins
for (const [file, tag] of [['otoroshi_as.wasm', 'assemblyscript'], ['otoroshi_rust.wasm', 'rust']]) {
  const p = await load(file, { http_url: 'http://127.0.0.1:9/x' });
  const n = (s) => `${file} ${s}`;
  let r;
  r = await call(p, 'pre_route', ctx.pre_route({}));
  check(n('pre_route passes'), r.ok && r.json.error === false, r.text);
  r = await call(p, 'pre_route', ctx.pre_route({ 'x-pre-route': 'error', 'x-status': '401' }));
  check(n('pre_route error form'), r.ok && r.json.error === true && r.json.status === 401 && r.json.body_str === 'pre_route refused /foo/bar' && r.json.headers['x-otoroshi-wasm'] === tag, r.text);
  r = await call(p, 'pre_route', ctx.pre_route({ 'x-pre-route': 'error', 'x-body-form': 'bytes,base64,json,str' }));
  check(n('pre_route all forms'), r.ok && r.json.body_str === 'str:pre_route refused /foo/bar' && r.json.status === undefined
    && Buffer.from(r.json.body_base64, 'base64').toString() === 'base64:pre_route refused /foo/bar'
    && Buffer.from(r.json.body_bytes.map((b) => b & 255)).toString() === 'bytes:pre_route refused /foo/bar' && r.json.body_json.form === 'json', r.text);
  r = await call(p, 'access', ctx.access({}));
  check(n('access allows'), r.ok && r.json.result === true, r.text);
  r = await call(p, 'access', ctx.access({ 'X-Deny': 'nope', 'x-deny-status': '401' }));
  check(n('access denies'), r.ok && r.json.result === false && r.json.error.message === `denied by ${tag}: nope` && r.json.error.status === 401, r.text);
  r = await call(p, 'access', ctx.access({ 'x-deny': 'bare' }));
  check(n('access bare'), r.ok && r.json.result === false && r.json.error === undefined, r.text);
  r = await call(p, 'transform_request', ctx.transform_request({ a: '1', 'x-remove-header': 'A', 'x-set-path': '/new', 'x-set-method': 'PUT', 'x-add-cookie': 'c=v' }, {}, 'héllo'));
  check(n('transform_request'), r.ok && r.json.headers.a === undefined && r.json.headers['x-transformed-by'] === `${tag} transform_request`
    && r.json.method === 'PUT' && r.json.url === 'http://backend:8081/new' && r.json.cookies[0].name === 'c'
    && r.json.body_str === `transformed by ${tag}: héllo`, r.text);
  r = await call(p, 'transform_request', ctx.transform_request({ a: '1' }));
  check(n('transform_request keeps an absent body'), r.ok && !('body_str' in r.json) && r.json.headers.a === '1', r.text);
  r = await call(p, 'transform_request', ctx.transform_request({ 'x-transform-request': 'error' }));
  check(n('transform_request error form'), r.ok && r.json.error === true && r.json.status === undefined, r.text);
  r = await call(p, 'transform_response', ctx.transform_response({ 'x-response-status': '201', 'x-response-body-form': 'bytes' }, {}, 'up'));
  check(n('transform_response'), r.ok && r.json.status === 201 && r.json.headers['x-origin-status'] === '200' && r.json.headers['x-up'] === '1'
    && Buffer.from(r.json.body_bytes.map((b) => b & 255)).toString() === `transformed by ${tag}: up`, r.text);
  r = await call(p, 'transform_response', ctx.transform_response({}));
  check(n('transform_response keeps status and body'), r.ok && r.json.status === 200 && !('body_str' in r.json), r.text);
  r = await call(p, 'matches_route', ctx.matches_route({}));
  check(n('matches_route no'), r.ok && r.json.result === false, r.text);
  r = await call(p, 'matches_route', ctx.matches_route({}, {}, '/match/x'));
  check(n('matches_route yes'), r.ok && r.json.result === true, r.text);
  r = await call(p, 'matches_route', ctx.matches_route({ 'x-match': 'true' }));
  check(n('matches_route forced'), r.ok && r.json.result === true, r.text);
  r = await call(p, 'find_route', ctx.find_route({}));
  check(n('find_route none'), r.ok && r.json.route === null, r.text);
  r = await call(p, 'find_route', ctx.find_route({}, { route_target: '127.0.0.1:9999' }, '/routed/abc/def'));
  check(n('find_route'), r.ok && r.json.route.id === 'abc' && r.json.route.backend.targets[0].port === 9999 && r.json.path_params.id === 'abc' && r.json.no_more_segments === false, r.text);
  r = await call(p, 'sink_matches', ctx.sink_matches({}));
  check(n('sink_matches'), r.ok && r.json.result === true, r.text);
  r = await call(p, 'sink_matches', ctx.sink_matches({ 'x-sink': 'no' }));
  check(n('sink_matches no'), r.ok && r.json.result === false, r.text);
  r = await call(p, 'sink_handle', ctx.sink_handle({}, {}, 'abc'));
  check(n('sink_handle'), r.ok && r.json.status === 404 && r.json.body_json.body_length === 3 && r.json.body_json.origin === 'NgReverseProxy', r.text);
  r = await call(p, 'call_backend', ctx.call_backend({}, {}, 'payload'));
  check(n('call_backend'), r.ok && r.json.status === 200 && r.json.body_str === `${tag} call_backend: GET /foo/bar body=payload`, r.text);
  r = await call(p, 'call_backend', ctx.call_backend({ 'x-backend': 'delegate' }));
  check(n('call_backend delegates'), r.ok && r.json.delegates_call === true, r.text);
  r = await call(p, 'call_backend', ctx.call_backend({ 'x-backend': 'vars' }));
  const r2 = await call(p, 'call_backend', ctx.call_backend({ 'x-backend': 'vars' }));
  check(n('vars count'), r.ok && r2.ok && r.json.headers['x-var-value'] === '1' && r2.json.headers['x-var-value'] === '2', r2.text);
  r = await call(p, 'call_backend', ctx.call_backend({ 'x-backend': 'vars-delete' }));
  check(n('vars delete'), r.ok && JSON.parse(r.json.body_str).after_delete === null, r.text);
  r = await call(p, 'call_backend', ctx.call_backend({ 'x-backend': 'config', 'x-config-key': 'http_url' }, { http_url: 'ctx' }));
  check(n('config_get then context'), r.ok && JSON.parse(r.json.body_str).config_get === 'http://127.0.0.1:9/x' && JSON.parse(r.json.body_str).context === 'ctx', r.text);
  r = await call(p, 'call_backend', ctx.call_backend({ 'x-backend': 'http' }));
  check(n('http_request (the JS SDK refuses it in-process: status 0)'), r.ok && JSON.parse(r.json.body_str).url === 'http://127.0.0.1:9/x', r.text);
  r = await call(p, 'handle_request', ctx.handle_request({ 'x-add-cookie': 'k=v' }, {}, 'b'));
  check(n('handle_request'), r.ok && r.json.body === `${tag} handle_request: GET /foo/bar body=b` && r.json.cookies[0].value === 'v', r.text);
  for (const step of ['job_start', 'job_run', 'job_stop']) {
    r = await call(p, step, ctx.job());
    check(n(step), r.ok && r.text === '{}', r.text);
  }
  r = await call(p, 'job_run', '');
  check(n('job_run with no input'), r.ok, r.error);
  for (const step of Object.keys(ctx).filter((s) => s !== 'job')) {
    r = await call(p, step, ctx[step]({ 'x-check-context': '1' }, {}, 'b'));
    check(n(`${step} context complete`), r.ok, r.error);
  }
  const partial = ctx.access({ 'x-check-context': '1' });
  delete partial.route;
  delete partial.request.remote;
  r = await call(p, 'access', partial);
  check(n('context check names missing fields'), !r.ok && r.error.includes('route, request.remote'), r.error);
  r = await call(p, 'access', ctx.access({ 'x-fail': 'access' }));
  check(n('x-fail error'), !r.ok && r.error.includes('forced failure in access'), r.error);
  r = await call(p, 'access', ctx.access({ 'x-fail': '*', 'x-fail-mode': 'error-zero' }));
  check(n('x-fail error-zero'), !r.ok && r.error.includes('returned 0'), r.error);
  r = await call(p, 'access', ctx.access({ 'x-fail': 'access', 'x-fail-mode': 'trap' }));
  check(n('x-fail trap'), !r.ok, r.text);
  r = await call(p, 'access', ctx.access({ 'x-fail': 'access', 'x-fail-mode': 'garbage' }));
  check(n('x-fail garbage'), r.ok && r.json === null, r.text);
  r = await call(p, 'access', 'not json');
  check(n('bad input'), !r.ok && r.error.includes('input is not a JSON object'), r.error);
  r = await call(p, 'access', ctx.access({}));
  check(n('still works after failures'), r.ok && r.json.result === true, r.text);
}

// ---- the host-function plugins
for (const file of ['otoroshi_as_host.wasm', 'otoroshi_rust_host.wasm']) {
  const p = await load(file, { http_url: 'http://127.0.0.1:9/x' });
  const n = (s) => `${file} ${s}`;
  const report = async (h) => {
    const r = await call(p, 'call_backend', ctx.call_backend(h));
    return r.ok ? JSON.parse(r.json.body_str) : { error: r.error };
  };
  maps.plugin.clear();
  store.clear();
  let x = await report({ 'x-host': 'log' });
  check(n('log'), x.proxy_log === 0 && logs.some((l) => l.startsWith('proxy_log_event')), JSON.stringify(x));
  x = await report({ 'x-host': 'http', 'x-http-method': 'POST' });
  check(n('proxy_http_call'), x.call.status === 201 && x.body === 'pong' && logs.some((l) => l.includes('"body_str":"ping from')), JSON.stringify(x));
  await report({ 'x-host': 'plugin-map' });
  x = await report({ 'x-host': 'plugin-map' });
  check(n('plugin map incr'), x.result === 2 && maps.plugin.get('counter') === '2', JSON.stringify(x));
  x = await report({ 'x-host': 'global-map', 'x-op': 'get', 'x-key': 'absent' });
  check(n('global map absent'), x.result === null, JSON.stringify(x));
  x = await report({ 'x-host': 'plugin-datastore', 'x-op': 'set', 'x-key': 'k', 'x-value': '42', 'x-value-base64': '1' });
  check(n('datastore set (value_base64)'), x.result === 1 && store.get('otoroshi:wasm:check:k') === '42', JSON.stringify(x));
  x = await report({ 'x-host': 'plugin-datastore', 'x-op': 'get', 'x-key': 'k' });
  check(n('datastore get'), x.result === '42', JSON.stringify(x));
  x = await report({ 'x-host': 'datastore', 'x-incr': '5' });
  check(n('datastore incrby'), x.result === 5, JSON.stringify(x));
  x = await report({ 'x-host': 'plugin-datastore', 'x-op': 'keys' });
  check(n('datastore keys'), Array.isArray(x.result), JSON.stringify(x));
  x = await report({ 'x-host': 'plugin-datastore', 'x-op': 'del', 'x-key': 'k' });
  check(n('datastore del'), x.result === 1, JSON.stringify(x));
  x = await report({ 'x-host': 'state' });
  check(n('state'), x.proxy_state === '{}' && x.proxy_cluster_state_value === '{}', JSON.stringify(x));
  x = await report({ 'x-host': 'attrs' });
  check(n('attrs'), x.proxy_get_attr === 'null', JSON.stringify(x));
  const r = await call(p, 'job_run', ctx.job());
  check(n('job_run'), r.ok && store.get('otoroshi:wasm:check:job.runs') === '1' && maps.plugin.get('job.last') === 's1', r.text);
}

// ---- the templates
for (const pdk of ['as', 'rust']) {
  const t = async (name, fn, input) => call(await load(`otoroshi_${pdk}_template_${name}.wasm`), fn, input);
  const n = (s) => `template ${pdk} ${s}`;
  let r = await t('access_control', 'execute', ctx.access({ foo: 'bar' }));
  check(n('access allows'), r.ok && r.json.result === true, r.text);
  r = await t('access_control', 'execute', ctx.access({}));
  check(n('access denies'), r.ok && r.json.result === false && r.json.error.status === 401 && r.json.error.message === "you're not authorized", r.text);
  r = await t('pre_route', 'execute', ctx.pre_route({ bar: 'foo' }));
  check(n('pre_route passes'), r.ok && r.json.error === false, r.text);
  r = await t('pre_route', 'execute', ctx.pre_route({}));
  check(n('pre_route refuses'), r.ok && r.json.error === true && r.json.status === 401 && r.json.body === "you're not authorized", r.text);
  r = await t('route_matcher', 'execute', ctx.matches_route({ foo: 'bar' }));
  check(n('matcher'), r.ok && r.json.result === true, r.text);
  r = await t('backend', 'execute', ctx.call_backend({ foo: 'x' }));
  check(n('backend'), r.ok && r.json.status === 200 && r.json.headers.foo === 'x' && bodyOf(r.json).includes('This HTML comes from the Wasmo plugin'), r.text);
  r = await t('request_transformer', 'execute', ctx.transform_request({ a: 'b' }));
  check(n('request transformer'), r.ok && r.json.method === 'POST' && r.json.headers.OTOROSHI_WASM_PLUGIN_ID === 'OTOROSHI_WASM_REQUEST_TRANSFORMER', r.text);
  r = await t('response_transformer', 'execute', ctx.transform_response({ a: 'b' }));
  check(n('response transformer'), r.ok && r.json.status === 200 && r.json.headers.OTOROSHI_WASM_PLUGIN_ID === 'OTOROSHI_WASM_RESPONSE_TRANSFORMER', r.text);
  r = await t('sink', 'sink_matches', ctx.sink_matches({}));
  check(n('sink_matches'), r.ok && r.json.result === true, r.text);
  r = await t('sink', 'sink_handle', ctx.sink_handle({}));
  const sinkBody = r.ok ? (r.json.body_json ?? JSON.parse(r.json.body_str)) : {};
  check(n('sink_handle'), r.ok && sinkBody.WASM_SINK_RESPONSE === 'Unknown path and domain for /foo/bar', r.text);
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
