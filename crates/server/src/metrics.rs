//! Prometheus metrics. One recorder per process (the `metrics` facade is global), installed on
//! first use; `/metrics` renders it after refreshing the gauges that are read, not counted
//! (snapshot counts, store space).
//!
//! Names:
//! - `strata_nbd_ops_total{volume,op}`, `strata_nbd_bytes_total{volume,op}`,
//!   `strata_nbd_errors_total{volume,op}`: I/O served on this server's NBD exports;
//! - `strata_nbd_latency_seconds{volume,op}`: a histogram of request service time;
//! - `strata_volume_snapshots{volume}`, `strata_volume_size_bytes{volume}`;
//! - `strata_store_data_bytes`, `strata_store_volumes`, `strata_store_layers`,
//!   `strata_store_capacity_bytes`, `strata_store_free_bytes`;
//! - `strata_meta_term`, `strata_meta_last_applied`, `strata_meta_is_leader`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, from 10 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The process's Prometheus recorder, installed on first call.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then ours still renders
        // what is recorded through it directly, and the global facade keeps the first one.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
