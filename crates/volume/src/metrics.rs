//! Per-device Prometheus metrics: operations, bytes, errors and latency, labelled by volume and
//! operation. The handles are looked up once per device (per NBD connection), not per request:
//! a lookup hashes and clones the labels and takes the registry's lock, which cost measurably at
//! 4 KiB request rates.

use std::time::Instant;
use strata_nbd::IoError;

/// The operations a device records metrics for.
#[derive(Clone, Copy)]
pub(crate) enum Op {
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

/// The metric handles of one operation of one device.
struct OpMetrics {
    ops: metrics::Counter,
    latency: metrics::Histogram,
    bytes: metrics::Counter,
    errors: metrics::Counter,
}

/// The metric handles of one device, by operation.
pub(crate) struct DeviceMetrics {
    volume: String,
    ops: [OpMetrics; 6],
}

impl DeviceMetrics {
    /// Handles for a device of `volume`.
    pub fn new(volume: &str) -> Self {
        let ops = Op::ALL.map(|op| {
            let labels = [
                ("volume", volume.to_string()),
                ("op", op.name().to_string()),
            ];
            OpMetrics {
                ops: metrics::counter!("strata_nbd_ops_total", &labels),
                latency: metrics::histogram!("strata_nbd_latency_seconds", &labels),
                bytes: metrics::counter!("strata_nbd_bytes_total", &labels),
                errors: metrics::counter!("strata_nbd_errors_total", &labels),
            }
        });
        Self {
            volume: volume.to_string(),
            ops,
        }
    }

    /// Records one finished request of `op` that moved `bytes` and started at `started`.
    pub fn record<T>(&self, op: Op, bytes: u64, started: Instant, result: &Result<T, IoError>) {
        let m = &self.ops[op as usize];
        m.ops.increment(1);
        m.latency.record(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => m.bytes.increment(bytes),
            Err(e) => {
                tracing::warn!(volume = %self.volume, op = op.name(), error = %e, "request failed");
                m.errors.increment(1);
            }
        }
    }
}
