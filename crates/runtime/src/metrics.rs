//! Metrics through the `metrics` facade, sent to StatsD with DogStatsD tags and rendered as
//! Prometheus text on `/metrics`, from one set of instrumentation calls.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cadence::{BufferedUdpMetricSink, MetricSink, SinkStats};

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
    /// Histogram (seconds): duration of a synchronous offset commit (revocation, shutdown).
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

/// How often aggregated and buffered StatsD lines are sent, so a quiet service's metrics
/// arrive within about a second rather than when 1,432 bytes piled up.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The StatsD sink, shared with the flusher thread and with [`flush`].
static STATSD_SINK: OnceLock<Arc<AggregatingSink>> = OnceLock::new();

/// Client-side aggregation in front of the UDP buffer, as DogStatsD clients do: counters
/// are summed and gauges keep their last value per name and tags until the next flush, so
/// a busy consumer sends one line per counter per second instead of one per message, and
/// no increment is ever dropped by a full queue or socket (counter totals stay exact).
/// Distributions and timers are per-sample by nature and go straight to the buffer.
struct AggregatingSink {
    udp: BufferedUdpMetricSink,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// `name\0|c|#tags` → sum.
    counters: HashMap<String, i64>,
    /// `name\0|g|#tags` → last value.
    gauges: HashMap<String, String>,
}

impl AggregatingSink {
    /// Splits `name:value|type...` into (name, value, `|type...`).
    fn split(line: &str) -> Option<(&str, &str, &str)> {
        let (name, rest) = line.split_once(':')?;
        let bar = rest.find('|')?;
        Some((name, &rest[..bar], &rest[bar..]))
    }

    fn send_pending(&self) -> std::io::Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let lines = pending
            .counters
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .chain(pending.gauges);
        for (key, value) in lines {
            let (name, suffix) = key.split_once('\0').unwrap_or((&key, ""));
            self.udp.emit(&format!("{name}:{value}{suffix}"))?;
        }
        self.udp.flush()
    }
}

impl MetricSink for AggregatingSink {
    fn emit(&self, metric: &str) -> std::io::Result<usize> {
        if let Some((name, value, suffix)) = Self::split(metric) {
            let key = || format!("{name}\0{suffix}");
            if suffix.starts_with("|c") && !suffix.contains("|@") {
                if let Ok(n) = value.parse::<i64>() {
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    *pending.counters.entry(key()).or_default() += n;
                    return Ok(metric.len());
                }
            } else if suffix.starts_with("|g") && !value.starts_with(['+', '-']) {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                pending.gauges.insert(key(), value.to_owned());
                return Ok(metric.len());
            }
        }
        self.udp.emit(metric)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.send_pending()
    }

    fn stats(&self) -> SinkStats {
        self.udp.stats()
    }
}

/// The recorder's handle on the shared sink.
struct SharedSink(Arc<AggregatingSink>);

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

/// Sends every StatsD line recorded so far. Services call it as they stop, so the metrics
/// of the last messages they processed (and committed) are not lost with the process.
pub fn flush() {
    if let Some(sink) = STATSD_SINK.get() {
        if let Err(e) = sink.flush() {
            tracing::debug!(error = %e, "StatsD flush");
        }
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
    let sink = Arc::new(AggregatingSink {
        udp,
        pending: Mutex::new(Pending::default()),
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_gauges_keep_the_last_value_and_samples_pass_through() {
        let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
        agent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink = AggregatingSink {
            udp: BufferedUdpMetricSink::with_capacity(agent.local_addr().unwrap(), socket, 1432)
                .unwrap(),
            pending: Mutex::new(Pending::default()),
        };
        for line in [
            "a:1|c|#t:x",
            "a:1|c|#t:x",
            "a:2|c|#t:y",
            "g:5|g",
            "g:7|g",
            "d:3|d|#t:x",
            "d:4|d|#t:x",
        ] {
            sink.emit(line).unwrap();
        }
        sink.flush().unwrap();
        let mut buf = [0u8; 2048];
        let n = agent.recv(&mut buf).unwrap();
        let mut lines: Vec<&str> = std::str::from_utf8(&buf[..n]).unwrap().lines().collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "a:2|c|#t:x",
                "a:2|c|#t:y",
                "d:3|d|#t:x",
                "d:4|d|#t:x",
                "g:7|g"
            ]
        );
        // Nothing is sent twice.
        sink.flush().unwrap();
        agent
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(agent.recv(&mut buf).is_err());
    }
}
