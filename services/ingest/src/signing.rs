//! Request signing (CONTRACTS.md): `X-Client-Id` and `X-Signature: t=<unix seconds>,v2=<hex
//! HMAC-SHA256(key, "<t>." + METHOD + "." + path with query + "." + raw body)>`. The older
//! `v1=<hex HMAC-SHA256(key, "<t>." + raw body)>` covers neither method nor path: it is
//! accepted for POST unless turned off (`INGEST_ACCEPT_V1=false`) and refused for DELETE,
//! where a captured empty-body signature would delete any product.
//!
//! The work before a client is known is bounded and the same for every request: the header
//! is at most [`MAX_HEADER_BYTES`], holds at most [`MAX_CANDIDATES`] signatures per scheme
//! (two keys during a rotation), each scheme's MAC is computed once whatever the number of
//! candidates, every candidate is compared in constant time, and an unknown client id costs
//! the same as a known one (its MACs are computed with a decoy key), so timing does not tell
//! which ids exist.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

/// The longest `X-Signature` header read: a timestamp and two signatures of each scheme
/// take about 300 bytes.
pub const MAX_HEADER_BYTES: usize = 512;

/// Signatures of one scheme a header may carry: the old and the new key during a rotation.
pub const MAX_CANDIDATES: usize = 2;

/// What a signature covers of a request.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The path with its query, as sent.
    pub path_and_query: &'a str,
    /// The raw body.
    pub body: &'a [u8],
}

/// Checks signatures against the configured client keys.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, Vec<u8>>,
    max_age_secs: i64,
    accept_v1: bool,
    /// The key an unknown client's MACs are computed with (equal work; never matches in
    /// effect, since the answer is a refusal whatever the comparison says).
    decoy: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("clients", &self.keys.keys().collect::<Vec<_>>())
            .field("max_age_secs", &self.max_age_secs)
            .field("accept_v1", &self.accept_v1)
            .finish()
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::Unauthorized(message.into())
}

/// A hex signature as 32 bytes; anything else as a value that cannot match (compared all
/// the same, so a malformed candidate costs what a wrong one does).
fn tag_of(hex_mac: &str) -> ([u8; 32], bool) {
    let mut tag = [0u8; 32];
    let ok = hex::decode_to_slice(hex_mac, &mut tag).is_ok();
    (tag, ok)
}

impl Verifier {
    /// A verifier for these clients; with none, every request is accepted unsigned.
    /// `accept_v1`: whether POSTs signed with the older `v1` scheme are accepted.
    pub fn new(keys: HashMap<String, Vec<u8>>, max_age_secs: u64, accept_v1: bool) -> Verifier {
        let decoy = keys
            .values()
            .next()
            .map_or_else(|| vec![0u8; 32], |k| vec![0x5a; k.len().max(1)]);
        Verifier {
            keys,
            max_age_secs: i64::try_from(max_age_secs).unwrap_or(i64::MAX),
            accept_v1,
            decoy,
        }
    }

    /// Whether signing is required.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// What can be refused before the body is read: a missing, malformed, oversized or
    /// stale signature header (the signature itself needs the body). An unknown client id
    /// is not told apart here.
    pub fn precheck(&self, headers: &HeaderMap, method: &Method, now: i64) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let request = Signed {
            method,
            path_and_query: "",
            body: b"",
        };
        self.parse(headers, request, now).map(|_| ())
    }

    /// The verified client id, or `None` when signing is off.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        request: Signed<'_>,
        now: i64,
    ) -> Result<Option<String>, ApiError> {
        if !self.enabled() {
            return Ok(None);
        }
        let parsed = self.parse(headers, request, now)?;
        let (key, known) = match self.keys.get(parsed.client) {
            Some(key) => (key.as_slice(), true),
            None => (self.decoy.as_slice(), false),
        };
        let t = parsed.t;
        let mut matched = 0u8;
        if !parsed.v2.is_empty() {
            let expected = mac_v2(key, t, request).finalize().into_bytes();
            for candidate in &parsed.v2 {
                let (tag, ok) = tag_of(candidate);
                matched |= u8::from(ok) & tag.ct_eq(expected.as_slice()).unwrap_u8();
            }
        }
        if parsed.use_v1 {
            let expected = mac(key, t, request.body).finalize().into_bytes();
            for candidate in &parsed.v1 {
                let (tag, ok) = tag_of(candidate);
                matched |= u8::from(ok) & tag.ct_eq(expected.as_slice()).unwrap_u8();
            }
        }
        // An unknown client and a wrong signature get the same answer: no client probing.
        if known && matched == 1 {
            Ok(Some(parsed.client.to_owned()))
        } else {
            Err(unauthorized("invalid signature"))
        }
    }

    /// The signature header, read and checked for form, size and age.
    fn parse<'h>(
        &self,
        headers: &'h HeaderMap,
        request: Signed<'_>,
        now: i64,
    ) -> Result<Parsed<'h>, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let client =
            header("x-client-id").ok_or_else(|| unauthorized("missing X-Client-Id header"))?;
        let signature =
            header("x-signature").ok_or_else(|| unauthorized("missing X-Signature header"))?;
        if signature.len() > MAX_HEADER_BYTES {
            return Err(unauthorized(format!(
                "X-Signature is longer than {MAX_HEADER_BYTES} bytes"
            )));
        }
        let mut timestamp = None;
        let (mut v1, mut v2) = (Vec::new(), Vec::new());
        for part in signature.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                Some(("v1", hex_mac)) => v1.push(hex_mac),
                Some(("v2", hex_mac)) => v2.push(hex_mac),
                _ => {}
            }
        }
        if v1.len() > MAX_CANDIDATES || v2.len() > MAX_CANDIDATES {
            return Err(unauthorized(format!(
                "X-Signature carries more than {MAX_CANDIDATES} signatures of one scheme"
            )));
        }
        let Some(t) = timestamp.filter(|_| !(v1.is_empty() && v2.is_empty())) else {
            return Err(unauthorized(
                "malformed X-Signature: expected t=<unix seconds>,v2=<hex hmac>",
            ));
        };
        if now.abs_diff(t) > self.max_age_secs.unsigned_abs() {
            return Err(unauthorized(format!(
                "signature timestamp is more than {} seconds from now",
                self.max_age_secs
            )));
        }
        // v1 signs neither method nor path.
        let use_v1 = !v1.is_empty() && self.accept_v1 && request.method != Method::DELETE;
        if v2.is_empty() && !use_v1 {
            return Err(unauthorized(if request.method == Method::DELETE {
                "a v1 signature does not cover the method and path: DELETE must be signed with v2"
            } else {
                "v1 signatures are not accepted here: sign with v2"
            }));
        }
        Ok(Parsed {
            client,
            t,
            v1,
            v2,
            use_v1,
        })
    }
}

/// A signature header that passed the checks of form, size and age.
struct Parsed<'h> {
    client: &'h str,
    t: i64,
    v1: Vec<&'h str>,
    v2: Vec<&'h str>,
    use_v1: bool,
}

/// The `v1` signature header value for `body` at `t` (older clients; POST only).
pub fn sign(key: &[u8], t: i64, body: &[u8]) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(mac(key, t, body).finalize().into_bytes())
    )
}

/// The `v2` signature header value for a request at `t`.
pub fn sign_v2(key: &[u8], t: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
    let request = Signed {
        method: &method,
        path_and_query,
        body,
    };
    format!(
        "t={t},v2={}",
        hex::encode(mac_v2(key, t, request).finalize().into_bytes())
    )
}

// MACs computed so far on this thread (tests check the work a request costs).
#[cfg(test)]
thread_local! {
    static MACS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn keyed(key: &[u8]) -> HmacSha256 {
    #[cfg(test)]
    MACS.with(|n| n.set(n.get() + 1));
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC-SHA256 takes keys of any length"))
}

/// HMAC-SHA256(key, "<t>." + body): the `v1` content.
fn mac(key: &[u8], t: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = keyed(key);
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// HMAC-SHA256(key, "<t>." + METHOD + "." + path with query + "." + body): the `v2` content.
fn mac_v2(key: &[u8], t: i64, request: Signed<'_>) -> HmacSha256 {
    let mut mac = keyed(key);
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(request.method.as_str().as_bytes());
    mac.update(b".");
    mac.update(request.path_and_query.as_bytes());
    mac.update(b".");
    mac.update(request.body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn verifier(accept_v1: bool) -> Verifier {
        Verifier::new(
            [("acme".to_owned(), b"s3cret".to_vec())].into(),
            300,
            accept_v1,
        )
    }

    fn headers(client: Option<&str>, signature: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(c) = client {
            h.insert("x-client-id", HeaderValue::from_str(c).unwrap());
        }
        if let Some(s) = signature {
            h.insert("x-signature", HeaderValue::from_str(s).unwrap());
        }
        h
    }

    fn post<'a>(path: &'a str, body: &'a [u8]) -> Signed<'a> {
        Signed {
            method: &Method::POST,
            path_and_query: path,
            body,
        }
    }

    fn delete(path: &str) -> Signed<'_> {
        Signed {
            method: &Method::DELETE,
            path_and_query: path,
            body: b"",
        }
    }

    #[test]
    fn a_valid_signature_of_either_scheme_names_its_client() {
        let v = verifier(true);
        let v2 = sign_v2(b"s3cret", 1000, "POST", "/v1/products", b"{}");
        let ok = |sig: &str, req| v.verify(&headers(Some("acme"), Some(sig)), req, 1010);
        assert_eq!(
            ok(&v2, post("/v1/products", b"{}")).unwrap(),
            Some("acme".into())
        );
        let v1 = sign(b"s3cret", 1000, b"{}");
        assert_eq!(
            ok(&v1, post("/v1/products", b"{}")).unwrap(),
            Some("acme".into())
        );
        let del = sign_v2(b"s3cret", 1000, "DELETE", "/v1/products/p-1", b"");
        assert_eq!(
            ok(&del, delete("/v1/products/p-1")).unwrap(),
            Some("acme".into())
        );
    }

    #[test]
    fn a_v2_signature_covers_method_and_path_and_v1_cannot_delete() {
        let v = verifier(true);
        let check = |sig: &str, req| v.verify(&headers(Some("acme"), Some(sig)), req, 1000);
        // A captured DELETE signature deletes that product only.
        let del = sign_v2(b"s3cret", 1000, "DELETE", "/v1/products/p-1", b"");
        assert!(check(&del, delete("/v1/products/p-2")).is_err());
        assert!(
            check(&del, post("/v1/products/p-1", b"")).is_err(),
            "another method"
        );
        let prices = sign_v2(b"s3cret", 1000, "POST", "/v1/prices", b"{}");
        assert!(
            check(&prices, post("/v1/stock", b"{}")).is_err(),
            "another path"
        );
        // v1 signs an empty body the same for every product: refused for DELETE.
        let v1 = sign(b"s3cret", 1000, b"");
        let Err(ApiError::Unauthorized(why)) = check(&v1, delete("/v1/products/p-2")) else {
            panic!("a v1 DELETE was accepted");
        };
        assert!(why.contains("v2"), "{why}");
        // And for POST too when turned off.
        let strict = verifier(false);
        let v1_post = sign(b"s3cret", 1000, b"{}");
        assert!(
            strict
                .verify(
                    &headers(Some("acme"), Some(&v1_post)),
                    post("/v1/products", b"{}"),
                    1000
                )
                .is_err()
        );
    }

    #[test]
    fn a_header_is_bounded_and_each_scheme_s_mac_is_computed_once() {
        let v = verifier(true);
        let good = sign_v2(b"s3cret", 1000, "POST", "/v1/products", b"{}");
        let mac_hex = good.split_once("v2=").unwrap().1;
        // Two candidates (a key rotation): one MAC, and the right one found.
        let wrong = "0".repeat(64);
        let two = format!("t=1000,v2={wrong},v2={mac_hex}");
        let before = MACS.with(std::cell::Cell::get);
        assert!(
            v.verify(
                &headers(Some("acme"), Some(&two)),
                post("/v1/products", b"{}"),
                1000
            )
            .is_ok()
        );
        assert_eq!(MACS.with(std::cell::Cell::get) - before, 1);
        // Three candidates, or a header of 100,000 of them: refused before any MAC.
        // A timestamp at the edge of i64 is stale, not an overflow.
        let edge = format!("t={},v2={mac_hex}", i64::MIN);
        assert!(
            v.verify(
                &headers(Some("acme"), Some(&edge)),
                post("/v1/products", b"{}"),
                1000
            )
            .is_err()
        );
        let three = format!("t=1000,v2={wrong},v2={wrong},v2={mac_hex}");
        let many = format!("t=1000{}", ",v1=00".repeat(100_000));
        for sig in [three, many] {
            let before = MACS.with(std::cell::Cell::get);
            assert!(
                v.verify(
                    &headers(Some("acme"), Some(&sig)),
                    post("/v1/products", b"{}"),
                    1000
                )
                .is_err()
            );
            assert_eq!(MACS.with(std::cell::Cell::get), before);
        }
    }

    #[test]
    fn an_unknown_client_costs_the_same_work_as_a_wrong_signature() {
        let v = verifier(true);
        let sig = format!("t=1000,v2={},v1={}", "1".repeat(64), "2".repeat(64));
        let work = |client: &str| {
            let before = MACS.with(std::cell::Cell::get);
            let answer = v.verify(
                &headers(Some(client), Some(&sig)),
                post("/v1/products", b"{}"),
                1000,
            );
            let Err(ApiError::Unauthorized(why)) = answer else {
                panic!("accepted");
            };
            (MACS.with(std::cell::Cell::get) - before, why)
        };
        assert_eq!(work("acme"), work("nobody"));
        assert_eq!(
            work("nobody").0,
            2,
            "both schemes' MACs, with the decoy key"
        );
    }

    #[test]
    fn missing_wrong_stale_and_unknown_are_refused() {
        let v = verifier(true);
        let req = post("/v1/products", b"{}");
        let good = sign_v2(b"s3cret", 1000, "POST", "/v1/products", b"{}");
        assert!(v.verify(&headers(None, Some(&good)), req, 1000).is_err());
        assert!(v.verify(&headers(Some("acme"), None), req, 1000).is_err());
        assert!(
            v.verify(
                &headers(Some("acme"), Some(&good)),
                post("/v1/products", b"{ }"),
                1000
            )
            .is_err(),
            "body changed"
        );
        let other = sign_v2(b"other", 1000, "POST", "/v1/products", b"{}");
        assert!(
            v.verify(&headers(Some("acme"), Some(&other)), req, 1000)
                .is_err()
        );
        assert!(
            v.verify(&headers(Some("acme"), Some(&good)), req, 1000 + 301)
                .is_err(),
            "stale"
        );
        assert!(
            v.verify(&headers(Some("bob"), Some(&good)), req, 1000)
                .is_err()
        );
        assert!(
            v.verify(&headers(Some("acme"), Some("garbage")), req, 1000)
                .is_err()
        );
    }

    #[test]
    fn without_keys_requests_are_open() {
        let open = Verifier::new(HashMap::new(), 300, true);
        assert_eq!(
            open.verify(&HeaderMap::new(), post("/v1/products", b"{}"), 0)
                .unwrap(),
            None
        );
    }
}
