//! A bare transactional rdkafka producer against the dev broker, with no Tributary code in
//! the path: nisshi 0.8.1 refuses `init_transactions` ("Transactional Id authorization
//! failed"), which is why `trib`'s handling of partitions ending in transaction markers is
//! untested here (ARCHITECTURE notes in docs/architecture.md).
//!
//! `cargo run -p tributary-testkit --example transactions_refused`

use std::time::Duration;

use rdkafka::producer::{BaseProducer, Producer};
use tributary_testkit::TestBroker;

fn main() {
    let broker = TestBroker::start().expect("a dev broker");
    let producer: BaseProducer = broker
        .client_config()
        .set("transactional.id", "bare-transactions")
        .create()
        .expect("a producer");
    match producer.init_transactions(Duration::from_secs(30)) {
        Ok(()) => println!("init_transactions succeeded: the broker supports transactions"),
        Err(e) => println!("init_transactions refused: {e}"),
    }
}
