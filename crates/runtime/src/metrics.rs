//! Metrics through the `metrics` facade, sent to StatsD with DogStatsD tags and rendered as
//! Prometheus text on `/metrics`, from one set of instrumentation calls.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_exporter_statsd::StatsdBuilder;
use metrics_util::layers::{FanoutBuilder, Layer, PrefixLayer};

/// Names of the runtime's own metrics (before the configured prefix).
pub mod names {
    /// Counter, tag `topic`: messages read.
    pub const MESSAGES_IN: &str = "messages.in";
    /// Counter, tag `topic`: records produced and acknowledged.
    pub const MESSAGES_OUT: &str = "messages.out";
    /// Histogram (seconds), tag `topic`: time from reading a message to finishing it.
    pub const PROCESSING_SECONDS: &str = "processing.seconds";
    /// Counter, tag `kind`: failed processing attempts.
    pub const ERRORS: &str = "errors";
    /// Counter, tag `kind`: records sent to the dead-letter topic.
    pub const DEAD_LETTERS: &str = "dead_letters";
    /// Gauge, tags `topic`, `partition`: high watermark minus position.
    pub const LAG: &str = "consumer.lag";
    /// Histogram (seconds): duration of an offset commit.
    pub const COMMIT_SECONDS: &str = "commit.seconds";
    /// Counter, tag `kind` (`assign`, `revoke`): rebalances.
    pub const REBALANCES: &str = "rebalances";
    /// Counter: the consumer left its group because `max.poll.interval.ms` passed.
    pub const MAX_POLL_EXCEEDED: &str = "consumer.max_poll_exceeded";
    /// Counter: deliveries that failed and were retried.
    pub const DELIVERY_RETRIES: &str = "producer.delivery_retries";
    /// Gauge: messages read and not yet finished, over all partitions.
    pub const IN_FLIGHT: &str = "consumer.in_flight";
}

/// Renders the Prometheus text of every metric recorded in this process.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
}

impl MetricsHandle {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.prometheus.run_upkeep();
        self.prometheus.render()
    }
}

static INSTALLED: OnceLock<MetricsHandle> = OnceLock::new();

/// Installs the process-wide recorder: StatsD to `statsd_addr` (tagged `service`) and
/// Prometheus, both with `prefix`. The first call wins; later calls return its handle.
pub fn install(prefix: &str, statsd_addr: &str, service: &str) -> MetricsHandle {
    INSTALLED
        .get_or_init(|| {
            let prometheus = PrometheusBuilder::new().build_recorder();
            let handle = MetricsHandle {
                prometheus: prometheus.handle(),
            };
            let mut fanout =
                FanoutBuilder::default().add_recorder(PrefixLayer::new(prefix).layer(prometheus));
            match statsd(prefix, statsd_addr, service) {
                Ok(recorder) => fanout = fanout.add_recorder(recorder),
                Err(e) => tracing::warn!(error = %e, addr = statsd_addr, "StatsD disabled"),
            }
            if metrics::set_global_recorder(fanout.build()).is_err() {
                tracing::warn!("A metrics recorder was already installed; metrics go there");
            }
            handle
        })
        .clone()
}

fn statsd(
    prefix: &str,
    addr: &str,
    service: &str,
) -> Result<metrics_exporter_statsd::StatsdRecorder, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr}: expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{addr}: bad port"))?;
    StatsdBuilder::from(host, port)
        .with_queue_size(65_536)
        .with_buffer_size(1432)
        .histogram_is_distribution()
        .with_default_tag("service", service)
        .build(Some(prefix))
        .map_err(|e| e.to_string())
}
