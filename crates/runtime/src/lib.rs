//! The runtime every Tributary service stands on: Kafka clients and the topics a service
//! relies on. (The consumer loop, admin HTTP and telemetry join it next.)

pub mod kafka;
pub mod topics;
/// The Kafka client, re-exported so tools use the exact version the runtime does.
pub use rdkafka;
