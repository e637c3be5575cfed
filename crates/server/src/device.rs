//! [`VolumeDevice`]: one NBD export backed by this server's store — the volume's writable head,
//! or one of its snapshots, read-only. Store calls are blocking file I/O, so each runs on
//! tokio's blocking pool; many requests of one connection run at once. Every request is counted
//! and timed into the Prometheus metrics, labelled by volume and operation. The metric handles
//! are looked up once per device (per connection), not per request: a lookup hashes and clones
//! the labels and takes the registry's lock, which cost measurably at 4 KiB request rates.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Instant;
use strata_nbd::{BlockDevice, Extent, IoError};
use strata_store::{ExtentKind, Store, StoreError};
use strata_types::{LayerId, VolumeId};

/// The metric handles of one operation of one device.
struct OpMetrics {
    ops: metrics::Counter,
    latency: metrics::Histogram,
    bytes: metrics::Counter,
    errors: metrics::Counter,
}

impl OpMetrics {
    fn new(volume: &str, op: &'static str) -> Self {
        let labels = [("volume", volume.to_string()), ("op", op.to_string())];
        Self {
            ops: metrics::counter!("strata_nbd_ops_total", &labels),
            latency: metrics::histogram!("strata_nbd_latency_seconds", &labels),
            bytes: metrics::counter!("strata_nbd_bytes_total", &labels),
            errors: metrics::counter!("strata_nbd_errors_total", &labels),
        }
    }
}

/// The operations a device records metrics for.
#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
}

impl Op {
    const ALL: [Op; 6] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Trim,
        Op::WriteZeroes,
        Op::BlockStatus,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::WriteZeroes => "write_zeroes",
            Op::BlockStatus => "block_status",
        }
    }
}

/// One export: a volume's head (read-write) or a snapshot layer (read-only).
pub struct VolumeDevice {
    store: Arc<Store>,
    volume: VolumeId,
    name: String,
    /// `None` for the head, the snapshot's layer otherwise.
    layer: Option<LayerId>,
    size: u64,
    read_only: bool,
    /// Indexed by `Op as usize`.
    metrics: [OpMetrics; 6],
}

impl VolumeDevice {
    /// An export of `volume` (named `name` in metrics) at `layer` (`None`: the writable head).
    pub fn new(
        store: Arc<Store>,
        volume: VolumeId,
        name: String,
        layer: Option<LayerId>,
        size: u64,
        read_only: bool,
    ) -> Self {
        let metrics = Op::ALL.map(|op| OpMetrics::new(&name, op.name()));
        Self {
            store,
            volume,
            name,
            layer,
            size,
            read_only,
            metrics,
        }
    }

    /// Runs a blocking store call off the async threads, recording its metrics.
    async fn run<T: Send + 'static>(
        &self,
        op: Op,
        bytes: u64,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, IoError> {
        let started = Instant::now();
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| IoError::Io(format!("store task failed: {e}")))
            .and_then(|r| r.map_err(to_io_error));
        let m = &self.metrics[op as usize];
        m.ops.increment(1);
        m.latency.record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => m.bytes.increment(bytes),
            Err(e) => {
                let op = op.name();
                tracing::warn!(volume = %self.name, op, error = %e, "request failed");
                m.errors.increment(1);
            }
        }
        result
    }
}

/// Maps store errors to NBD errors: the one place this mapping lives.
fn to_io_error(e: StoreError) -> IoError {
    match e {
        StoreError::OutOfRange { .. } => IoError::InvalidArgument(e.to_string()),
        StoreError::ReadOnlyLayer(_) => IoError::ReadOnly,
        StoreError::NoSpace => IoError::NoSpace,
        other => IoError::Io(other.to_string()),
    }
}

#[async_trait]
impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        let (vol, layer) = (self.volume, self.layer);
        self.run(Op::Read, u64::from(len), move |s| {
            let mut buf = BytesMut::zeroed(len as usize);
            s.read(vol, layer, offset, &mut buf)?;
            Ok(buf.freeze())
        })
        .await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError::ReadOnly);
        }
        let vol = self.volume;
        self.run(Op::Write, data.len() as u64, move |s| {
            s.write(vol, offset, &data, fua)
        })
        .await
    }

    async fn flush(&self) -> Result<(), IoError> {
        if self.read_only {
            return Ok(());
        }
        let vol = self.volume;
        self.run(Op::Flush, 0, move |s| s.flush(vol)).await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError::ReadOnly);
        }
        let vol = self.volume;
        self.run(Op::Trim, u64::from(len), move |s| {
            s.trim(vol, offset, u64::from(len))
        })
        .await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), IoError> {
        if self.read_only {
            return Err(IoError::ReadOnly);
        }
        let vol = self.volume;
        self.run(Op::WriteZeroes, u64::from(len), move |s| {
            s.write_zeroes(vol, offset, u64::from(len), fua)
        })
        .await
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        let (vol, layer) = (self.volume, self.layer);
        let extents = self
            .run(Op::BlockStatus, 0, move |s| {
                s.allocation(vol, layer, offset, u64::from(len))
            })
            .await?;
        Ok(extents
            .into_iter()
            .map(|e| Extent {
                len: e.len as u32,
                hole: e.kind != ExtentKind::Data,
                zero: e.kind != ExtentKind::Data,
            })
            .collect())
    }
}
