//! Metrics through the `metrics` facade, sent to StatsD with DogStatsD tags and rendered as
//! Prometheus text on `/metrics`, from one set of instrumentation calls.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cadence::{BufferedUdpMetricSink, MetricSink, SinkStats};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_exporter_statsd::StatsdBuilder;
use metrics_util::layers::{FanoutBuilder, Layer, PrefixLayer};
use metrics_util::registry::{AtomicStorage, Registry};

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
    /// Histogram (seconds): duration of a synchronous offset commit (revocation, shutdown).
    pub const COMMIT_SECONDS: &str = "commit.seconds";
    /// Counter, tag `kind` (`assign`, `revoke`): rebalances.
    pub const REBALANCES: &str = "rebalances";
    /// Counter: the consumer left its group because `max.poll.interval.ms` passed.
    pub const MAX_POLL_EXCEEDED: &str = "consumer.max_poll_exceeded";
    /// Counter: the process was found frozen (SIGSTOP, a paused VM) past half its session
    /// timeout, and held its work while the group settled who owns its partitions.
    pub const FROZEN: &str = "consumer.frozen";
    /// Counter: revocations (outside a stop) whose partitions did not finish their work
    /// within `SHUTDOWN_TIMEOUT_MS`; their unfinished input is processed again by the next
    /// owner.
    pub const LATE_REVOCATIONS: &str = "consumer.late_revocations";
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

/// How often aggregated and buffered StatsD lines are sent, so a quiet service's metrics
/// arrive within about a second rather than when 1,432 bytes piled up.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The StatsD side, shared with the flusher thread and with [`flush`].
static STATSD: OnceLock<Arc<Aggregating>> = OnceLock::new();

/// Client-side aggregation in front of the StatsD recorder, as DogStatsD clients do:
/// counters and gauges are plain atomics in this process (an increment on the hot path is
/// one atomic add, not a formatted line), and once per flush each counter's growth and each
/// changed gauge become one line. A busy consumer sends one line per counter per second, and
/// no increment is ever dropped by a full queue or socket (counter totals stay exact).
/// Histograms are per-sample by nature and go straight to the recorder.
struct Aggregating {
    registry: Registry<Key, AtomicStorage>,
    statsd: metrics_exporter_statsd::StatsdRecorder,
    sink: Arc<BufferedUdpMetricSink>,
    sent: Mutex<Sent>,
}

/// What the last flush sent: counter totals and gauge values (as bits), per key.
#[derive(Default)]
struct Sent {
    counters: HashMap<Key, u64>,
    gauges: HashMap<Key, u64>,
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

impl Aggregating {
    /// Hands what accumulated since the last flush to the StatsD recorder, then sends the
    /// buffered lines. Serialised by the `sent` lock, so concurrent flushes never double
    /// count.
    fn flush(&self) -> std::io::Result<()> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let Sent { counters, gauges } = &mut *sent;
        self.registry.visit_counters(|key, total| {
            let total = total.load(Ordering::Acquire);
            let last = counters.entry(key.clone()).or_default();
            if total > *last {
                self.statsd
                    .register_counter(key, &METADATA)
                    .increment(total - *last);
                *last = total;
            }
        });
        self.registry.visit_gauges(|key, value| {
            let bits = value.load(Ordering::Acquire);
            if gauges.insert(key.clone(), bits) != Some(bits) {
                self.statsd
                    .register_gauge(key, &METADATA)
                    .set(f64::from_bits(bits));
            }
        });
        self.sink.flush()
    }
}

/// The recorder's handle on the buffer the flusher empties.
struct SharedSink(Arc<BufferedUdpMetricSink>);

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

/// The recorder the facade sees for StatsD.
struct AggregatingRecorder(Arc<Aggregating>);

impl Recorder for AggregatingRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.statsd.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.statsd.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.statsd.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.registry.get_or_create_counter(key, |c| c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.registry.get_or_create_gauge(key, |g| g.clone()))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0.statsd.register_histogram(key, metadata)
    }
}

/// Sends every StatsD line recorded so far. Services call it as they stop, so the metrics
/// of the last messages they processed (and committed) are not lost with the process.
pub fn flush() {
    if let Some(statsd) = STATSD.get() {
        if let Err(e) = statsd.flush() {
            tracing::debug!(error = %e, "StatsD flush");
        }
    }
}

fn statsd(prefix: &str, addr: &str, service: &str) -> Result<AggregatingRecorder, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr}: expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{addr}: bad port"))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let sink = Arc::new(
        BufferedUdpMetricSink::with_capacity((host, port), socket, 1432)
            .map_err(|e| e.to_string())?,
    );
    let statsd = StatsdBuilder::from(host, port)
        .with_sink(SharedSink(sink.clone()))
        .histogram_is_distribution()
        .with_default_tag("service", service)
        .build(Some(prefix))
        .map_err(|e| e.to_string())?;
    let aggregating = Arc::new(Aggregating {
        registry: Registry::atomic(),
        statsd,
        sink,
        sent: Mutex::new(Sent::default()),
    });
    let flusher = aggregating.clone();
    std::thread::Builder::new()
        .name("statsd-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_INTERVAL);
                let _ = flusher.flush();
            }
        })
        .map_err(|e| e.to_string())?;
    let _ = STATSD.set(aggregating.clone());
    Ok(AggregatingRecorder(aggregating))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_gauges_keep_the_last_value_and_samples_pass_through() {
        let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
        agent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let recorder = statsd("t", &agent.local_addr().unwrap().to_string(), "svc").unwrap();
        let key = |name: &'static str, tag: Option<&'static str>| match tag {
            Some(t) => Key::from_parts(name, vec![metrics::Label::new("t", t)]),
            None => Key::from_name(name),
        };
        let a = recorder.register_counter(&key("a", Some("x")), &METADATA);
        a.increment(1);
        a.increment(1);
        // Registering the same key again shares the count.
        recorder
            .register_counter(&key("a", Some("x")), &METADATA)
            .increment(1);
        recorder
            .register_counter(&key("a", Some("y")), &METADATA)
            .increment(2);
        let g = recorder.register_gauge(&key("g", None), &METADATA);
        g.set(5.0);
        g.set(7.0);
        let d = recorder.register_histogram(&key("d", Some("x")), &METADATA);
        d.record(3.0);
        d.record(4.0);
        recorder.0.flush().unwrap();
        let mut lines = Vec::new();
        let mut buf = [0u8; 2048];
        while lines.len() < 5 {
            let n = agent.recv(&mut buf).unwrap();
            lines.extend(
                std::str::from_utf8(&buf[..n])
                    .unwrap()
                    .lines()
                    .map(str::to_owned),
            );
        }
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "t.a:2|c|#service:svc,t:y",
                "t.a:3|c|#service:svc,t:x",
                "t.d:3|d|#service:svc,t:x",
                "t.d:4|d|#service:svc,t:x",
                "t.g:7|g|#service:svc"
            ]
        );
        // Nothing is sent twice; only growth is sent after that.
        recorder.0.flush().unwrap();
        agent
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(agent.recv(&mut buf).is_err());
        a.increment(4);
        recorder.0.flush().unwrap();
        let n = agent.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap().trim(),
            "t.a:4|c|#service:svc,t:x"
        );
    }
}
