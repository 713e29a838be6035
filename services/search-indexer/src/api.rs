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

/// The API's routes.
pub fn router(live: LiveIndex) -> Router {
    tributary_runtime::admin::json_fallbacks(
        Router::new()
            .route("/v1/search", get(search))
            .route("/v1/products/{product_id}", get(product))
            .with_state(live),
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

async fn search(State(live): State<LiveIndex>, RawQuery(raw): RawQuery) -> Response {
    let started = std::time::Instant::now();
    let params = match query::parse(raw.as_deref()) {
        Ok(p) => p,
        Err(b) => return bad_parameter(b),
    };
    let index = live();
    let answer = tokio::task::spawn_blocking(move || query::search(&index, &params)).await;
    metrics::histogram!("search.query.seconds").record(started.elapsed().as_secs_f64());
    match answer {
        Ok(Ok(body)) => (StatusCode::OK, axum::Json(body)).into_response(),
        Ok(Err(SearchError::Bad(b))) => bad_parameter(b),
        Ok(Err(SearchError::Index(e))) => unavailable(e.to_string()),
        Err(e) => unavailable(format!("search task: {e}")),
    }
}

async fn product(State(live): State<LiveIndex>, Path(id): Path<String>) -> Response {
    if !tributary_events::rules::is_id(&id) {
        return bad_parameter(BadParameter {
            parameter: "product_id".into(),
            message: format!(
                "must be 1-128 characters of letters, digits, '.', '_', ':' and '-', not {:?}",
                query::shown(&id)
            ),
        });
    }
    let index = live();
    let lookup = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || index.get(&id)).await
    };
    match lookup {
        Ok(Ok(Some(entry))) => match entry.product {
            Some(product) => {
                let mut doc = serde_json::to_value(&product).unwrap_or(Value::Null);
                doc["popularity"] = json!(entry.popularity.map_or(0, |p| p.score));
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
