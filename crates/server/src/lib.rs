//! One `strata server`: opens this server's store and management state from its data
//! directory, bootstraps or joins a management group (`join.rs`), keeps the store in line with the management state, and serves the NBD exports
//! and the HTTP API until told to stop.
//!
//! Shutdown discipline: every task gets a child of one `CancellationToken`; listeners are
//! bound before anything is served (port 0 works, so tests never pick ports), and
//! [`RunningServer::stop`] cancels the token and waits for every task to end.

pub mod api;
mod background;
pub mod config;
mod control;
mod exports;
mod forward;
pub mod identity;
mod jobs;
mod join;
pub mod metrics;
mod peers;
mod reconcile;

use anyhow::Context;
use config::ServerConfig;
use identity::Identity;
use std::net::SocketAddr;
use std::sync::Arc;
use strata_api_types::JoinRequest;
use strata_meta::{Meta, ServerRecord};
use strata_store::{Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A server that is serving. Dropping it does not stop it; call [`RunningServer::stop`].
pub struct RunningServer {
    /// The address the API listens on.
    pub api_addr: SocketAddr,
    /// The address NBD listens on.
    pub nbd_addr: SocketAddr,
    /// The address the server-to-server data protocol listens on.
    pub peer_addr: SocketAddr,
    /// Who this server is.
    pub identity: Arc<Identity>,
    /// The management state handle.
    pub meta: Meta,
    store: Arc<Store>,
    engine: Arc<strata_volume::Engine>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningServer {
    /// The API base URL, e.g. `http://127.0.0.1:7780`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Stops serving and waits until every task has ended and the state is closed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.engine.stop().await;
        self.meta.shutdown().await;
    }

    /// Test hook: what a SIGKILL (`power_loss`: a power loss) does to this server's data,
    /// for a test that runs the server on a tokio runtime of its own and shuts that runtime
    /// down right after (`Runtime::shutdown_background`), so that every task stops at its next
    /// await point and every socket closes, as they would with the process. The store's last
    /// drop still flushes, but the next start is unclean ([`Store::close_as_unclean`]): a write
    /// this server applied may not have reached the other replicas. With `power_loss`, what
    /// the store had not flushed is lost too ([`Store::crash_in_place`]).
    #[doc(hidden)]
    pub fn doom(&self, power_loss: bool) {
        if power_loss {
            self.store.crash_in_place();
        }
        self.store.close_as_unclean();
    }

    /// Waits until the server stops by itself (it does not, unless a task fails) or is told to
    /// stop through the token it was started with.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        while self.tasks.join_next().await.is_some() {}
        self.engine.stop().await;
        self.meta.shutdown().await;
    }
}

/// After an unclean stop (a crash or power loss), this server's copies may lack writes it
/// acknowledged after its last flush, or hold writes the other replicas lack (a write that
/// reached it and not them before everything stopped). The store's activity log names the
/// chunks where that can be; this records each as an *own* mark (its copy is suspect: resync
/// makes it the same as another replica's, see `strata_volume::resync`), durably. It runs
/// right after the store opens, before this server answers anyone: a resync source that asked
/// it for its marks before they were recorded would find none and mark it in sync with the
/// writes it lost, and a later failure of the other replica left only the copy without them.
fn record_suspect_chunks(store: &Store, me: strata_types::ServerId) -> anyhow::Result<()> {
    for v in store.volumes() {
        let suspect = store
            .suspect_chunks(v.id)
            .with_context(|| format!("cannot read the activity log of volume {}", v.id))?;
        if suspect.is_empty() {
            continue;
        }
        tracing::warn!(volume = %v.id, chunks = suspect.len(), "the store was not closed cleanly; chunks that may hold unflushed writes are resynced");
        tracing::info!(volume = %v.id, ?suspect, "suspect (layer, chunk)s");
        for (layer, chunk) in suspect {
            store.record_missed(v.id, layer, chunk, me)?;
        }
        store.flush(v.id).with_context(|| {
            format!(
                "cannot record which chunks of volume {} may hold unflushed writes (the store \
                 refused a flush); check the data disk, then start the server again",
                v.id
            )
        })?;
        store.forget_suspects(v.id)?;
    }
    Ok(())
}

/// After an unclean stop, this server has itself marked stale for every volume it holds a
/// copy of, so that nothing is read from its copies until resync has brought them back. A
/// refusal (it is the only in-sync copy of some chunk) leaves that volume in sync; its own
/// marks (see [`record_suspect_chunks`]) then make the stale replicas take its version.
async fn distrust_own_copies(
    engine: &strata_volume::Engine,
    meta: &Meta,
    me: strata_types::ServerId,
) {
    let state = meta.local_state();
    for v in state.volumes.values().filter(|v| v.servers.contains(&me)) {
        tracing::warn!(volume = %v.name, "the store was not closed cleanly; marking this server's copy stale until it is resynced");
        if let Err(e) = engine.mark_stale(v.id, me).await {
            tracing::warn!(volume = %v.name, error = %e, "could not mark this server's copy stale after an unclean stop");
        }
    }
}

/// Starts a server and returns once it serves.
pub async fn start(
    config: ServerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningServer> {
    metrics::handle();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let identity = Arc::new(Identity::load_or_create(
        &config.data_dir,
        config.name.as_ref(),
    )?);
    let store = Arc::new(
        Store::open(
            &config.data_dir.join("store"),
            StoreOptions {
                merge_rate_bytes_per_sec: config.merge_rate,
                // A sixteenth of the filesystem, at most 64 MiB.
                reserve_bytes: None,
            },
        )
        .context("cannot open the block store")?,
    );
    if store.was_unclean() {
        record_suspect_chunks(&store, identity.id)?;
    }
    let api_listener = TcpListener::bind(config.api).await.with_context(|| {
        format!(
            "cannot listen for the API on {}; is another server using it? pick another with --api",
            config.api
        )
    })?;
    let nbd_listener = TcpListener::bind(config.nbd).await.with_context(|| {
        format!(
            "cannot listen for NBD on {}; is another server using it? pick another with --nbd",
            config.nbd
        )
    })?;
    let peer_listener = TcpListener::bind(config.peer).await.with_context(|| {
        format!(
            "cannot listen for other servers on {}; is another server using it? pick another with --peer",
            config.peer
        )
    })?;
    let api_addr = api_listener.local_addr()?;
    let nbd_addr = nbd_listener.local_addr()?;
    let peer_addr = peer_listener.local_addr()?;
    // What others use to reach this server: the listen addresses unless told otherwise.
    let api_url = config
        .advertise_api
        .clone()
        .unwrap_or_else(|| format!("http://{api_addr}"));
    let advertised_peer = config.advertise_peer.unwrap_or(peer_addr);

    let meta = Meta::open_with(
        &config.data_dir.join("meta"),
        identity.raft_node_id,
        api_url.clone(),
        config.source_ip,
    )
    .await
    .context("cannot open the management state")?;
    let lost = reconcile::lost_volumes(&meta.local_state(), &store, identity.id);
    if !lost.is_empty() {
        meta.shutdown().await;
        anyhow::bail!(
            "the block store in {} is new, but the management state places volume(s) {} on \
             this server: its copies of them are lost, and starting would recreate them empty; \
             refusing to start. Restore the store directory from a backup, or move the data \
             directory aside and replace this server (`strata cluster remove-server` rebuilds \
             its chunks from the other replicas)",
            config.data_dir.join("store").display(),
            lost.join(", ")
        );
    }
    if store.is_new() {
        // Only now is it this server's store: a refused start leaves it new for the next.
        store
            .claim()
            .context("cannot record the new block store as this server's")?;
    }
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_millis(500))
        .tcp_nodelay(true)
        .local_address(config.source_ip)
        .build()
        .context("cannot build the HTTP client")?;
    let control = Arc::new(control::ServerControl::new(
        identity.id,
        meta.clone(),
        http.clone(),
        format!("http://{api_addr}"),
    ));
    let engine = strata_volume::Engine::new(identity.id, store.clone(), control, config.source_ip);
    let state = api::AppState {
        engine: engine.clone(),
        meta: meta.clone(),
        store: store.clone(),
        identity: identity.clone(),
        data_dir: config.data_dir.clone(),
        nbd_addr: nbd_addr.to_string(),
        reconcile_lock: Arc::new(tokio::sync::Mutex::new(())),
        http: http.clone(),
        background: Arc::new(
            background::Background::start(2).context("cannot start the background threads")?,
        ),
        jobs: Arc::new(jobs::Jobs::new(shutdown.child_token())),
        own_api: format!("http://{api_addr}"),
    };
    // Serve the API and the Raft RPCs first: a joining server must answer the leader.
    let mut tasks = JoinSet::new();
    let router = api::router(state.clone());
    let api_shutdown = shutdown.child_token();
    tasks.spawn(
        async move {
            let served = axum::serve(api_listener, router)
                .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "API server failed");
            }
        }
        .in_current_span(),
    );
    let me = JoinRequest {
        id: identity.id,
        name: identity.name.to_string(),
        api_addr: api_url.clone(),
        nbd_addr: nbd_addr.to_string(),
        peer_addr: advertised_peer.to_string(),
        raft_node_id: identity.raft_node_id,
    };
    let ready = async {
        enter_group(&config, &meta, &http, &me).await?;
        state.apply_to_store().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot bring the store in line with the management state: {}",
                e.message
            )
        })
    };
    if let Err(e) = ready.await {
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
        meta.shutdown().await;
        return Err(e);
    }

    tasks.spawn(follow_meta(state.clone(), shutdown.child_token()).in_current_span());
    tasks.spawn(jobs::watch(state.clone(), shutdown.child_token()).in_current_span());
    tasks.spawn(
        join::keep_record_current(meta.clone(), http, api_url, me, shutdown.child_token())
            .in_current_span(),
    );
    // Serve other servers only once the store follows the management state: a replica must
    // not accept a write for a layer it has not frozen yet.
    let wire_config = strata_wire::ServerConfig::new(identity.id);
    let handler = Arc::new(strata_volume::ReplicaHandler::new(engine.clone()));
    tasks.spawn(
        strata_wire::serve(peer_listener, wire_config, handler, shutdown.child_token())
            .in_current_span(),
    );
    tasks.spawn(
        strata_volume::resync::run(engine.clone(), shutdown.child_token()).in_current_span(),
    );
    tasks.spawn(
        strata_volume::migrate::run(engine.clone(), shutdown.child_token()).in_current_span(),
    );
    if store.was_unclean() {
        distrust_own_copies(&engine, &meta, identity.id).await;
    }
    let exports = Arc::new(exports::Exports::new(meta.clone(), engine.clone()));
    let nbd_shutdown = shutdown.child_token();
    let nbd_limits = config.nbd_limits.clone();
    tasks.spawn(
        async move {
            if let Err(e) =
                strata_nbd::serve_with(nbd_listener, exports, nbd_limits, nbd_shutdown).await
            {
                tracing::error!(error = %e, "NBD server failed");
            }
        }
        .in_current_span(),
    );
    tracing::info!(server = %identity.name, api = %api_addr, nbd = %nbd_addr, peer = %peer_addr, "strata server serving");
    Ok(RunningServer {
        api_addr,
        nbd_addr,
        peer_addr,
        identity,
        meta,
        store,
        engine,
        shutdown,
        tasks,
    })
}

/// Makes this node a member of a management group: bootstraps a new one, joins the one at
/// `--join`, or, when it is a member already, just carries on.
async fn enter_group(
    config: &ServerConfig,
    meta: &Meta,
    http: &reqwest::Client,
    me: &JoinRequest,
) -> anyhow::Result<()> {
    if config.bootstrap {
        let name = strata_types::Name::new(&me.name)?;
        let record = ServerRecord {
            id: me.id,
            name,
            api_addr: me.api_addr.clone(),
            nbd_addr: me.nbd_addr.clone(),
            peer_addr: me.peer_addr.clone(),
            raft_node_id: me.raft_node_id,
        };
        return meta
            .bootstrap(record)
            .await
            .context("cannot bootstrap the management group");
    }
    if meta.is_initialized().await {
        if let Some(url) = &config.join {
            tracing::info!(%url, "already a member of a management group; --join is not needed");
        }
        return Ok(());
    }
    match &config.join {
        Some(url) => join::join(meta, http, url, me).await,
        None => anyhow::bail!(
            "this server belongs to no management group yet; start it with --bootstrap to make a \
             new group or --join URL to join the group of the server at URL"
        ),
    }
}

/// Re-applies the management state to the store after every change this server applies —
/// changes made through another server's API arrive this way — and retries a failed attempt
/// every few seconds.
async fn follow_meta(state: api::AppState, shutdown: CancellationToken) {
    let mut applied = state.meta.subscribe();
    // Changes applied between the start-up reconcile and this subscription must not be missed.
    applied.mark_changed();
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = retry.tick(), if failing => {}
            changed = applied.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        failing = match state.apply_to_store().await {
            Ok(()) => false,
            Err(e) => {
                tracing::error!(error = %e.message, "cannot apply the management state to the store; retrying");
                true
            }
        };
    }
}
