//! Decoding cost per record: `Envelope::decode` (parse, validate every field against the
//! schema, build the typed event) next to an untyped `serde_json` parse of the same bytes,
//! the floor any JSON consumer pays. Prints JSON lines for `cargo xtask bench`.

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;
use tributary_events::{Envelope, Event, Price, Product, TraceParent};

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let product = Envelope::new(
        "bench",
        Event::ProductUpserted(Product {
            product_id: "p-12345".into(),
            brand_id: "b-17".into(),
            sku: "SKU-00012345".into(),
            name: "Organic cotton tee, heavyweight".into(),
            category: "tops".into(),
            description: Some("x".repeat(120)),
            attributes: None,
            images: None,
        }),
    )
    .with_trace(TraceParent::new_root());
    let price = Envelope::new(
        "bench",
        Event::PriceUpdated(Price {
            product_id: "p-12345".into(),
            currency: "EUR".into(),
            wholesale_minor: 1250,
            retail_minor: 2999,
        }),
    );
    vec![("product", product.encode()), ("price", price.encode())]
}

fn rate(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    f64::from(n) / started.elapsed().as_secs_f64()
}

fn main() {
    let n: u32 = std::env::var("BENCH_DECODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    for (name, bytes) in samples() {
        let ours = rate(n, || {
            black_box(Envelope::decode(black_box(&bytes)).is_ok());
        });
        let baseline = rate(n, || {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).is_ok());
        });
        println!(
            "{}",
            json!({"bench": "decode", "scenario": format!("decode + validate a {name} envelope"),
                   "messages": n, "record_bytes": bytes.len(), "ours_per_s": ours.round(),
                   "baseline_per_s": baseline.round(), "ratio": (ours / baseline * 100.0).round() / 100.0})
        );
    }
}
