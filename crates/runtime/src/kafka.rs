//! Kafka client settings shared by every service and tool.

use rdkafka::ClientConfig;

/// Why extra client properties could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Kafka property {0:?}: expected key=value")]
pub struct PropertyError(pub String);

/// Parses librdkafka properties given as `key=value,key=value` (the `KAFKA_CONFIG` form).
/// Empty items are skipped, so a trailing comma is harmless.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, PropertyError> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(PropertyError(item.to_owned())),
        })
        .collect()
}

/// A client config for `brokers` with extra properties applied last, so an operator can
/// override anything (security settings for a managed Kafka, say).
pub fn client_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in extra {
        config.set(key, value);
    }
    config
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
            Err(PropertyError("novalue".into()))
        );
        assert_eq!(parse_properties("=x"), Err(PropertyError("=x".into())));
    }

    #[test]
    fn extra_properties_override_the_defaults() {
        let config = client_config("a:1", &[("bootstrap.servers".into(), "b:2".into())]);
        assert_eq!(config.get("bootstrap.servers"), Some("b:2"));
    }
}
