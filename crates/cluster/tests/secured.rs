//! The cluster client against a dev broker that only speaks TLS and requires SCRAM
//! authentication, configured with librdkafka's property names as `KAFKA_CONFIG` gives them.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tributary_cluster::{Cluster, ClusterConfig, Error};
use tributary_testkit::{RawRecord, TestBroker, find_broker};

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1, written as PEM files.
fn certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("broker.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("broker.key"), key.serialize_pem()).unwrap();
}

fn client(pairs: &[(&str, &str)]) -> Result<Cluster, Error> {
    let properties: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Cluster::new(ClusterConfig::from_properties(&properties)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_scram_as_kafka_config_names_them() {
    let dir = std::env::temp_dir().join(tributary_testkit::unique_name("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);

    // Seeded in the clear, with a SCRAM user; then only TLS and authenticated clients.
    let mut broker = TestBroker::start_durable().unwrap();
    let topic = broker.create_topic("secured", 2).await.unwrap();
    let records: Vec<RawRecord> = (0..10)
        .map(|i| RawRecord::new(format!("k{i}"), "v"))
        .collect();
    broker.produce_raw(&topic, &records).await.unwrap();
    let created = Command::new(find_broker().unwrap().path)
        .args(["user", "create", "--mechanism", "scram256", "--broker"])
        .arg(format!("tcp://{}", broker.bootstrap()))
        .args(["alice", "s3cret"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let cert = dir.join("broker.pem");
    let key = dir.join("broker.key");
    broker
        .restart_with_args(&[
            "--authentication",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .unwrap();

    let bootstrap = broker.bootstrap();
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let secured = |password: &'static str| {
        vec![
            ("bootstrap.servers", bootstrap.as_str()),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-256"),
            ("sasl.username", "alice"),
            ("sasl.password", password),
            ("ssl.ca.location", ca),
            ("socket.timeout.ms", "5000"),
        ]
    };

    let cluster = client(&secured("s3cret")).unwrap();
    let metadata = cluster.metadata().await.unwrap();
    let partitions: BTreeSet<(String, i32)> = (0..2).map(|p| (topic.clone(), p)).collect();
    let ends = cluster.high_watermarks(&metadata, &partitions).await;
    let total: i64 = ends.values().map(|e| *e.as_ref().unwrap()).sum();
    assert_eq!(total, 10);

    // A wrong password is refused by the broker, and said so.
    let refused = client(&secured("wrong")).unwrap().metadata().await;
    assert!(matches!(refused, Err(Error::Auth { .. })), "{refused:?}");

    // A certificate no trusted CA signed fails the handshake (the system roots don't know
    // our test CA).
    let mut untrusted = secured("s3cret");
    untrusted.retain(|(k, _)| *k != "ssl.ca.location");
    let refused = client(&untrusted).unwrap().metadata().await;
    assert!(
        matches!(&refused, Err(Error::Auth { message, .. }) if message.contains("TLS")),
        "{refused:?}"
    );

    // A plaintext client gets no answer it can decode: an error, not a hang.
    let plain = client(&[
        ("bootstrap.servers", bootstrap.as_str()),
        ("socket.timeout.ms", "2000"),
    ])
    .unwrap();
    assert!(plain.metadata().await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
