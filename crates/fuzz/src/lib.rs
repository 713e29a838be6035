//! Fuzz target bodies: each takes arbitrary bytes, must never panic, and asserts what must
//! hold for every input it accepts. The cargo-fuzz targets in `fuzz/` call them (`cargo xtask
//! fuzz`), and `tests/corpus.rs` runs them over the seeds and every crash ever found.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use ingest::body::Format;
use ingest::events::{Ids, Route};
use search_indexer::index::ProductIndex;
use tributary_events::{Envelope, TraceParent};

/// A record value as every consumer decodes it. The fast path may only accept what the
/// schema walker accepts, as the same envelope; whatever decodes encodes and decodes back
/// to itself.
pub fn envelope(data: &[u8]) {
    let decoded = Envelope::decode(data);
    let checked = Envelope::decode_checked(data);
    if let Some(fast) = Envelope::decode_fast(data) {
        assert_eq!(
            checked.as_ref().ok(),
            Some(&fast),
            "the fast path accepted what the walker does not, or read it differently"
        );
    }
    assert_eq!(
        decoded.as_ref().ok(),
        checked.as_ref().ok(),
        "decode and the walker disagree"
    );
    if let Ok(envelope) = decoded {
        let again = Envelope::decode(&envelope.encode()).expect("an encoded envelope decodes");
        assert_eq!(again, envelope, "encode then decode changed the envelope");
    }
}

/// The routes a fuzz input can pick with its first byte.
const ROUTES: [Route; 4] = [
    Route::Products,
    Route::Prices,
    Route::Stock,
    Route::Activity,
];

/// An ingest request body: the first byte picks the route (low two bits) and the format
/// (JSON or NDJSON), the rest is the body. Whatever ingest would publish must be envelopes
/// that every consumer decodes back to the same value: ingest never publishes what its
/// consumers would dead-letter.
pub fn ingest_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[usize::from(selector & 3)];
    let format = if selector & 4 == 0 {
        Format::Json
    } else {
        Format::Ndjson
    };
    let Ok(values) = ingest::body::events(body, format, 1_000) else {
        return;
    };
    let now = Utc
        .timestamp_millis_opt(1_764_000_000_000)
        .single()
        .expect("a fixed instant");
    let Ok(envelopes) =
        ingest::events::envelopes(route, values, now, TraceParent::new_root(), &Ids::Fresh)
    else {
        return;
    };
    for envelope in envelopes {
        let decoded = Envelope::decode(&envelope.encode())
            .expect("what ingest publishes, its consumers decode");
        assert_eq!(decoded, envelope, "published and decoded envelopes differ");
    }
}

/// An empty index in a temporary directory, opened once per process.
fn index() -> &'static ProductIndex {
    static INDEX: OnceLock<ProductIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tributary-fuzz-index-{}", std::process::id()));
        ProductIndex::open(&dir, 15_000_000, Duration::from_secs(1)).expect("a temporary index")
    })
}

/// A search query string: parsed as the API parses it and, when valid, run against an
/// (empty) index. A bad parameter is an answer, never a panic.
pub fn search_query(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    if let Ok(params) = search_indexer::query::parse(Some(&raw)) {
        let _ = search_indexer::query::search(index(), &params);
    }
}
