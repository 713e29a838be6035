//! A StatsD agent on a local UDP port that sums every counter it receives, per metric name,
//! tags and sending service: what Datadog would show for the run.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// Counter totals: (name, sorted tags without `service`) → sum, per sending service.
type Totals = BTreeMap<(String, String, Vec<String>), f64>;

/// The agent; it runs until the process ends.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Where services send their metrics.
    pub addr: SocketAddr,
    totals: Arc<Mutex<Totals>>,
}

impl Agent {
    /// Binds a free port and starts reading.
    pub fn start() -> anyhow::Result<Agent> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        let totals = Arc::new(Mutex::new(Totals::new()));
        let sink = totals.clone();
        std::thread::Builder::new()
            .name("statsd-agent".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let mut totals = sink.lock().unwrap_or_else(|e| e.into_inner());
                    for line in text.lines() {
                        if let Some((service, name, tags, value)) = parse_counter(line) {
                            *totals.entry((service, name, tags)).or_default() += value;
                        }
                    }
                }
            })?;
        Ok(Agent { addr, totals })
    }

    /// The total of counter `name` sent by `service`, over every tag combination that
    /// contains all of `tags`.
    pub fn total(&self, service: &str, name: &str, tags: &[&str]) -> f64 {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals
            .iter()
            .filter(|((s, n, t), _)| {
                s == service && n == name && tags.iter().all(|tag| t.iter().any(|x| x == tag))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// `name:value|c|#tag:v,…` → (service, name, other tags sorted, value); `None` for any other
/// metric type.
fn parse_counter(line: &str) -> Option<(String, String, Vec<String>, f64)> {
    let (name, rest) = line.split_once(':')?;
    let mut parts = rest.split('|');
    let value: f64 = parts.next()?.parse().ok()?;
    if parts.next()? != "c" {
        return None;
    }
    let mut service = String::new();
    let mut tags = Vec::new();
    for part in parts {
        if let Some(list) = part.strip_prefix('#') {
            for tag in list.split(',') {
                match tag.strip_prefix("service:") {
                    Some(s) => service = s.to_owned(),
                    None => tags.push(tag.to_owned()),
                }
            }
        }
    }
    tags.sort();
    Some((service, name.to_owned(), tags, value))
}

#[cfg(test)]
mod tests {
    use super::parse_counter;

    #[test]
    fn counters_are_parsed_with_their_tags_and_service_and_other_types_ignored() {
        assert_eq!(
            parse_counter(
                "tributary.activity.event:3|c|#service:metrics-emitter,kind:order_placed"
            ),
            Some((
                "metrics-emitter".into(),
                "tributary.activity.event".into(),
                vec!["kind:order_placed".into()],
                3.0
            ))
        );
        assert_eq!(parse_counter("tributary.lag:3|g|#service:x"), None);
        assert_eq!(parse_counter("garbage"), None);
    }
}
