//! The consumer's client context: librdkafka's logs, errors, statistics and rebalance
//! callbacks, all of which run on the poll thread (logs on librdkafka's own threads).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics::counter;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

use super::Shared;
use crate::metrics::names;
use crate::processor::Processor;

/// The context of the loop's consumer.
pub(crate) struct LoopContext<P> {
    pub(crate) shared: Arc<Shared<P>>,
}

impl<P: Processor> ClientContext for LoopContext<P> {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if facility.contains("MAXPOLL") {
            counter!(names::MAX_POLL_EXCEEDED).increment(1);
            tracing::error!(
                facility,
                message,
                "Left the consumer group: max.poll.interval.ms exceeded"
            );
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, message, "librdkafka")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.shared.health.set_broker_reachable(false);
        }
        tracing::warn!(error = %error, reason, "Kafka client error");
    }

    fn stats(&self, statistics: Statistics) {
        for slot in self.shared.table().iter() {
            let part = &slot.part;
            let hi = statistics
                .topics
                .get(&*part.id.topic)
                .and_then(|t| t.partitions.get(&part.id.partition))
                .map(|p| p.hi_offset);
            if let Some(hi) = hi.filter(|hi| *hi >= 0) {
                part.high_watermark.store(hi, Ordering::Relaxed);
            }
        }
    }
}

impl<P: Processor> ConsumerContext for LoopContext<P> {
    // rdkafka's default `rebalance` assigns incrementally under cooperative protocols and
    // wholesale under eager ones, calling these two around it.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => self.shared.revoke(consumer, tpl),
            // On a rebalance error rdkafka unassigns without a revocation: treat it as one
            // of everything we own.
            Rebalance::Error(_) => {
                let mut tpl = rdkafka::TopicPartitionList::new();
                for slot in self.shared.table().iter() {
                    tpl.add_partition(&slot.part.id.topic, slot.part.id.partition);
                }
                self.shared.revoke(consumer, &tpl);
            }
            Rebalance::Assign(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.shared.assign(consumer, tpl),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance error"),
        }
    }
}
