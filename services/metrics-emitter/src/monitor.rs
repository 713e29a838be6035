//! The lag monitor's gauges: the shared evaluation (`tributary_cluster::lag`) sent as
//! `kafka.consumer.lag` and `kafka.consumer.status`.

pub use tributary_cluster::lag::monitor::*;

/// Metric names (before the configured prefix).
pub mod names {
    /// Gauge, tags `group`, `topic`, `partition`: high watermark minus committed offset.
    pub const LAG: &str = "kafka.consumer.lag";
    /// Gauge, tag `group`: 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 REWIND, 5 ERR.
    pub const STATUS: &str = "kafka.consumer.status";
}

/// Sends the report as gauges.
pub fn export(report: &LagReport) {
    for group in &report.groups {
        metrics::gauge!(names::STATUS, "group" => group.group.clone())
            .set(f64::from(group.status.code()));
        for p in &group.partitions {
            if let Some(lag) = p.lag {
                metrics::gauge!(names::LAG, "group" => group.group.clone(), "topic" => p.topic.clone(), "partition" => p.partition.to_string())
                    .set(lag as f64);
            }
        }
    }
}
