//! The runtime every Tributary service stands on: Kafka clients and the topics a service
//! relies on. (The consumer loop, admin HTTP and telemetry join it next.)

pub mod topics;
