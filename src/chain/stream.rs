//! A link's stream context as the VM holds it: the server's own stream for
//! header maps and properties; resumes, local responses and closes go to the
//! chain (its [`Signals`]), which applies them by the chain's rules.

use crate::abi::pairs::Pair;
use crate::abi::{MapType, Status, StreamType};
use crate::host::{HttpStream, LocalResponse};

use super::server::ChainServer;
use super::signals::Signals;

pub struct ChainStream<H, S> {
    inner: H,
    server: S,
    /// The link's index in its chain.
    link: u32,
    /// The transaction is gone (the plugin keeps its context until
    /// `proxy_done`): the server handle must not be used any more.
    detached: bool,
}

impl<H: HttpStream, S: ChainServer> ChainStream<H, S> {
    pub(crate) fn new(inner: H, server: S, link: u32) -> ChainStream<H, S> {
        ChainStream { inner, server, link, detached: false }
    }

    fn signals(&self) -> Option<&Signals> {
        (!self.detached).then(|| self.server.signals())
    }

    /// Tells the chain the map changed, so the next link's `num_headers` is counted again.
    fn edited(&self, map: MapType) {
        if let Some(signals) = self.signals() {
            signals.headers_edited(map);
        }
    }
}

impl<H: HttpStream, S: ChainServer> HttpStream for ChainStream<H, S> {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        self.inner.header_map(map)
    }

    fn header_value(&self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        self.inner.header_value(map, key)
    }

    fn header_count(&self, map: MapType) -> Result<usize, Status> {
        self.inner.header_count(map)
    }

    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status> {
        self.inner.set_header_map(map, pairs)?;
        self.edited(map);
        Ok(())
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.inner.add_header(map, key, value)?;
        self.edited(map);
        Ok(())
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.inner.replace_header(map, key, value)?;
        self.edited(map);
        Ok(())
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        self.inner.remove_header(map, key)?;
        self.edited(map);
        Ok(())
    }

    fn send_local_response(&mut self, response: LocalResponse) -> Result<(), Status> {
        let signals = self.signals().ok_or(Status::BadArgument)?;
        if signals.send_local_response(response)? {
            self.server.schedule_resume();
        }
        Ok(())
    }

    /// Deferred by the VM until the callback that asked returned; the chain
    /// then continues if this link is the one that paused, else nothing happens.
    fn resume(&mut self, stream: StreamType) -> Result<(), Status> {
        let link = self.link;
        if let Some(signals) = self.signals() {
            if signals.request_resume(link, stream) {
                self.server.schedule_resume();
            }
        }
        Ok(())
    }

    fn close(&mut self, _stream: StreamType) -> Result<(), Status> {
        let signals = self.signals().ok_or(Status::BadArgument)?;
        if signals.close() {
            self.server.schedule_resume();
        }
        Ok(())
    }

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        self.inner.property(path)
    }

    fn detach(&mut self) {
        self.detached = true;
        self.inner.detach();
    }

    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        self.inner.set_property(path, value)
    }
}
