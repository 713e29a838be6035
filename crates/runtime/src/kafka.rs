//! Kafka client settings shared by every service and tool.

use rdkafka::ClientConfig;

/// Why extra client properties could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertyError {
    /// Not `key=value`.
    #[error("invalid Kafka property {0:?}: expected key=value")]
    Malformed(String),
    /// A setting the runtime's guarantees rest on.
    #[error("KAFKA_CONFIG may not set {key}: {why}")]
    Protected {
        /// The refused key.
        key: String,
        /// What it would break, and what to use instead.
        why: &'static str,
    },
}

/// Settings the delivery guarantees rest on, refused in `KAFKA_CONFIG`, with the reason.
pub const PROTECTED: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "the runtime commits an offset only after everything produced from it is acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "the runtime stores offsets through its per-partition watermark",
    ),
    (
        "isolation.level",
        "consumers read committed records only (read_committed)",
    ),
    (
        "enable.idempotence",
        "the producer must be idempotent so retries neither duplicate nor reorder",
    ),
    (
        "acks",
        "outputs count as delivered only once all in-sync replicas have them (acks=all)",
    ),
    (
        "enable.gapless.guarantee",
        "the runtime purges the producer on a lost assignment or a freeze, which gapless makes fatal",
    ),
    (
        "request.required.acks",
        "an alias of acks, which is fixed to all",
    ),
    (
        "group.id",
        "set the consumer group with GROUP_ID (--group-id)",
    ),
    (
        "group.instance.id",
        "set static membership with GROUP_INSTANCE_ID (--group-instance-id)",
    ),
    (
        "check.crcs",
        "librdkafka skips a record that fails its CRC check with only an error event, and the \
         offsets after it would be committed over it",
    ),
];

/// Parses librdkafka properties in the `KAFKA_CONFIG` form.
///
/// Items are separated by `;` when the text has one (so values may hold commas),
/// otherwise by `,`; in the comma form an item without `=` continues the previous value
/// (`debug=broker,topic,linger.ms=5` sets `debug` to `broker,topic`). Empty items are
/// skipped, so a trailing separator is harmless.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, PropertyError> {
    let semicolons = text.contains(';');
    let separator = if semicolons { ';' } else { ',' };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in text
        .split(separator)
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                pairs.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            None if !semicolons && !pairs.is_empty() => {
                let last = pairs.len() - 1;
                pairs[last].1.push(',');
                pairs[last].1.push_str(item);
            }
            _ => return Err(PropertyError::Malformed(item.to_owned())),
        }
    }
    Ok(pairs)
}

/// Refuses the settings in [`PROTECTED`].
pub fn check_unprotected(pairs: &[(String, String)]) -> Result<(), PropertyError> {
    for (key, _) in pairs {
        if let Some((key, why)) = PROTECTED.iter().find(|(k, _)| k == key) {
            return Err(PropertyError::Protected {
                key: (*key).to_owned(),
                why,
            });
        }
    }
    Ok(())
}

/// Whether a property's value is a secret (never printed).
pub fn is_secret(key: &str) -> bool {
    [
        "password",
        "secret",
        "ssl.key",
        "pem",
        "sasl.oauthbearer.config",
        "sasl.username",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// `key=value` pairs for a log or a `Debug` print, secrets replaced by `***`.
pub fn redacted(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            if is_secret(k) {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// A client config for `brokers` with extra properties applied last (security settings for
/// a managed Kafka, say). For tools (`trib`); services use [`crate::RuntimeConfig`], which
/// also refuses the settings their guarantees rest on.
pub fn client_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    // A tail across a broker restart resumes within a second, not librdkafka's 10 s
    // (see `RuntimeConfig`'s base settings).
    config.set("reconnect.backoff.max.ms", reconnect_backoff_max(extra));
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

/// Longest reconnect backoff, ms: 1 s (librdkafka's 10 s default left a consumer idle for
/// up to 9.4 s after a broker restart), or the `reconnect.backoff.ms` given if that is
/// longer: librdkafka refuses a client whose maximum is below it.
pub(crate) fn reconnect_backoff_max(extra: &[(String, String)]) -> String {
    extra
        .iter()
        .rev()
        .find(|(k, _)| k == "reconnect.backoff.ms")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map_or(1_000, |given| given.max(1_000))
        .to_string()
}

/// Whether the cluster answers a metadata request within two seconds (blocks).
pub fn reachable<C: rdkafka::ClientContext>(client: &rdkafka::client::Client<C>) -> bool {
    client
        .fetch_metadata(None, std::time::Duration::from_secs(2))
        .is_ok()
}

/// Kafka headers from (name, value) pairs, in order.
pub fn owned_headers<'a, V: AsRef<[u8]> + 'a>(
    pairs: impl IntoIterator<Item = (&'a str, V)>,
) -> rdkafka::message::OwnedHeaders {
    pairs
        .into_iter()
        .fold(rdkafka::message::OwnedHeaders::new(), |hs, (k, v)| {
            hs.insert(rdkafka::message::Header {
                key: k,
                value: Some(v.as_ref()),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_from_the_comma_separated_form() {
        let parsed = parse_properties("security.protocol=SASL_SSL, sasl.mechanism=PLAIN,").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "PLAIN".into())
            ]
        );
        assert_eq!(parse_properties("").unwrap(), vec![]);
        assert_eq!(
            parse_properties("novalue"),
            Err(PropertyError::Malformed("novalue".into()))
        );
        assert_eq!(
            parse_properties("=x"),
            Err(PropertyError::Malformed("=x".into()))
        );
    }

    #[test]
    fn values_with_commas_survive_both_forms() {
        assert_eq!(
            parse_properties("debug=broker,topic,fetch,linger.ms=5").unwrap(),
            vec![
                ("debug".into(), "broker,topic,fetch".into()),
                ("linger.ms".into(), "5".into())
            ]
        );
        assert_eq!(
            parse_properties("sasl.oauthbearer.extensions=a=1,b=2; linger.ms=5;").unwrap(),
            vec![
                ("sasl.oauthbearer.extensions".into(), "a=1,b=2".into()),
                ("linger.ms".into(), "5".into())
            ]
        );
    }

    #[test]
    fn settings_the_guarantees_rest_on_are_refused_by_name() {
        for key in [
            "enable.auto.commit",
            "enable.auto.offset.store",
            "isolation.level",
            "enable.idempotence",
            "acks",
            "check.crcs",
            "enable.gapless.guarantee",
        ] {
            let pairs = parse_properties(&format!("linger.ms=5,{key}=x")).unwrap();
            let error = check_unprotected(&pairs).unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
        }
        assert!(check_unprotected(&parse_properties("linger.ms=5").unwrap()).is_ok());
    }

    #[test]
    fn secrets_are_redacted() {
        let pairs =
            parse_properties("sasl.password=hunter2;ssl.key.password=k;linger.ms=5").unwrap();
        let shown = redacted(&pairs);
        assert!(
            !shown.contains("hunter2") && !shown.contains("=k;"),
            "{shown}"
        );
        assert!(shown.contains("linger.ms=5"));
    }

    #[test]
    fn extra_properties_override_the_defaults() {
        let config = client_config("a:1", &[("bootstrap.servers".into(), "b:2".into())]);
        assert_eq!(config.get("bootstrap.servers"), Some("b:2"));
    }
}
