//! Metrics through the `metrics` facade, sent to StatsD with DogStatsD tags and rendered as
//! Prometheus text on `/metrics`, from one set of instrumentation calls.

use std::net::UdpSocket;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cadence::{BufferedUdpMetricSink, MetricSink, QueuingMetricSink, SinkStats};

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

/// How often buffered StatsD lines are sent even when the buffer is not full, so a quiet
/// service's metrics arrive within about a second rather than when 1,432 bytes piled up.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The StatsD queue and buffer, shared with the flusher and with [`flush`].
static STATSD_SINK: OnceLock<Arc<QueuingMetricSink>> = OnceLock::new();

/// The recorder's view of the shared sink.
struct SharedSink(Arc<QueuingMetricSink>);

impl MetricSink for SharedSink {
    fn emit(&self, metric: &str) -> std::io::Result<usize> {
        self.0.emit(metric)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }

    fn stats(&self) -> SinkStats {
        self.0.stats()
    }
}

/// Sends every StatsD line recorded so far, waiting (at most two seconds) for the queue to
/// drain into the buffer first. Services call it as they stop, so the metrics of the last
/// messages they processed (and committed) are not lost with the process.
pub fn flush() {
    let Some(sink) = STATSD_SINK.get() else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while sink.queued() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Err(e) = sink.flush() {
        tracing::debug!(error = %e, "StatsD flush");
    }
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
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let udp = BufferedUdpMetricSink::with_capacity((host, port), socket, 1432)
        .map_err(|e| e.to_string())?;
    let sink = Arc::new(QueuingMetricSink::with_capacity(udp, 65_536));
    let flusher = sink.clone();
    std::thread::Builder::new()
        .name("statsd-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_INTERVAL);
                let _ = flusher.flush();
            }
        })
        .map_err(|e| e.to_string())?;
    let _ = STATSD_SINK.set(sink.clone());
    StatsdBuilder::from(host, port)
        .with_sink(SharedSink(sink))
        .histogram_is_distribution()
        .with_default_tag("service", service)
        .build(Some(prefix))
        .map_err(|e| e.to_string())
}
