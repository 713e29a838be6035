//! Running the `trib` binary in tests, against a test broker.
#![allow(dead_code, unreachable_pub)]

use std::process::{Command, Output};

use tributary_testkit::TestBroker;

/// `trib args…` against `broker`, ignoring any `KAFKA_CONFIG` of the environment.
pub fn trib(broker: &TestBroker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trib"))
        .args(args)
        .env("KAFKA_BROKERS", broker.bootstrap())
        .env_remove("KAFKA_CONFIG")
        .output()
        .unwrap()
}

/// Its standard output, once it succeeded.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "trib failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}
