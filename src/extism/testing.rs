//! Helpers for the unit tests of this module: a plugin state with in-memory services, a log
//! recorder, a scripted HTTP client, and a way to call a table entry by name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::authorizations::Authorizations;
use super::http::{HttpClient, HttpError, IncomingResponse, OtoroshiHosts, OutgoingRequest};
use super::imports::HostImport;
use super::otoroshi::datastore::InProcessDataStore;
use super::otoroshi::maps::Maps;
use super::state::{ExtismHost, ExtismState, PluginContext, Services};
use crate::abi::LogLevel;
use crate::runtime::{Trap, Val};

/// Keeps the lines plugins log (threshold: info).
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<(LogLevel, String)>>>);

impl Recorder {
    pub fn lines(&self) -> Vec<(LogLevel, String)> {
        self.0.lock().unwrap().clone()
    }
}

impl ExtismHost for Recorder {
    fn log(&self, _plugin: &str, level: LogLevel, message: &str) {
        self.0.lock().unwrap().push((level, message.to_owned()));
    }
}

/// Answers every request with one response and keeps the requests.
#[derive(Clone)]
pub struct FakeHttp {
    answer: Result<IncomingResponse, HttpError>,
    seen: Arc<Mutex<Vec<OutgoingRequest>>>,
}

impl FakeHttp {
    pub fn answering(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Arc<FakeHttp> {
        let headers = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Arc::new(FakeHttp {
            answer: Ok(IncomingResponse { status, headers, body: body.to_vec() }),
            seen: Arc::default(),
        })
    }

    pub fn requests(&self) -> Vec<OutgoingRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl HttpClient for FakeHttp {
    fn send(&self, request: &OutgoingRequest) -> Result<IncomingResponse, HttpError> {
        self.seen.lock().unwrap().push(request.clone());
        self.answer.clone()
    }
}

pub fn plugin_context() -> PluginContext {
    PluginContext {
        id: "plugin-id".into(),
        name: "test-plugin".into(),
        config: BTreeMap::new(),
        allowed_hosts: vec!["*".into()],
        otoroshi_hosts: OtoroshiHosts::new(&[]).unwrap(),
        authorizations: Authorizations::default(),
        storage_root: "otoroshi".into(),
        http_request_timeout: Duration::from_secs(5),
        max_response_size: 1 << 20,
        max_var_bytes: super::vars::DEFAULT_MAX_VAR_BYTES,
        memory_pages: 64,
        preopens: Vec::new(),
    }
}

fn build(
    host: Arc<dyn ExtismHost>,
    http: Option<Arc<dyn HttpClient>>,
    edit: impl FnOnce(&mut PluginContext),
) -> ExtismState {
    let mut plugin = plugin_context();
    edit(&mut plugin);
    let services = Services {
        host,
        http,
        datastore: Arc::new(InProcessDataStore::new(1 << 20)),
        maps: Arc::new(Maps::new(1 << 20)),
    };
    ExtismState::new(Arc::new(plugin), Arc::new(services))
}

pub fn state() -> ExtismState {
    state_with(|_| {})
}

pub fn state_with(edit: impl FnOnce(&mut PluginContext)) -> ExtismState {
    build(Arc::new(Recorder::default()), None, edit)
}

pub fn state_logging(recorder: Recorder) -> ExtismState {
    build(Arc::new(recorder), None, |_| {})
}

pub fn state_with_http(http: Arc<FakeHttp>, edit: impl FnOnce(&mut PluginContext)) -> ExtismState {
    build(Arc::new(Recorder::default()), Some(http), edit)
}

/// Calls the entry `name` of `table` as a runtime adapter would.
pub fn call(st: &mut ExtismState, table: &[HostImport], name: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
    let f = table.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no {name} in the table"));
    assert_eq!(args.len(), f.params.len(), "{name} takes {} arguments", f.params.len());
    f.call(st, args)
}
