//! The aggregates HTTP API (CONTRACTS.md, port 8082): a product's or brand's windows, read
//! from the local state of the partition that holds them. A key on a partition another
//! instance owns is answered with where it lives (421), never with a wrong zero.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tributary_events::{Dimension, WindowSize};
use tributary_runtime::Health;
use tributary_state::{ReadError, StateReader};

use crate::aggregator::{
    CURSORS, META, Sweep, WINDOWS, cursor_key, cursor_or_start, stream_time_key,
};
use crate::window::{self, WindowState, parse_state_key, size_ms, start_of, state_key};

/// Windows one answer holds at most (a day of minutes is 1,440).
pub const MAX_WINDOWS: usize = 10_000;

/// What the API reads.
#[derive(Debug, Clone)]
pub struct Api {
    /// The owned partitions' state.
    pub reader: StateReader,
    /// Partitions of the activity (and repartition) topic.
    pub partitions: i32,
    /// The service's health (readiness).
    pub health: Health,
    /// Which instance serves the partitions this one does not.
    pub owners: crate::owners::Owners,
}

/// The API's routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/aggregates", get(aggregates))
        .with_state(api)
}

/// The partition a key is produced to: librdkafka's default partitioner
/// (`consistent_random`: CRC-32 of the key modulo the partition count), which every
/// producer of the suite uses.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    (crc32fast::hash(key.as_bytes()) % n) as i32
}

/// A query parameter refused, and why.
#[derive(Debug)]
struct BadParameter {
    parameter: String,
    message: String,
}

impl IntoResponse for BadParameter {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "invalid_parameter",
                "parameter": self.parameter,
                "message": format!("{}: {}", self.parameter, self.message),
            })),
        )
            .into_response()
    }
}

fn bad(parameter: &str, message: impl Into<String>) -> BadParameter {
    BadParameter {
        parameter: parameter.to_owned(),
        message: message.into(),
    }
}

/// The validated query.
struct Query {
    dim: Dimension,
    id: String,
    size: WindowSize,
    from_ms: i64,
    to_ms: i64,
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn parse(raw: Option<&str>) -> Result<Query, BadParameter> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
        .map_err(|e| bad("query", format!("not a valid query string: {e}")))?;
    let mut params: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &pairs {
        if params.insert(k.as_str(), v.as_str()).is_some() {
            return Err(bad(k, "given more than once"));
        }
    }
    let required = |name: &str| {
        params
            .get(name)
            .copied()
            .ok_or_else(|| bad(name, "required"))
    };
    let dim = match required("dim")? {
        "product" => Dimension::Product,
        "brand" => Dimension::Brand,
        other => {
            return Err(bad(
                "dim",
                format!("must be product or brand, not {:?}", truncate(other)),
            ));
        }
    };
    let id = required("id")?;
    if !valid_id(id) {
        return Err(bad(
            "id",
            "must be 1-128 characters of letters, digits, '.', '_', ':' and '-'",
        ));
    }
    let size = match required("window")? {
        "1m" => WindowSize::Minute,
        "1h" => WindowSize::Hour,
        other => {
            return Err(bad(
                "window",
                format!("must be 1m or 1h, not {:?}", truncate(other)),
            ));
        }
    };
    let instant = |name: &str, default: i64| match params.get(name) {
        None => Ok(default),
        Some(v) => chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.timestamp_millis())
            .map_err(|e| bad(name, format!("not an RFC 3339 instant ({e})"))),
    };
    let from_ms = instant("from", 0)?.max(0);
    // Up to the largest start a state key holds (13 digits of milliseconds).
    let to_ms = instant("to", 9_999_999_999_999)?.clamp(0, 9_999_999_999_999);
    if from_ms >= to_ms && params.contains_key("to") {
        return Err(bad("to", "must be after from"));
    }
    Ok(Query {
        dim,
        id: id.to_owned(),
        size,
        from_ms,
        to_ms,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

async fn aggregates(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let query = match parse(raw.as_deref()) {
        Ok(q) => q,
        Err(bad) => return bad.into_response(),
    };
    let partition = partition_of(&query.id, api.partitions);
    let reader = api.reader.clone();
    let (dim, id, size, from_ms, to_ms) = (
        query.dim,
        query.id.clone(),
        query.size,
        query.from_ms,
        query.to_ms,
    );
    let read = tokio::task::spawn_blocking(move || {
        read_windows(&reader, partition, dim, &id, size, from_ms, to_ms)
    })
    .await;
    let (rows, truncated) = match read {
        Ok(Ok(rows)) => rows,
        Ok(Err(ReadError::NotOwned(p))) => {
            let owner = api.owners.owner_of(p);
            let message = match &owner {
                Some(url) => format!(
                    "{} {} lives on partition {p}, which the instance at {url} serves; ask it",
                    query.dim.as_str(),
                    query.id
                ),
                None => format!(
                    "{} {} lives on partition {p}, which another instance serves (none has said which yet: a rebalance may be in progress); ask the instance that owns partition {p} of the aggregation group",
                    query.dim.as_str(),
                    query.id
                ),
            };
            let body = axum::Json(json!({
                "error": "not_owned",
                "message": message,
                "partition": p,
                "owner": owner,
                "owned": api.reader.owned(),
            }));
            return match owner {
                // The same request, at the owner.
                Some(url) => {
                    let location = format!("{url}/v1/aggregates?{}", raw.as_deref().unwrap_or(""));
                    (
                        StatusCode::MISDIRECTED_REQUEST,
                        [(header::LOCATION, location)],
                        body,
                    )
                        .into_response()
                }
                None => (StatusCode::MISDIRECTED_REQUEST, body).into_response(),
            };
        }
        Ok(Err(ReadError::Restoring(p))) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                axum::Json(json!({
                    "error": "restoring",
                    "message": format!("partition {p} is restoring its state"),
                    "partition": p,
                })),
            )
                .into_response();
        }
        Ok(Err(ReadError::Failed(e))) => {
            tracing::error!(error = %e, "Aggregates read failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": "state_unavailable", "message": e})),
            )
                .into_response();
        }
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": "internal", "message": e.to_string()})),
            )
                .into_response();
        }
    };
    let mut windows: Vec<Value> = Vec::new();
    for (start, state) in rows {
        for (_, row) in state.rows(query.dim, &query.id, query.size, start) {
            windows.push(json!({
                "start": window::millis(start).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "end": row.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "views": row.views,
                "carts": row.carts,
                "orders": row.orders,
                "units": row.units,
                "revenue_minor": row.revenue_minor,
                "currency": row.currency,
                "final": row.is_final,
            }));
        }
    }
    let _ = &api.health;
    axum::Json(json!({
        "dim": query.dim.as_str(),
        "id": query.id,
        "window": query.size.as_str(),
        "partition": partition,
        "truncated": truncated,
        "windows": windows,
    }))
    .into_response()
}

/// The committed windows of `id` starting in `[from_ms, to_ms)`, with `final` set on those
/// closed (the newest [`MAX_WINDOWS`] when more could exist, and then `true`). Window keys are time-ordered,
/// not id-ordered, so the windows are read by key, one per possible start: only starts
/// between the oldest window kept and the newest event time can hold one.
fn read_windows(
    reader: &StateReader,
    partition: i32,
    dim: Dimension,
    id: &str,
    size: WindowSize,
    from_ms: i64,
    to_ms: i64,
) -> Result<(Vec<(i64, WindowState)>, bool), ReadError> {
    let Some(stream_time) = reader.get(partition, &META, stream_time_key(dim))? else {
        return Ok((Vec::new(), false));
    };
    let close = cursor_or_start(
        reader.get(partition, &CURSORS, &cursor_key(Sweep::Close, dim, size))?,
        dim,
        size,
    );
    let purge = cursor_or_start(
        reader.get(partition, &CURSORS, &cursor_key(Sweep::Purge, dim, size))?,
        dim,
        size,
    );
    let oldest = parse_state_key(&purge).map_or(0, |(_, _, _, start)| start);
    let step = size_ms(size);
    let first = start_of(size, from_ms.max(oldest));
    let first = if first < from_ms { first + step } else { first };
    let end = to_ms.min(stream_time.saturating_add(1));
    // More possible starts than an answer holds: the newest ones (older windows left out,
    // `truncated` says so).
    let count = if end > first {
        (end - first - 1) / step + 1
    } else {
        0
    };
    let truncated = count > MAX_WINDOWS as i64;
    let first = if truncated {
        first + (count - MAX_WINDOWS as i64) * step
    } else {
        first
    };
    let starts: Vec<i64> = (0..)
        .map(|i| first + i * step)
        .take_while(|s| *s < end)
        .take(MAX_WINDOWS)
        .collect();
    let keys: Vec<String> = starts
        .iter()
        .map(|s| state_key(dim, id, size, *s))
        .collect();
    let values = reader.get_many(partition, &WINDOWS, &keys)?;
    let windows = keys
        .iter()
        .zip(starts)
        .zip(values)
        .filter_map(|((key, start), value)| {
            value.map(|mut w: WindowState| {
                w.is_final = *key < close;
                (start, w)
            })
        })
        .collect();
    Ok((windows, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_of_a_key_is_librdkafkas_consistent_hash() {
        // CRC-32 (IEEE) of "p-1" is 0x9BB5DC52 per the standard check tables.
        assert_eq!(
            crc32fast::hash(b"123456789"),
            0xCBF4_3926,
            "the standard CRC-32 check value"
        );
        for key in ["p-1", "b-7", "x"] {
            let p = partition_of(key, 6);
            assert!((0..6).contains(&p));
            assert_eq!(p, partition_of(key, 6));
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = |q: &str| {
            let Err(bad) = parse(Some(q)) else {
                panic!("{q} accepted")
            };
            assert_eq!(bad.into_response().status(), StatusCode::BAD_REQUEST);
        };
        err("id=p&window=1m");
        err("dim=shop&id=p&window=1m");
        err("dim=product&id=&window=1m");
        err("dim=product&id=a%7Cb&window=1m");
        err("dim=product&id=p&window=5m");
        err("dim=product&id=p&window=1m&from=yesterday");
        err("dim=product&id=p&window=1m&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z");
        err("dim=product&dim=brand&id=p&window=1m");
        assert!(parse(Some("dim=brand&id=b-1&window=1h&from=2026-01-01T00:00:00Z")).is_ok());
    }
}
