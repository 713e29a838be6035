//! The ingest HTTP API, through a real HTTP client, against the real server and broker.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tributary_events::{Event, EventType, topics};
use tributary_testkit::{TestBroker, unique_name};

fn product(id: &str) -> Value {
    json!({"product_id": id, "brand_id": "acme", "sku": format!("SKU-{id}"), "name": "Tee", "category": "tops"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_publishes_envelopes_with_key_headers_and_trace() {
    let broker = TestBroker::shared();
    let api = start(broker, config(broker)).await;
    let p1 = unique_name("p");
    let p2 = unique_name("p");

    // Products: an array, with a caller's trace context.
    let parent = tributary_events::TraceParent::new_root();
    let res = api
        .http
        .post(format!("{}/v1/products", api.base))
        .header("traceparent", parent.to_string())
        .json(&json!([product(&p1), product(&p2)]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    let product_ids = ids(&body);
    let mut records = published(broker, topics::PRODUCTS, &product_ids).await;
    assert_eq!(records.len(), 2);
    // The answer's ids are in request order (the two keys may sit on different partitions).
    records.sort_by_key(|(_, e)| product_ids.iter().position(|id| *id == e.id.to_string()));
    for ((record, envelope), expected_key) in records.iter().zip([&p1, &p2]) {
        assert_eq!(
            record.key_str(),
            Some(expected_key.as_str()),
            "keyed by product_id"
        );
        assert_eq!(envelope.key, *expected_key);
        assert_eq!(envelope.source, "ingest");
        assert_eq!(envelope.event_type(), EventType::ProductUpserted);
        assert_eq!(record.header("type"), Some("catalog.product.upserted"));
        assert_eq!(record.header("v"), Some("1"));
        assert_eq!(record.header("trace"), envelope.trace.as_deref());
        assert_eq!(
            envelope.trace_parent().unwrap().trace_id,
            parent.trace_id,
            "the caller's trace"
        );
        let Event::ProductUpserted(p) = &envelope.event else {
            panic!()
        };
        assert_eq!(p.sku, format!("SKU-{expected_key}"));
    }

    // Prices: one object.
    let res = api
        .http
        .post(format!("{}/v1/prices", api.base))
        .json(&json!({"product_id": p1, "currency": "EUR", "wholesale_minor": 1250, "retail_minor": 2999}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let price_ids = ids(&res.json().await.unwrap());
    let (_, price) = &published(broker, topics::PRICES, &price_ids).await[0];
    assert_eq!(price.event_type(), EventType::PriceUpdated);
    assert!(
        price.trace_parent().is_some(),
        "a new trace when the caller sends none"
    );

    // Stock: NDJSON.
    let ndjson = format!(
        "{}\n{}\n",
        json!({"product_id": p1, "quantity": 5}),
        json!({"product_id": p2, "quantity": 0, "warehouse": "ams-1"})
    );
    let res = api
        .http
        .post(format!("{}/v1/stock", api.base))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let stock_ids = ids(&res.json().await.unwrap());
    let stock = published(broker, topics::STOCK, &stock_ids).await;
    assert_eq!(stock.len(), 2);
    assert!(
        stock
            .iter()
            .all(|(_, e)| e.event_type() == EventType::StockChanged)
    );

    // Activity: each kind its own type; event time from the payload.
    let res = api
        .http
        .post(format!("{}/v1/activity", api.base))
        .json(&json!([
            {"kind": "product_viewed", "product_id": p1, "retailer_id": "r-1", "time": "2026-11-01T10:00:00Z"},
            {"kind": "added_to_cart", "product_id": p1, "retailer_id": "r-1", "quantity": 2},
            {"kind": "order_placed", "product_id": p1, "retailer_id": "r-1", "quantity": 2,
             "unit_price_minor": 1250, "currency": "EUR", "order_id": "o-1"}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let activity_ids = ids(&res.json().await.unwrap());
    let activity = published(broker, topics::ACTIVITY, &activity_ids).await;
    let types: Vec<EventType> = activity.iter().map(|(_, e)| e.event_type()).collect();
    assert_eq!(
        types,
        vec![
            EventType::ProductViewed,
            EventType::AddedToCart,
            EventType::OrderPlaced
        ]
    );
    assert_eq!(activity[0].1.time.to_rfc3339(), "2026-11-01T10:00:00+00:00");

    // Delete.
    let res = api
        .http
        .delete(format!("{}/v1/products/{p2}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let deleted_ids = ids(&res.json().await.unwrap());
    let (record, deleted) = &published(broker, topics::PRODUCTS, &deleted_ids).await[0];
    assert_eq!(deleted.event_type(), EventType::ProductDeleted);
    assert_eq!(record.key_str(), Some(p2.as_str()));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_get_their_status_and_a_json_body_naming_the_problem() {
    let broker = TestBroker::shared();
    let mut cfg = config(broker);
    cfg.max_body_bytes = 4096;
    cfg.max_events = 3;
    let api = start(broker, cfg).await;
    let post = |path: &str| api.http.post(format!("{}{path}", api.base));

    // 400: every violation, with index and path.
    let res = post("/v1/prices")
        .json(&json!([
            {"product_id": "p-1", "currency": "EUR", "wholesale_minor": 1, "retail_minor": 2},
            {"product_id": "p 2", "currency": "eur", "wholesale_minor": "12"}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "validation_failed");
    let details: Vec<(u64, &str)> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["index"].as_u64().unwrap(), d["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        details,
        vec![
            (1, "/retail_minor"),
            (1, "/currency"),
            (1, "/product_id"),
            (1, "/wholesale_minor")
        ]
    );
    assert!(
        body["details"][3]["message"]
            .as_str()
            .unwrap()
            .contains("expected integer")
    );

    // 400 for a bad id in a DELETE path.
    let res = api
        .http
        .delete(format!("{}/v1/products/bad%20id", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["details"][0]["path"], "/product_id");

    // 413: body and event count.
    let res = post("/v1/products")
        .json(&json!([product(&"x".repeat(5000))]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );
    let res = post("/v1/products")
        .json(&json!([
            product("a"),
            product("b"),
            product("c"),
            product("d")
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);

    // 415.
    let res = post("/v1/products")
        .header("content-type", "text/plain")
        .body(product("a").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "unsupported_media_type"
    );

    // The rejections are counted, by type and by status.
    let metrics = api
        .http
        .get(format!("{}/metrics", api.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tributary_ingest_events_rejected{type=\"catalog.price.updated\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"413\""), "{metrics}");

    // 404 and 405 are JSON too; 405 says which methods the path takes.
    let res = post("/v1/nothing").body("{}").send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "not_found");
    let res = reqwest::Client::new()
        .get(format!("{}/v1/products", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_ndjson_line_is_named_and_nothing_from_the_request_is_published() {
    let broker = TestBroker::shared();
    let api = start(broker, config(broker)).await;
    let doomed = unique_name("doomed");
    let lines = format!(
        "{}\n{}\n{{\"product_id\": \"{doomed}-3\", \"quantity\": \n{}\n",
        json!({"product_id": format!("{doomed}-1"), "quantity": 1}),
        json!({"product_id": format!("{doomed}-2"), "quantity": 2}),
        json!({"product_id": format!("{doomed}-4"), "quantity": 4}),
    );
    let res = api
        .http
        .post(format!("{}/v1/stock", api.base))
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["details"].as_array().unwrap().len(), 1);
    assert_eq!(body["details"][0]["index"], 2);
    assert!(
        body["details"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("line 3:")
    );

    // Sentinels with the same keys land on the same partitions after anything the rejected
    // request could have published; read up to all of them and look for strays.
    let sentinels: Vec<Value> = (1..=4)
        .map(|i| json!({"product_id": format!("{doomed}-{i}"), "quantity": 999}))
        .collect();
    let res = api
        .http
        .post(format!("{}/v1/stock", api.base))
        .json(&sentinels)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let sentinel_ids = ids(&res.json().await.unwrap());
    let records = published(broker, topics::STOCK, &sentinel_ids).await;
    assert_eq!(records.len(), 4);
    let all = broker
        .consume_until(&[topics::STOCK], Duration::from_secs(30), |records| {
            let seen = records
                .iter()
                .filter_map(|r| r.envelope().ok())
                .filter(|e| sentinel_ids.contains(&e.id.to_string()))
                .count();
            seen == 4
        })
        .await
        .unwrap();
    let leaked: Vec<String> = all
        .iter()
        .filter_map(|r| r.envelope().ok())
        .filter(|e| e.key.starts_with(&doomed) && !sentinel_ids.contains(&e.id.to_string()))
        .map(|e| e.key)
        .collect();
    assert!(
        leaked.is_empty(),
        "published from a rejected request: {leaked:?}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_returns_the_first_answer_and_publishes_once() {
    let broker = TestBroker::shared();
    let api = start(broker, config(broker)).await;
    let key = unique_name("idem");
    let id = unique_name("p");
    let send = |body: Value| {
        api.http
            .post(format!("{}/v1/products", api.base))
            .header("idempotency-key", &key)
            .json(&body)
            .send()
    };
    let first: Value = send(json!([product(&id)]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = send(json!([product(&id)])).await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again, "same answer, same ids");
    let conflict = send(json!([product("someone-else")])).await.unwrap();
    assert_eq!(conflict.status(), 422);

    // Exactly one copy on the topic: a sentinel with the same key lands on the same
    // partition after anything the retry could have published; read up to it and count.
    let sentinel = ids(&api
        .http
        .post(format!("{}/v1/products", api.base))
        .json(&product(&id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap());
    let mut wanted = ids(&first);
    wanted.extend(sentinel);
    let copies = broker
        .consume_until(&[topics::PRODUCTS], Duration::from_secs(30), |records| {
            records
                .iter()
                .filter_map(|r| r.envelope().ok())
                .any(|e| e.id.to_string() == wanted[1])
        })
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r.envelope().ok())
        .filter(|e| e.id.to_string() == wanted[0])
        .collect::<Vec<_>>();
    assert_eq!(copies.len(), 1);
    // A derived id is still time-sortable: its time part is the envelope's time.
    assert_eq!(
        copies[0].id.timestamp_ms() as i64,
        copies[0].time.timestamp_millis()
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signatures_are_required_checked_and_must_be_fresh() {
    let broker = TestBroker::shared();
    let mut cfg = config(broker);
    cfg.client_keys = ingest::config::Secret("acme:s3cret,other:k2".into());
    let api = start(broker, cfg).await;
    let body = serde_json::to_vec(&product(&unique_name("p"))).unwrap();
    let now = chrono::Utc::now().timestamp();
    let send = |client: Option<&str>, signature: Option<String>| {
        let mut req = api
            .http
            .post(format!("{}/v1/products", api.base))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(c) = client {
            req = req.header("x-client-id", c);
        }
        if let Some(s) = signature {
            req = req.header("x-signature", s);
        }
        req.send()
    };
    let cases = [
        ("missing", send(None, None).await.unwrap()),
        (
            "wrong key",
            send(
                Some("acme"),
                Some(ingest::signing::sign(b"nope", now, &body)),
            )
            .await
            .unwrap(),
        ),
        (
            "stale",
            send(
                Some("acme"),
                Some(ingest::signing::sign(b"s3cret", now - 301, &body)),
            )
            .await
            .unwrap(),
        ),
        (
            "other client's key",
            send(
                Some("other"),
                Some(ingest::signing::sign(b"s3cret", now, &body)),
            )
            .await
            .unwrap(),
        ),
    ];
    for (case, res) in cases {
        assert_eq!(res.status(), 401, "{case}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"],
            "unauthorized",
            "{case}"
        );
    }
    let ok = send(
        Some("acme"),
        Some(ingest::signing::sign(b"s3cret", now, &body)),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 202);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_needs_a_v2_signature_of_its_own_path_and_v1_can_be_turned_off() {
    let broker = TestBroker::shared();
    let mut cfg = config(broker);
    cfg.client_keys = ingest::config::Secret("acme:s3cret".into());
    cfg.accept_v1 = false;
    let api = start(broker, cfg).await;
    let now = chrono::Utc::now().timestamp();
    let delete = |path: String, signature: String| {
        api.http
            .delete(format!("{}{path}", api.base))
            .header("x-client-id", "acme")
            .header("x-signature", signature)
            .send()
    };
    let (p1, p2) = (unique_name("p"), unique_name("p"));
    let path1 = format!("/v1/products/{p1}");
    let path2 = format!("/v1/products/{p2}");
    // v1 signs only the (empty) body: the same signature would delete any product.
    let v1 = ingest::signing::sign(b"s3cret", now, b"");
    let res = delete(path1.clone(), v1).await.unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("v2"), "{body}");
    // A v2 signature deletes the product it was made for, and no other.
    let v2 = ingest::signing::sign_v2(b"s3cret", now, "DELETE", &path1, b"");
    assert_eq!(
        delete(path2.clone(), v2.clone()).await.unwrap().status(),
        401
    );
    assert_eq!(delete(path1.clone(), v2).await.unwrap().status(), 202);
    // With INGEST_ACCEPT_V1=false a v1 POST is refused and a v2 POST accepted.
    let body = serde_json::to_vec(&product(&p2)).unwrap();
    let post = |signature: String| {
        api.http
            .post(format!("{}/v1/products", api.base))
            .header("content-type", "application/json")
            .header("x-client-id", "acme")
            .header("x-signature", signature)
            .body(body.clone())
            .send()
    };
    let v1 = ingest::signing::sign(b"s3cret", now, &body);
    assert_eq!(post(v1).await.unwrap().status(), 401);
    let v2 = ingest::signing::sign_v2(b"s3cret", now, "POST", "/v1/products", &body);
    assert_eq!(post(v2).await.unwrap().status(), 202);
    // A header stuffed with candidates (as many as the HTTP server lets through) is
    // refused outright.
    let stuffed = format!("t={now}{}", ",v2=00".repeat(5_000));
    assert_eq!(post(stuffed).await.unwrap().status(), 401);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let broker = TestBroker::shared();
    let mut cfg = config(broker);
    cfg.rate_limit = 1.0;
    cfg.rate_burst = Some(2.0);
    let api = start(broker, cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let res = api
            .http
            .post(format!("{}/v1/products", api.base))
            .json(&product(&unique_name("p")))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(res.headers().get("retry-after").is_some());
            assert_eq!(res.json::<Value>().await.unwrap()["error"], "rate_limited");
        }
    }
    assert_eq!(statuses, vec![202, 202, 429]);
    api.stop().await;
}
