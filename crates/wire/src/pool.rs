//! A connection pool: one multiplexed [`WireClient`] per peer address, made on first use.
//!
//! Because one connection carries many calls at once, the pool keeps a single connection per
//! peer rather than a set. A connection that has failed is replaced lazily: the next
//! [`Pool::get`] for that address sees it closed and dials again. Dialing happens under a
//! per-address async lock, so a burst of calls to a peer that just came back makes one
//! connection, not one each, and a dead peer's connect timeout never delays calls to others.
//!
//! The pool does not retry calls by itself: whether a request may be repeated (and where — the
//! same replica or another) is the caller's decision, guided by [`WireError::is_retryable`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use strata_types::ServerId;

use crate::client::{ClientConfig, WireClient};
use crate::error::WireError;
use crate::message::{Request, Response};

type Slot = Arc<tokio::sync::Mutex<Option<WireClient>>>;

/// Connections to peer servers, keyed by address.
#[derive(Debug)]
pub struct Pool {
    my_id: ServerId,
    config: ClientConfig,
    slots: Mutex<HashMap<SocketAddr, Slot>>,
}

impl Pool {
    /// An empty pool for server `my_id` (sent in every handshake).
    pub fn new(my_id: ServerId, config: ClientConfig) -> Self {
        Self {
            my_id,
            config,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, addr: SocketAddr) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(addr).or_default().clone()
    }

    /// The open connection to `addr`, dialing (again) if there is none or it has failed.
    pub async fn get(&self, addr: SocketAddr) -> Result<WireClient, WireError> {
        let slot = self.slot(addr);
        let mut conn = slot.lock().await;
        if let Some(client) = conn.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *conn = None;
        let client = WireClient::connect_with(addr, self.my_id, self.config.clone()).await?;
        *conn = Some(client.clone());
        Ok(client)
    }

    /// Sends `req` to the peer at `addr` over its pooled connection.
    pub async fn call(&self, addr: SocketAddr, req: Request) -> Result<Response, WireError> {
        self.get(addr).await?.call(req).await
    }

    /// Drops the pool's connection to `addr`; it closes once no caller holds a clone of it.
    pub fn forget(&self, addr: SocketAddr) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(&addr);
    }

    /// The addresses that currently have an open connection.
    pub fn connected(&self) -> Vec<SocketAddr> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|(_, slot)| {
                slot.try_lock()
                    .map(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
                    .unwrap_or(false)
            })
            .map(|(addr, _)| *addr)
            .collect()
    }
}
