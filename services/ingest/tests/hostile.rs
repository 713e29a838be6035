//! At least a hundred generated hostile bodies: the server always answers 4xx with a JSON
//! body, never panics, and stays ready.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use std::time::Duration;

use tributary_testkit::TestBroker;

/// One hostile request: path, content type and body bytes.
type Hostile = (&'static str, Option<&'static str>, Vec<u8>);

fn valid_product() -> Value {
    json!({"product_id": "p-1", "brand_id": "acme", "sku": "S", "name": "Tee", "category": "tops"})
}

fn handcrafted() -> Vec<Hostile> {
    let json_type = Some("application/json");
    let full = serde_json::to_vec(&valid_product()).unwrap();
    let mut cases: Vec<Hostile> = Vec::new();
    // Every truncation of a valid body.
    for cut in 0..full.len() {
        cases.push(("/v1/products", json_type, full[..cut].to_vec()));
    }
    // Wrong types for each field.
    for (field, value) in [
        ("product_id", json!(5)),
        ("brand_id", json!(null)),
        ("sku", json!([])),
        ("name", json!({})),
        ("category", json!(true)),
        ("attributes", json!({"a": 1})),
        ("images", json!("one")),
    ] {
        let mut v = valid_product();
        v[field] = value;
        cases.push(("/v1/products", json_type, serde_json::to_vec(&v).unwrap()));
    }
    for body in [
        json!({"product_id": "p", "currency": "EUR", "wholesale_minor": 1.5, "retail_minor": 1}),
        json!({"product_id": "p", "currency": "EUR", "wholesale_minor": -1, "retail_minor": 1e30}),
        json!({"product_id": "p", "quantity": "3"}),
        json!({"kind": "order_placed", "product_id": "p", "retailer_id": "r"}),
        json!({"kind": 7}),
        json!([1, "two", null]),
        json!("just a string"),
        json!(null),
    ] {
        cases.push(("/v1/prices", json_type, serde_json::to_vec(&body).unwrap()));
        cases.push((
            "/v1/activity",
            json_type,
            serde_json::to_vec(&body).unwrap(),
        ));
    }
    // Huge strings (under the body limit) and deep nesting.
    let mut long = valid_product();
    long["name"] = json!("n".repeat(100_000));
    cases.push((
        "/v1/products",
        json_type,
        serde_json::to_vec(&long).unwrap(),
    ));
    cases.push((
        "/v1/products",
        json_type,
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
    ));
    cases.push((
        "/v1/products",
        json_type,
        format!("{}1{}", "{\"a\":".repeat(3000), "}".repeat(3000)).into_bytes(),
    ));
    // Invalid UTF-8, control bytes, BOMs.
    cases.push((
        "/v1/products",
        json_type,
        b"{\"product_id\": \"\xff\xfe\"}".to_vec(),
    ));
    cases.push(("/v1/products", json_type, b"\xef\xbb\xbf{}".to_vec()));
    cases.push((
        "/v1/stock",
        Some("application/x-ndjson"),
        b"\x00\x01\x02\n{\n".to_vec(),
    ));
    // Wrong content types.
    for content_type in [
        "text/plain",
        "application/xml",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ] {
        cases.push((
            "/v1/products",
            Some(content_type),
            serde_json::to_vec(&valid_product()).unwrap(),
        ));
    }
    // Oversized: a body over 1 MiB, and an array over 10,000 events.
    cases.push(("/v1/products", json_type, vec![b' '; 1024 * 1024 + 10]));
    let many: Vec<Value> = (0..10_001).map(|_| json!({})).collect();
    cases.push(("/v1/stock", json_type, serde_json::to_vec(&many).unwrap()));
    cases
}

/// Random mutations of valid bodies: flipped, inserted and deleted bytes.
fn mutated(count: usize) -> Vec<Hostile> {
    let mut runner = TestRunner::deterministic();
    let base = serde_json::to_vec(&json!([valid_product(), valid_product()])).unwrap();
    let strategy =
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6);
    (0..count)
        .map(|_| {
            let edits = strategy.new_tree(&mut runner).unwrap().current();
            let mut body = base.clone();
            for (index, byte, op) in edits {
                let i = index.index(body.len());
                match op {
                    0 => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ => {
                        body.remove(i);
                    }
                }
            }
            ("/v1/products", Some("application/json"), body)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bodies_get_4xx_json_answers_and_the_server_stays_ready() {
    let broker = TestBroker::shared();
    let api = start(broker, config(broker)).await;
    api.wait_ready().await;
    let mut cases = handcrafted();
    cases.extend(mutated(60));
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut accepted = 0;
    // A fresh connection per case: the server may close a connection after refusing a body
    // it did not read (413), and a pooled connection could then race that close.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for (i, (path, content_type, body)) in cases.into_iter().enumerate() {
        let mut req = http.post(format!("{}{path}", api.base)).body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("case {i}: no answer: {e}"));
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let parsed: Result<Value, _> = serde_json::from_str(&text);
        assert!(
            parsed.is_ok(),
            "case {i}: status {status}, body not JSON: {text:.200}"
        );
        if status == 202 {
            // A mutation may still be a valid request (a changed letter in a name).
            accepted += 1;
            continue;
        }
        assert!(
            (400..500).contains(&status),
            "case {i}: status {status}: {text:.300}"
        );
        assert!(
            parsed.unwrap()["error"].is_string(),
            "case {i}: names the error"
        );
    }
    assert!(
        accepted < 30,
        "most hostile bodies must be refused ({accepted} accepted)"
    );
    let health = api
        .http
        .get(format!("{}/healthz", api.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = api
        .http
        .get(format!("{}/readyz", api.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "still ready");
    let ok = api
        .http
        .post(format!("{}/v1/products", api.base))
        .json(&valid_product())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202, "still serving");
    api.stop().await;
}

/// Sends `head` (request line and headers, then the blank line) and `body_part` on a fresh
/// connection, never the rest of the body, and returns the status line ingest answers with
/// while the connection stays open.
async fn answer_to_an_unfinished_request(addr: &str, head: &str, body_part: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body_part).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the body was unfinished");
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickled_body_times_out_and_unauthenticated_bodies_are_not_read() {
    let broker = TestBroker::shared();
    let mut cfg = config(broker);
    cfg.body_timeout_ms = 300;
    let api = start(broker, cfg).await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    // Slow-loris: 100 bytes announced, one sent.
    let head = "POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let status = answer_to_an_unfinished_request(&addr, head, b"{").await;
    assert!(status.contains(" 408 "), "{status}");
    // Headers trickled (or a kept-alive connection left idle): the connection is closed.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"POST /v1/products HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a connection with unfinished headers stayed open"
        );
    }
    api.stop().await;

    let mut cfg = config(broker);
    cfg.client_keys = ingest::config::Secret("acme:s3cret".into());
    let api = start(broker, cfg).await;
    let addr = api.base.trim_start_matches("http://").to_owned();
    // No signature: refused before the body (never sent) is read.
    let status = answer_to_an_unfinished_request(&addr, head, b"").await;
    assert!(status.contains(" 401 "), "{status}");
    // A signed-looking request announcing twice the size limit: refused at once, its body
    // (never sent) not waited for.
    let now = chrono::Utc::now().timestamp();
    let big = format!(
        "POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Client-Id: acme\r\nX-Signature: t={now},v2={}\r\n\r\n",
        2 * 1024 * 1024,
        "0".repeat(64)
    );
    let status = answer_to_an_unfinished_request(&addr, &big, b"[").await;
    assert!(status.contains(" 413 "), "{status}");
    api.stop().await;
}
