//! Prometheus metrics of cohort syncs: Braze requests by status, ids sent, retries and run
//! durations. The paused-syncs gauge is set from the store when `/metrics` is read.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct SyncMetrics {
    registry: Registry,
    /// Braze requests by endpoint and by outcome: an HTTP status, `timeout` or
    /// `connection_error`.
    pub braze_requests: IntCounterVec,
    /// Ids Braze acknowledged, by operation (`add` or `remove`).
    pub ids_sent: IntCounterVec,
    pub retries: IntCounter,
    /// Run durations in seconds, by outcome (`succeeded` or `failed`).
    pub run_duration: HistogramVec,
    pub paused_syncs: IntGauge,
}

impl SyncMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let braze_requests = IntCounterVec::new(
            Opts::new(
                "cohortbridge_braze_requests_total",
                "Braze requests by endpoint and by HTTP status or transport error.",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let ids_sent = IntCounterVec::new(
            Opts::new(
                "cohortbridge_braze_ids_sent_total",
                "External ids Braze acknowledged, by operation.",
            ),
            &["operation"],
        )
        .expect("valid metric");
        let retries = IntCounter::new(
            "cohortbridge_braze_retries_total",
            "Braze requests resent after a retryable failure.",
        )
        .expect("valid metric");
        let run_duration = HistogramVec::new(
            HistogramOpts::new(
                "cohortbridge_sync_run_duration_seconds",
                "Wall time of sync runs, by outcome.",
            )
            .buckets(vec![
                0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            &["outcome"],
        )
        .expect("valid metric");
        let paused_syncs = IntGauge::new(
            "cohortbridge_paused_syncs",
            "Syncs paused by an operator, a disconnect or an error Braze will repeat.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(braze_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ids_sent.clone()),
            Box::new(retries.clone()),
            Box::new(run_duration.clone()),
            Box::new(paused_syncs.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            braze_requests,
            ids_sent,
            retries,
            run_duration,
            paused_syncs,
        }
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self::new()
    }
}
