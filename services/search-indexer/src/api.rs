//! The search HTTP API (CONTRACTS.md, port 8081): `GET /v1/search` and
//! `GET /v1/products/{product_id}`, answered from the live index generation (each request
//! holds the generation it started on, so a swap never fails a search in flight).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::index::ProductIndex;
use crate::query::{self, BadParameter, SearchError};

/// Which index answers: the live generation's, looked up per request.
pub type LiveIndex = Arc<dyn Fn() -> Arc<ProductIndex> + Send + Sync>;

/// Searches run at once, at most, per core: each counts and facets every match on a
/// blocking thread, and a burst must not starve indexing of the machine.
pub const SEARCHES_PER_CORE: usize = 2;

/// How long a search waits for its turn before it is answered 503.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
struct Api {
    live: LiveIndex,
    slots: Arc<tokio::sync::Semaphore>,
}

/// The API's routes.
pub fn router(live: LiveIndex) -> Router {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let api = Api {
        live,
        slots: Arc::new(tokio::sync::Semaphore::new(cores * SEARCHES_PER_CORE)),
    };
    tributary_runtime::admin::json_fallbacks(
        Router::new()
            .route("/v1/search", get(search))
            .route("/v1/products/{product_id}", get(product))
            .with_state(api),
    )
}

fn bad_parameter(b: BadParameter) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({
            "error": "invalid_parameter",
            "parameter": b.parameter,
            "message": format!("{}: {}", b.parameter, b.message),
        })),
    )
        .into_response()
}

fn unavailable(message: String) -> Response {
    tracing::error!(error = %message, "Search failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": "index_unavailable", "message": message})),
    )
        .into_response()
}

async fn search(State(api): State<Api>, RawQuery(raw): RawQuery) -> Response {
    let started = std::time::Instant::now();
    let params = match query::parse(raw.as_deref()) {
        Ok(p) => p,
        Err(b) => return bad_parameter(b),
    };
    let Ok(Ok(_slot)) = tokio::time::timeout(QUEUE_WAIT, api.slots.acquire()).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            axum::Json(json!({
                "error": "overloaded",
                "message": "too many searches at once; retry after a second",
            })),
        )
            .into_response();
    };
    let index = (api.live)();
    let answer = tokio::task::spawn_blocking(move || query::search(&index, &params)).await;
    metrics::histogram!("search.query.seconds").record(started.elapsed().as_secs_f64());
    match answer {
        Ok(Ok(body)) => (StatusCode::OK, axum::Json(body)).into_response(),
        Ok(Err(SearchError::Bad(b))) => bad_parameter(b),
        Ok(Err(SearchError::Index(e))) => unavailable(e.to_string()),
        Err(e) => unavailable(format!("search task: {e}")),
    }
}

async fn product(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if !tributary_events::rules::is_id(&id) {
        return bad_parameter(BadParameter {
            parameter: "product_id".into(),
            message: format!(
                "must be 1-128 characters of letters, digits, '.', '_', ':' and '-', not {:?}",
                query::shown(&id)
            ),
        });
    }
    let index = (api.live)();
    let lookup = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || index.get(&id)).await
    };
    match lookup {
        Ok(Ok(Some(entry))) => match entry.product {
            Some(product) => {
                let mut doc = serde_json::to_value(&product).unwrap_or(Value::Null);
                doc["popularity"] = json!(entry.popularity.map_or(0, |p| p.value()));
                (StatusCode::OK, axum::Json(doc)).into_response()
            }
            None => not_found(&id),
        },
        Ok(Ok(None)) => not_found(&id),
        Ok(Err(e)) => unavailable(e.to_string()),
        Err(e) => unavailable(format!("lookup task: {e}")),
    }
}

fn not_found(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "error": "not_found",
            "message": format!("no searchable product {id}"),
        })),
    )
        .into_response()
}
