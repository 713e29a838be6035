//! The client's settings, read from the same librdkafka properties the services use
//! (`bootstrap.servers`, `security.protocol`, `sasl.*`, `ssl.*`), so one `KAFKA_CONFIG`
//! configures every client of a service alike.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// How to reach and authenticate to the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `host:port` of the bootstrap brokers.
    pub bootstrap: Vec<String>,
    /// Sent as the request header's client id.
    pub client_id: String,
    /// The longest one request (including connecting) may take.
    pub request_timeout: Duration,
    /// TLS, when `security.protocol` is `ssl` or `sasl_ssl`.
    pub tls: Option<TlsConfig>,
    /// SASL, when `security.protocol` is `sasl_plaintext` or `sasl_ssl`.
    pub sasl: Option<SaslConfig>,
}

/// TLS settings (librdkafka's `ssl.*`).
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// `ssl.ca.location`: PEM file of trusted CAs; the system's roots when unset.
    pub ca_location: Option<PathBuf>,
    /// `ssl.certificate.location` and `ssl.key.location`: a client certificate (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `enable.ssl.certificate.verification=false`: accept any certificate (tests only).
    pub verify_certificate: bool,
    /// `ssl.endpoint.identification.algorithm=none`: check the chain, not the host name.
    pub verify_hostname: bool,
}

/// A SASL mechanism and its credentials (librdkafka's `sasl.*`).
#[derive(Clone)]
pub struct SaslConfig {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// `sasl.username`.
    pub username: String,
    /// `sasl.password`.
    pub password: String,
}

impl std::fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The SASL mechanisms this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN`.
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl Mechanism {
    /// The mechanism's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Properties that change how a connection is secured, which this client does not
/// implement: refusing them beats connecting in a way the operator did not ask for.
const UNSUPPORTED: [&str; 8] = [
    "ssl.keystore.location",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.ca.pem",
    "ssl.crl.location",
    "sasl.kerberos.service.name",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.method",
];

impl ClusterConfig {
    /// Reads librdkafka properties: `bootstrap.servers` (or `metadata.broker.list`),
    /// `client.id`, `socket.timeout.ms`, `security.protocol`, `sasl.mechanism(s)`,
    /// `sasl.username`, `sasl.password`, `ssl.ca.location`, `ssl.certificate.location`,
    /// `ssl.key.location`, `enable.ssl.certificate.verification` and
    /// `ssl.endpoint.identification.algorithm`. A security setting it cannot honour is an
    /// error naming the property.
    pub fn from_properties(properties: &HashMap<String, String>) -> Result<ClusterConfig, Error> {
        let get = |key: &str| {
            properties
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let invalid = |key: &str, reason: String| Error::Config {
            key: key.to_owned(),
            reason,
        };
        if let Some(key) = UNSUPPORTED.iter().find(|k| get(k).is_some()) {
            return Err(invalid(
                key,
                "is not supported by the cluster client".into(),
            ));
        }
        let bootstrap: Vec<String> = get("bootstrap.servers")
            .or_else(|| get("metadata.broker.list"))
            .ok_or_else(|| invalid("bootstrap.servers", "is not set".into()))?
            .split(',')
            .map(|b| b.trim())
            .filter(|b| !b.is_empty())
            .map(|b| {
                // librdkafka accepts `PLAINTEXT://host:port` too.
                let b = b.split_once("://").map_or(b, |(_, rest)| rest);
                if b.rsplit_once(':').is_some() {
                    b.to_owned()
                } else {
                    format!("{b}:9092")
                }
            })
            .collect();
        if bootstrap.is_empty() {
            return Err(invalid("bootstrap.servers", "names no broker".into()));
        }
        let request_timeout = match get("socket.timeout.ms") {
            Some(ms) => Duration::from_millis(
                ms.parse::<u64>()
                    .map_err(|e| invalid("socket.timeout.ms", e.to_string()))?,
            ),
            None => Duration::from_secs(10),
        };
        let protocol = get("security.protocol")
            .unwrap_or("plaintext")
            .to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => {
                return Err(invalid(
                    "security.protocol",
                    format!("`{other}` is not plaintext, ssl, sasl_plaintext or sasl_ssl"),
                ));
            }
        };
        let tls = tls
            .then(|| -> Result<TlsConfig, Error> {
                let flag = |key: &str| -> Result<bool, Error> {
                    match get(key) {
                        None | Some("true") => Ok(true),
                        Some("false") => Ok(false),
                        Some(other) => Err(invalid(key, format!("`{other}` is not true or false"))),
                    }
                };
                let client_cert = match (get("ssl.certificate.location"), get("ssl.key.location")) {
                    (Some(cert), Some(key)) => Some((cert.into(), key.into())),
                    (None, None) => None,
                    _ => {
                        return Err(invalid(
                            "ssl.certificate.location",
                            "needs ssl.key.location with it".into(),
                        ));
                    }
                };
                if get("ssl.key.password").is_some() {
                    return Err(invalid(
                        "ssl.key.password",
                        "encrypted keys are not supported by the cluster client".into(),
                    ));
                }
                Ok(TlsConfig {
                    ca_location: get("ssl.ca.location").map(PathBuf::from),
                    client_cert,
                    verify_certificate: flag("enable.ssl.certificate.verification")?,
                    verify_hostname: !get("ssl.endpoint.identification.algorithm")
                        .is_some_and(|a| a.eq_ignore_ascii_case("none")),
                })
            })
            .transpose()?;
        let sasl = sasl
            .then(|| -> Result<SaslConfig, Error> {
                let name = get("sasl.mechanism")
                    .or_else(|| get("sasl.mechanisms"))
                    .unwrap_or("GSSAPI");
                let mechanism = match name.to_ascii_uppercase().as_str() {
                    "PLAIN" => Mechanism::Plain,
                    "SCRAM-SHA-256" => Mechanism::ScramSha256,
                    "SCRAM-SHA-512" => Mechanism::ScramSha512,
                    _ => {
                        return Err(invalid(
                            "sasl.mechanism",
                            format!(
                                "`{name}` is not supported by the cluster client (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
                            ),
                        ));
                    }
                };
                Ok(SaslConfig {
                    mechanism,
                    username: get("sasl.username")
                        .ok_or_else(|| invalid("sasl.username", "is not set".into()))?
                        .to_owned(),
                    password: properties
                        .get("sasl.password")
                        .cloned()
                        .ok_or_else(|| invalid("sasl.password", "is not set".into()))?,
                })
            })
            .transpose()?;
        Ok(ClusterConfig {
            bootstrap,
            client_id: get("client.id").unwrap_or("tributary").to_owned(),
            request_timeout,
            tls,
            sasl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<ClusterConfig, Error> {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ClusterConfig::from_properties(&map)
    }

    #[test]
    fn plaintext_by_default_with_every_bootstrap_broker() {
        let c = config(&[("bootstrap.servers", "a:1, PLAINTEXT://b:2,c")]).unwrap();
        assert_eq!(c.bootstrap, ["a:1", "b:2", "c:9092"]);
        assert!(c.tls.is_none() && c.sasl.is_none());
    }

    #[test]
    fn sasl_ssl_with_scram_is_read_like_librdkafka() {
        let c = config(&[
            ("bootstrap.servers", "k:9093"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("ssl.endpoint.identification.algorithm", "none"),
        ])
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca_location.unwrap(), PathBuf::from("/etc/ca.pem"));
        assert!(tls.verify_certificate && !tls.verify_hostname);
        let sasl = c.sasl.unwrap();
        assert_eq!(sasl.mechanism, Mechanism::ScramSha512);
        assert!(!format!("{sasl:?}").contains("\"p\""), "password redacted");
    }

    #[test]
    fn settings_it_cannot_honour_are_refused_by_name() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[], "bootstrap.servers"),
            (&[("security.protocol", "kerberos")], "security.protocol"),
            (&[("security.protocol", "sasl_plaintext")], "sasl.mechanism"),
            (
                &[
                    ("security.protocol", "sasl_plaintext"),
                    ("sasl.mechanism", "PLAIN"),
                ],
                "sasl.username",
            ),
            (
                &[
                    ("security.protocol", "ssl"),
                    ("ssl.certificate.location", "/c.pem"),
                ],
                "ssl.certificate.location",
            ),
            (
                &[("ssl.keystore.location", "/k.p12")],
                "ssl.keystore.location",
            ),
        ];
        for (pairs, key) in cases {
            let mut all = vec![("bootstrap.servers", "k:1")];
            if key == "bootstrap.servers" {
                all.clear();
            }
            all.extend_from_slice(pairs);
            match config(&all) {
                Err(Error::Config { key: got, .. }) => assert_eq!(got, key, "{pairs:?}"),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }
}
