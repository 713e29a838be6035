//! Topics, producers and consumers against a [`TestBroker`], with deadlines.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tributary_events::Envelope;

use crate::{Result, TestBroker, TestkitError};

/// Enqueues a record on `producer`, sleeping a millisecond at a time while its queue is full.
/// For benchmarks and test loads that enqueue faster than the broker acknowledges.
pub fn send_waiting<K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
) -> DeliveryFuture
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// A name no other test (in this run or an earlier one) uses: `<prefix>-<time>-<random>`.
pub fn unique_name(prefix: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{prefix}-{millis:x}-{:08x}", rand::rng().random::<u32>())
}

/// A record to produce: any key, value (`None` is a tombstone) and headers, so tests can
/// write bytes no service would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRecord {
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
}

impl RawRecord {
    /// A record with this key and value and no headers.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> RawRecord {
        RawRecord {
            key: Some(key.into()),
            value: Some(value.into()),
            headers: Vec::new(),
        }
    }

    /// The record a service writes for an envelope: its key, bytes and headers.
    pub fn from_envelope(envelope: &Envelope) -> RawRecord {
        RawRecord {
            key: Some(envelope.key.clone().into_bytes()),
            value: Some(envelope.encode()),
            headers: envelope
                .headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }
}

/// One consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value (`None` for a tombstone).
    pub value: Option<Vec<u8>>,
    /// Its headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    fn from_message(m: &BorrowedMessage<'_>) -> Record {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The key as text.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The first header with this name, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The value decoded as an envelope.
    pub fn envelope(&self) -> Result<Envelope, tributary_events::DecodeError> {
        Envelope::decode(self.value.as_deref().unwrap_or_default())
    }
}

impl TestBroker {
    /// Creates a topic named `<prefix>-<unique suffix>` and waits until it is visible.
    pub async fn create_topic(&self, prefix: &str, partitions: i32) -> Result<String> {
        let name = unique_name(prefix);
        self.create_named_topic(&name, partitions).await?;
        Ok(name)
    }

    /// Creates a topic with exactly this name and waits until every partition is visible.
    pub async fn create_named_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics([&topic], &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TestkitError::CreateTopic(topic, code)),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let config = self.client_config();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
            loop {
                let metadata = consumer.fetch_metadata(Some(&name), Duration::from_secs(2))?;
                let visible = metadata
                    .topics()
                    .iter()
                    .any(|t| t.error().is_none() && t.partitions().len() == partitions as usize);
                if visible {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(TestkitError::Deadline {
                        what: format!("topic {name} visible with {partitions} partitions"),
                        waited: Duration::from_secs(10),
                        received: 0,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .map_err(|e| TestkitError::Process(std::io::Error::other(e)))?
    }

    /// A producer as the services configure theirs: idempotent, `acks=all`.
    pub fn producer(&self) -> Result<FutureProducer> {
        Ok(self
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // A test that cannot deliver should fail in seconds, not after 5 minutes.
            .set("message.timeout.ms", "30000")
            .create()?)
    }

    /// A consumer in `group`, reading from the earliest offset, with the test session timeout.
    pub fn consumer(&self, group: &str) -> Result<StreamConsumer> {
        Ok(self
            .client_config()
            .set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", crate::FETCH_WAIT_MAX_MS)
            .create()?)
    }

    /// Publishes envelopes to `topic` (key and headers as the services write them) and
    /// waits until the broker acknowledged every one.
    pub async fn produce_envelopes(&self, topic: &str, envelopes: &[Envelope]) -> Result<()> {
        let records: Vec<RawRecord> = envelopes.iter().map(RawRecord::from_envelope).collect();
        self.produce_raw(topic, &records).await
    }

    /// Publishes raw records in order and waits for every ack.
    pub async fn produce_raw(&self, topic: &str, records: &[RawRecord]) -> Result<()> {
        let producer = self.producer()?;
        let mut deliveries = Vec::with_capacity(records.len());
        for raw in records {
            let headers = raw.headers.iter().fold(OwnedHeaders::new(), |hs, (k, v)| {
                hs.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
            if let Some(key) = &raw.key {
                record = record.key(key);
            }
            if let Some(value) = &raw.value {
                record = record.payload(value);
            }
            // Enqueue without waiting so the client batches; the queue is far larger than
            // any test's burst, and a full queue is waited out rather than failed.
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => {
                        return Err(TestkitError::Delivery {
                            topic: topic.to_owned(),
                            error,
                        });
                    }
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    return Err(TestkitError::Delivery {
                        topic: topic.to_owned(),
                        error,
                    });
                }
                Err(_) => {
                    return Err(TestkitError::Delivery {
                        topic: topic.to_owned(),
                        error: rdkafka::error::KafkaError::Canceled,
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads `topics` from the beginning in a fresh group until `done` holds for everything
    /// received so far, or fails when `deadline` passes first.
    pub async fn consume_until(
        &self,
        topics: &[&str],
        deadline: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Result<Vec<Record>> {
        let consumer = self.consumer(&unique_name("testkit-reader"))?;
        consumer.subscribe(topics)?;
        let started = Instant::now();
        let mut records = Vec::new();
        while !done(&records) {
            let remaining = deadline.saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, consumer.recv()).await {
                Ok(Ok(message)) => records.push(Record::from_message(&message)),
                // Transient client errors (a rebalance, a broker restart) are waited out.
                Ok(Err(_)) => {}
                Err(_) => {
                    return Err(TestkitError::Deadline {
                        what: format!("condition on {topics:?}"),
                        waited: started.elapsed(),
                        received: records.len(),
                    });
                }
            }
        }
        Ok(records)
    }

    /// Reads until `count` records arrived from `topics`, within `deadline`.
    pub async fn consume_count(
        &self,
        topics: &[&str],
        count: usize,
        deadline: Duration,
    ) -> Result<Vec<Record>> {
        self.consume_until(topics, deadline, |records| records.len() >= count)
            .await
    }
}
