//! The dev signing key and the demo data set, loaded through the ingest HTTP API exactly as
//! a brand or an app would send it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The client id `cargo xtask up` configures when no keys are given.
pub(crate) const DEV_CLIENT: &str = "dev";

/// The dev key: kept in `.tributary/dev-client-key` so it survives restarts of the stack.
pub(crate) fn dev_key(root: &Path) -> anyhow::Result<String> {
    let path = root.join(".tributary").join("dev-client-key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        if !key.trim().is_empty() {
            return Ok(key.trim().to_owned());
        }
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let key = hex::encode(bytes);
    std::fs::create_dir_all(path.parent().unwrap_or(root))?;
    std::fs::write(&path, &key)?;
    Ok(key)
}

/// A ready-to-paste signed request for the README's curious reader.
pub(crate) fn curl_example(key: &str) -> String {
    format!(
        r#"  body='{{"product_id":"p-1","brand_id":"acme","sku":"TEE-1","name":"Tee","category":"tops"}}'
  t=$(date +%s); sig=$(printf '%s.POST./v1/products.%s' "$t" "$body" | openssl dgst -sha256 -hmac '{key}' | sed 's/^.* //')
  curl -sS -X POST http://127.0.0.1:8080/v1/products -H 'Content-Type: application/json' \
       -H 'X-Client-Id: {DEV_CLIENT}' -H "X-Signature: t=$t,v2=$sig" -d "$body""#
    )
}

/// The `v2` signature of CONTRACTS.md: it covers the method and path, not only the body.
fn sign(key: &str, t: u64, method: &str, path: &str, body: &[u8]) -> anyhow::Result<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).context("hmac key")?;
    for part in [t.to_string().as_bytes(), method.as_bytes(), path.as_bytes()] {
        mac.update(part);
        mac.update(b".");
    }
    mac.update(body);
    Ok(format!(
        "t={t},v2={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// A minimal HTTP/1.1 request over a fresh connection; returns (status, body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits until ingest's admin port says it is ready.
pub(crate) fn wait_ready(admin: &str, deadline: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok((200, _)) = request(admin, "GET", "/readyz", &[], b"") {
            return Ok(());
        }
        if started.elapsed() > deadline {
            bail!("ingest was not ready within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Posts one batch as a careful client does: with an `Idempotency-Key`, and retrying what
/// ingest asks to be retried (`429`, `503`) after the `retry_after` it gives, a few times.
fn post(
    api: &str,
    key: &str,
    path: &str,
    events: &[Value],
    idempotency_key: &str,
) -> anyhow::Result<usize> {
    let body = serde_json::to_vec(events)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let headers = [
            ("Content-Type", "application/json".to_owned()),
            ("X-Client-Id", DEV_CLIENT.to_owned()),
            ("X-Signature", sign(key, t, "POST", path, &body)?),
            ("Idempotency-Key", idempotency_key.to_owned()),
        ];
        let (status, answer) = request(api, "POST", path, &headers, &body)?;
        match status {
            202 => return Ok(events.len()),
            429 | 503 if attempt < 6 => {
                let wait = serde_json::from_str::<Value>(&answer)
                    .ok()
                    .and_then(|v| v["retry_after"].as_u64())
                    .unwrap_or(1)
                    .clamp(1, 5);
                eprintln!("xtask: POST {path} answered {status}; retrying in {wait}s");
                std::thread::sleep(Duration::from_secs(wait));
            }
            _ => bail!("POST {path} answered {status}: {answer}"),
        }
    }
}

/// Loads 1,200 products of 12 brands with prices and stock, and 3,000 activity events.
pub(crate) fn load(api: &str, key: &str) -> anyhow::Result<()> {
    const BRANDS: [&str; 12] = [
        "acme",
        "northwind",
        "fjord",
        "sahara",
        "kumo",
        "linden",
        "oak-and-ash",
        "pacifica",
        "quartz",
        "rivet",
        "solstice",
        "tundra",
    ];
    const CATEGORIES: [&str; 6] = ["tops", "trousers", "dresses", "shoes", "bags", "outerwear"];
    const WORDS: [&str; 10] = [
        "Organic",
        "Linen",
        "Merino",
        "Recycled",
        "Classic",
        "Relaxed",
        "Cropped",
        "Oversized",
        "Heavyweight",
        "Tailored",
    ];
    const COLOURS: [&str; 4] = ["navy", "black", "sand", "olive"];
    const SIZES: [&str; 3] = ["S", "M", "L"];
    let mut products = Vec::new();
    let mut prices = Vec::new();
    let mut stock = Vec::new();
    for i in 0..1200usize {
        let id = format!("p-{i:05}");
        let brand = BRANDS[i % BRANDS.len()];
        let category = CATEGORIES[(i / 7) % CATEGORIES.len()];
        products.push(json!({
            "product_id": id, "brand_id": brand, "sku": format!("{}-{i:05}", brand.to_uppercase()),
            "name": format!("{} {} {}", WORDS[i % 10], WORDS[(i / 10) % 10].to_lowercase(), category.trim_end_matches('s')),
            "category": category,
            "description": format!("A {} piece from {brand}.", category.trim_end_matches('s')),
            "attributes": {"colour": COLOURS[i % 4], "size": SIZES[i % 3]}
        }));
        let retail = 1_500 + (i as u64 * 37) % 20_000;
        prices.push(json!({"product_id": id, "currency": "EUR", "wholesale_minor": retail / 2, "retail_minor": retail}));
        stock.push(json!({"product_id": id, "quantity": (i * 13) % 60, "warehouse": "ams-1"}));
    }
    let mut activity = Vec::new();
    for i in 0..3000usize {
        let product = format!("p-{:05}", (i * 7919) % 1200);
        let retailer = format!("r-{:03}", i % 40);
        let event = match i % 10 {
            0 => json!({"kind": "order_placed", "product_id": product, "retailer_id": retailer,
                        "quantity": 1 + i % 4, "unit_price_minor": 1500 + (i % 50) * 10,
                        "currency": "EUR", "order_id": format!("o-{i:05}")}),
            1..=3 => {
                json!({"kind": "added_to_cart", "product_id": product, "retailer_id": retailer, "quantity": 1 + i % 3})
            }
            _ => json!({"kind": "product_viewed", "product_id": product, "retailer_id": retailer}),
        };
        activity.push(event);
    }
    let started = Instant::now();
    // Idempotency keys unique to this load, so a retried batch is published once.
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let mut total = 0;
    for (path, events) in [
        ("/v1/products", &products),
        ("/v1/prices", &prices),
        ("/v1/stock", &stock),
        ("/v1/activity", &activity),
    ] {
        for (i, chunk) in events.chunks(500).enumerate() {
            total += post(api, key, path, chunk, &format!("demo-{run}-{path}-{i}"))?;
        }
    }
    println!(
        "xtask: demo loaded {total} events (1,200 products of 12 brands with prices and stock, 3,000 activity events) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
