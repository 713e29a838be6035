//! Static checks of `docker/`: no Docker engine runs here or in CI, so the compose file and
//! the Dockerfile are checked for the mistakes that would only show at `docker compose up`.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;

use crate::cargo::workspace_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Binaries the image holds: `trib` plus every service package.
fn binaries() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["trib".to_owned()].into();
    if let Ok(entries) = std::fs::read_dir(workspace_root().join("services")) {
        for entry in entries.flatten() {
            if entry.path().join("Cargo.toml").is_file() {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names
}

#[test]
fn the_compose_file_references_only_services_and_binaries_that_exist() {
    let mut compose: Value =
        serde_yaml_ng::from_str(&read("docker/compose.yaml")).expect("valid YAML");
    // Compose resolves `<<: *anchor` merge keys; so must the check.
    compose.apply_merge().expect("valid merge keys");
    let services = compose["services"].as_mapping().expect("a services map");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    let binaries = binaries();
    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        let image = service["image"].as_str().unwrap_or_default();
        assert!(
            !image.is_empty() || service.get("build").is_some(),
            "{name}: no image and no build"
        );
        if let Some(deps) = service.get("depends_on").and_then(Value::as_mapping) {
            for dep in deps.keys().filter_map(Value::as_str) {
                assert!(
                    names.contains(dep),
                    "{name} depends on unknown service {dep}"
                );
            }
        }
        if image.starts_with("tributary") {
            let command = service["command"]
                .as_sequence()
                .expect("our images take a command");
            let binary = command[0].as_str().unwrap_or_default();
            assert!(
                binaries.contains(binary),
                "{name} runs {binary}, which is not built"
            );
        }
        if let Some(env) = service.get("environment").and_then(Value::as_mapping) {
            if let Some(brokers) = env.get("KAFKA_BROKERS").and_then(Value::as_str) {
                let host = brokers.split(':').next().unwrap_or_default();
                assert!(
                    names.contains(host),
                    "{name}: KAFKA_BROKERS host {host} is no service"
                );
            }
        }
    }
    assert!(
        names.contains("topics"),
        "topics are created by a one-shot service"
    );
}

#[test]
fn the_topics_job_applies_the_file_the_image_ships() {
    let dockerfile = read("docker/Dockerfile");
    let compose = read("docker/compose.yaml");
    assert!(dockerfile.contains("COPY deploy/topics.yaml /etc/tributary/topics.yaml"));
    assert!(compose.contains("/etc/tributary/topics.yaml"));
}

#[test]
fn the_dockerfile_builds_every_binary_and_runs_unprivileged() {
    let dockerfile = read("docker/Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert_eq!(stages, 2, "a build stage and a slim runtime stage");
    assert!(dockerfile.contains("cargo build --release --locked --workspace --bins"));
    assert!(dockerfile.contains("USER tributary"));
    // The build context is the repository root; everything the build copies must exist.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap_or_default();
        if source != "." {
            assert!(
                workspace_root().join(source).exists(),
                "COPY of missing {source}"
            );
        }
    }
}
