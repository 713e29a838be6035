//! Request signing: `X-Client-Id` and `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key,
//! "<t>." + raw body)>`, refused when stale; compared in constant time.

use std::collections::HashMap;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

/// Checks signatures against the configured client keys.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, Vec<u8>>,
    max_age_secs: i64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("clients", &self.keys.keys().collect::<Vec<_>>())
            .field("max_age_secs", &self.max_age_secs)
            .finish()
    }
}

impl Verifier {
    /// A verifier for these clients; with none, every request is accepted unsigned.
    pub fn new(keys: HashMap<String, Vec<u8>>, max_age_secs: u64) -> Verifier {
        Verifier {
            keys,
            max_age_secs: i64::try_from(max_age_secs).unwrap_or(i64::MAX),
        }
    }

    /// Whether signing is required.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The verified client id, or `None` when signing is off.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Option<String>, ApiError> {
        if !self.enabled() {
            return Ok(None);
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let client = header("x-client-id")
            .ok_or_else(|| ApiError::Unauthorized("missing X-Client-Id header".into()))?;
        let signature = header("x-signature")
            .ok_or_else(|| ApiError::Unauthorized("missing X-Signature header".into()))?;
        let mut timestamp = None;
        let mut candidates = Vec::new();
        for part in signature.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                Some(("v1", hex_mac)) => candidates.push(hex_mac),
                _ => {}
            }
        }
        let (Some(t), false) = (timestamp, candidates.is_empty()) else {
            return Err(ApiError::Unauthorized(
                "malformed X-Signature: expected t=<unix seconds>,v1=<hex hmac>".into(),
            ));
        };
        if (now - t).abs() > self.max_age_secs {
            return Err(ApiError::Unauthorized(format!(
                "signature timestamp is more than {} seconds from now",
                self.max_age_secs
            )));
        }
        // An unknown client and a wrong signature get the same answer: no client probing.
        let refused = || ApiError::Unauthorized("invalid signature".into());
        let key = self.keys.get(client).ok_or_else(refused)?;
        for candidate in candidates {
            let Ok(expected) = hex::decode(candidate) else {
                continue;
            };
            // verify_slice compares in constant time.
            if mac(key, t, body).verify_slice(&expected).is_ok() {
                return Ok(Some(client.to_owned()));
            }
        }
        Err(refused())
    }
}

/// The signature header value for `body` at `t` (for clients, tests and the dev example).
pub fn sign(key: &[u8], t: i64, body: &[u8]) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(mac(key, t, body).finalize().into_bytes())
    )
}

/// HMAC-SHA256(key, "<t>." + body), the signed content of the contract.
fn mac(key: &[u8], t: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC-SHA256 takes keys of any length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn verifier() -> Verifier {
        Verifier::new([("acme".to_owned(), b"s3cret".to_vec())].into(), 300)
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

    #[test]
    fn a_valid_signature_names_its_client() {
        let sig = sign(b"s3cret", 1000, b"{}");
        assert_eq!(
            verifier()
                .verify(&headers(Some("acme"), Some(&sig)), b"{}", 1010)
                .unwrap(),
            Some("acme".into())
        );
    }

    #[test]
    fn missing_wrong_stale_and_unknown_are_refused() {
        let v = verifier();
        let good = sign(b"s3cret", 1000, b"{}");
        assert!(v.verify(&headers(None, Some(&good)), b"{}", 1000).is_err());
        assert!(v.verify(&headers(Some("acme"), None), b"{}", 1000).is_err());
        assert!(
            v.verify(&headers(Some("acme"), Some(&good)), b"{ }", 1000)
                .is_err(),
            "body changed"
        );
        assert!(
            v.verify(
                &headers(Some("acme"), Some(&sign(b"other", 1000, b"{}"))),
                b"{}",
                1000
            )
            .is_err()
        );
        assert!(
            v.verify(&headers(Some("acme"), Some(&good)), b"{}", 1000 + 301)
                .is_err(),
            "stale"
        );
        assert!(
            v.verify(&headers(Some("bob"), Some(&good)), b"{}", 1000)
                .is_err()
        );
        assert!(
            v.verify(&headers(Some("acme"), Some("garbage")), b"{}", 1000)
                .is_err()
        );
    }

    #[test]
    fn without_keys_requests_are_open() {
        let open = Verifier::new(HashMap::new(), 300);
        assert_eq!(open.verify(&HeaderMap::new(), b"{}", 0).unwrap(), None);
    }
}
