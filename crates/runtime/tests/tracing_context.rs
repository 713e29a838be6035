//! One trace id follows an event through a service: read from the input's headers or
//! envelope, written to the outputs' envelope and headers.

mod common;

use std::time::Duration;

use common::*;
use tributary_events::TraceParent;
use tributary_testkit::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outputs_carry_the_trace_id_of_their_input() {
    let broker = TestBroker::shared();
    let input = broker.create_topic("rt-trace-in", 1).await.unwrap();
    let output = broker.create_topic("rt-trace-out", 1).await.unwrap();
    let group = unique_group("rt-trace-group");
    let recorder = Recorder::new(Behaviour {
        forward_to: Some(output.clone()),
        ..Behaviour::default()
    });
    let (running, shutdown) = start(config(broker, &group), &[&input], recorder).await;

    let traced = TraceParent::new_root();
    broker
        .produce_envelopes(
            &input,
            &[stock("traced", 1).with_trace(traced), stock("untraced", 2)],
        )
        .await
        .unwrap();
    let records = broker
        .consume_count(&[&output], 2, Duration::from_secs(30))
        .await
        .unwrap();

    let first = records[0].envelope().unwrap();
    let carried = first.trace_parent().expect("the output is traced");
    assert_eq!(carried.trace_id, traced.trace_id, "same trace");
    assert_ne!(carried.parent_id, traced.parent_id, "a new span of it");
    assert_eq!(records[0].header("traceparent"), first.trace.as_deref());
    assert_eq!(records[0].header("trace"), first.trace.as_deref());

    // An input without a trace starts one, so every output is traceable.
    let second = records[1].envelope().unwrap();
    assert!(second.trace_parent().is_some());
    assert_ne!(second.trace_parent().unwrap().trace_id, traced.trace_id);

    shutdown.trigger();
    running.wait().await.unwrap();
}
