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
    assert_eq!(
        stages, 4,
        "cargo-chef (base, plan, build: dependencies in their own layer) and a slim runtime"
    );
    assert!(dockerfile.contains("cargo chef cook --release --locked"));
    assert!(dockerfile.contains("cargo build --release --locked --workspace --bins"));
    assert!(dockerfile.contains("USER tributary"));
    assert!(dockerfile.contains("STOPSIGNAL SIGTERM"));
    assert!(
        dockerfile.contains("HEALTHCHECK")
            && dockerfile.contains("docker/healthcheck.sh /usr/local/bin/healthcheck")
    );
    // The build context is the repository root; everything the build copies must exist.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line
            .split_whitespace()
            .skip(1)
            .find(|w| !w.starts_with("--"))
            .unwrap_or_default();
        if source != "." {
            assert!(
                workspace_root().join(source).exists(),
                "COPY of missing {source}"
            );
        }
    }
}

/// CONTRACTS.md's ports: (service, public API port, admin port).
const PORTS: [(&str, Option<u16>, u16); 5] = [
    ("ingest", Some(8080), 9101),
    ("enrichment", None, 9102),
    ("aggregation", Some(8082), 9103),
    ("search-indexer", Some(8081), 9104),
    ("metrics-emitter", None, 9105),
];

/// Services that keep local state under `DATA_DIR`.
const STATEFUL: [&str; 3] = ["enrichment", "aggregation", "search-indexer"];

fn compose(path: &str) -> Value {
    let mut compose: Value = serde_yaml_ng::from_str(&read(path)).expect("valid YAML");
    compose.apply_merge().expect("valid merge keys");
    compose
}

#[test]
fn every_service_runs_in_compose_with_its_contract_ports_probe_and_volume() {
    let compose = compose("docker/compose.yaml");
    let services = &compose["services"];
    // A service added without its compose entry fails here.
    let packages: BTreeSet<String> = binaries().into_iter().filter(|b| b != "trib").collect();
    assert_eq!(
        packages,
        PORTS
            .iter()
            .map(|p| p.0.to_owned())
            .collect::<BTreeSet<_>>(),
        "services/ and CONTRACTS.md's port table disagree"
    );
    for (name, public, admin) in PORTS {
        let service = services
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in docker/compose.yaml"));
        assert_eq!(
            service["command"][0].as_str(),
            Some(name),
            "{name}: command"
        );
        let ports: Vec<&str> = service["ports"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: no ports"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for port in public.into_iter().chain([admin]) {
            assert!(
                ports.contains(&format!("{port}:{port}").as_str()),
                "{name}: port {port} not published ({ports:?})"
            );
        }
        let probe = format!("{:?}", service["healthcheck"]["test"]);
        // `healthcheck` (docker/healthcheck.sh, bash: the image's sh has no /dev/tcp) finds
        // the admin port from the service's name; the variant test checks its table.
        assert!(
            probe.contains("\"CMD\"") && probe.contains("healthcheck") && probe.contains("/readyz"),
            "{name}: the healthcheck must ask /readyz through the image's healthcheck: {probe}"
        );
        let volumes = format!("{:?}", service["volumes"]);
        assert_eq!(
            volumes.contains(":/var/lib/tributary"),
            STATEFUL.contains(&name),
            "{name}: a named volume at DATA_DIR exactly when stateful: {volumes}"
        );
        let topics = &service["depends_on"]["topics"]["condition"];
        assert_eq!(
            topics.as_str(),
            Some("service_completed_successfully"),
            "{name}"
        );
        assert!(
            service["stop_grace_period"].as_str().is_some(),
            "{name}: grace period"
        );
    }
}

/// A built binary's `--help`: built here when this test runs on its own.
fn help(binary: &str) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>");
    let path = dir.join(binary);
    if !path.exists() {
        let package = if binary == "trib" {
            "tributary-cli"
        } else {
            binary
        };
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", package, "--bin", binary])
            .current_dir(workspace_root())
            .status()
            .expect("cargo build");
        assert!(status.success(), "building {binary}");
    }
    let out = std::process::Command::new(&path)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_environment_variable_compose_sets_is_one_the_binary_reads() {
    for file in ["docker/compose.yaml", "docker/compose.dev-broker.yaml"] {
        let compose = compose(file);
        let services = compose["services"].as_mapping().expect("services");
        for (name, service) in services {
            let name = name.as_str().unwrap_or_default();
            let binary = match PORTS.iter().find(|p| p.0 == name) {
                Some(p) => p.0,
                None if name == "topics" => "trib",
                None => continue,
            };
            let help = help(binary);
            let Some(env) = service.get("environment").and_then(Value::as_mapping) else {
                continue;
            };
            // RUST_LOG is read by the log filter, not by the flags.
            for key in env
                .keys()
                .filter_map(Value::as_str)
                .filter(|k| *k != "RUST_LOG")
            {
                assert!(
                    help.contains(&format!("[env: {key}")),
                    "{file}: {name} sets {key}, which `{binary} --help` does not list"
                );
            }
        }
    }
}

#[test]
fn third_party_images_are_pinned_to_versions() {
    let mut references: Vec<String> = Vec::new();
    for file in ["docker/compose.yaml", "docker/compose.dev-broker.yaml"] {
        let compose = compose(file);
        for (_, service) in compose["services"].as_mapping().expect("services") {
            if let Some(image) = service.get("image").and_then(Value::as_str) {
                if !image.starts_with("tributary") {
                    references.push(image.to_owned());
                }
            }
        }
    }
    for file in ["docker/Dockerfile", "docker/dev-broker.Dockerfile"] {
        for line in read(file).lines().filter(|l| l.starts_with("FROM ")) {
            let image = line.split_whitespace().nth(1).unwrap_or_default();
            // A later stage built FROM an earlier one names no registry image.
            if image.contains(':') {
                references.push(image.to_owned());
            }
        }
    }
    assert!(!references.is_empty());
    for image in references {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{image}: pin a version"
        );
    }
}

#[test]
fn the_dev_broker_variant_overrides_only_services_that_exist() {
    let base = compose("docker/compose.yaml");
    let variant = compose("docker/compose.dev-broker.yaml");
    for (name, service) in variant["services"].as_mapping().expect("services") {
        let name = name.as_str().unwrap_or_default();
        assert!(
            base["services"].get(name).is_some(),
            "{name} is not in compose.yaml"
        );
        if PORTS.iter().any(|p| p.0 == name) {
            let config = service["environment"]["KAFKA_CONFIG"]
                .as_str()
                .unwrap_or_default();
            assert!(
                config.contains("fetch.wait.max.ms="),
                "{name}: the dev broker needs short fetch waits"
            );
        }
    }
    let healthcheck = read("docker/healthcheck.sh");
    for (name, _, admin) in PORTS {
        assert!(
            healthcheck.contains(&format!("{name}) port={admin}")),
            "healthcheck.sh: {name} → {admin}"
        );
    }
}

/// Every YAML document of every file in `dir` (multi-document files split).
fn documents(dir: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let root = workspace_root().join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable");
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push((name.clone(), value));
        }
    }
    out
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
}

#[test]
fn kubernetes_manifests_cover_every_service_as_contracts_and_binaries_say() {
    let docs = documents("deploy/k8s/base");
    // The kustomization lists exactly the files of the base.
    let kustomization = &docs
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .expect("kustomization")
        .1;
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let files: BTreeSet<&str> = docs
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "kustomization resources vs files in the base"
    );
    let overlay = read("deploy/k8s/overlays/production/kustomization.yaml");
    assert!(overlay.contains("../../base"));

    let config = find(&docs, "ConfigMap", "tributary").expect("the shared ConfigMap");
    let shared: Vec<&str> = config["data"]
        .as_mapping()
        .expect("data")
        .keys()
        .filter_map(Value::as_str)
        .collect();
    let job = find(&docs, "Job", "tributary-topics").expect("a job applying topics");
    let command: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("the job's command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(command[..3], ["trib", "topics", "apply"]);

    for (name, public, admin) in PORTS {
        let stateful = STATEFUL.contains(&name);
        let kind = if stateful {
            "StatefulSet"
        } else {
            "Deployment"
        };
        let workload = find(&docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"));
        let pod = &workload["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        assert!(
            grace > 30,
            "{name}: grace {grace}s is not longer than the 30 s shutdown"
        );
        let container = &pod["containers"][0];
        // args, not command: the image's entrypoint (tini) stays.
        assert!(
            container["command"].is_null(),
            "{name}: command replaces tini"
        );
        assert_eq!(container["args"][0].as_str(), Some(name), "{name}: args");
        let image = container["image"].as_str().unwrap_or_default();
        assert!(
            image.starts_with("tributary:") && !image.ends_with(":latest"),
            "{name}: {image}"
        );
        let ports: Vec<(String, i64)> = container["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["containerPort"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        assert!(
            ports.contains(&("admin".to_owned(), i64::from(admin))),
            "{name}: {ports:?}"
        );
        if let Some(public) = public {
            assert!(
                ports.iter().any(|(_, p)| *p == i64::from(public)),
                "{name}: {ports:?}"
            );
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(
                container[probe]["httpGet"]["path"].as_str(),
                Some(path),
                "{name}: {probe}"
            );
            assert_eq!(
                container[probe]["httpGet"]["port"].as_str(),
                Some("admin"),
                "{name}: {probe}"
            );
        }
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"]["requests"][resource].is_null(),
                "{name}: no {resource} request"
            );
        }
        // Every variable set is one the binary reads.
        let help = help(name);
        let mut names: Vec<&str> = shared.clone();
        if let Some(env) = container["env"].as_sequence() {
            names.extend(env.iter().filter_map(|e| e["name"].as_str()));
        }
        for key in names
            .into_iter()
            .filter(|k| *k != "RUST_LOG" && *k != "POD_NAME")
        {
            assert!(
                help.contains(&format!("[env: {key}")),
                "{name}: {key} is not in --help"
            );
        }
        assert!(find(&docs, "Service", name).is_some(), "{name}: no Service");
        assert!(
            find(&docs, "PodDisruptionBudget", name).is_some(),
            "{name}: no PDB"
        );
        if stateful {
            let mounts = format!("{:?}", container["volumeMounts"]);
            assert!(
                mounts.contains("/var/lib/tributary"),
                "{name}: DATA_DIR not on a volume"
            );
            assert!(
                !workload["spec"]["volumeClaimTemplates"].is_null(),
                "{name}: no PVC"
            );
        }
        // Consumers that share one group scale on its lag, never past the partition count;
        // ingest consumes nothing, and search-indexer replicas each read everything.
        let scaled = find(&docs, "ScaledObject", name);
        match name {
            "ingest" => assert!(scaled.is_none(), "ingest has no consumer lag"),
            "search-indexer" => {
                assert!(
                    scaled.is_none(),
                    "search-indexer replicas do not share a group"
                );
                assert!(
                    format!("{:?}", container["env"]).contains("$(POD_NAME)"),
                    "search-indexer replicas each need their own GROUP_ID"
                );
            }
            _ => {
                let scaled = scaled.unwrap_or_else(|| panic!("{name}: no lag scaling"));
                assert_eq!(
                    scaled["spec"]["scaleTargetRef"]["kind"].as_str(),
                    Some(kind)
                );
                let max = scaled["spec"]["maxReplicaCount"]
                    .as_i64()
                    .unwrap_or(i64::MAX);
                assert!(max <= 6, "{name}: {max} replicas for 6 partitions");
                assert_eq!(
                    scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"].as_str(),
                    Some(name)
                );
            }
        }
    }
}

#[test]
fn marathon_apps_cover_every_service_with_health_checks_and_volumes() {
    for (name, public, admin) in PORTS {
        let path = format!("deploy/marathon/{name}.json");
        let app: serde_json::Value = serde_json::from_str(&read(&path)).expect("valid JSON");
        let runs = format!("{} {}", app["cmd"], app["args"]);
        assert!(runs.contains(name), "{path}: does not run {name}");
        let mappings = app["container"]["portMappings"]
            .as_array()
            .expect("portMappings");
        let ports: Vec<i64> = mappings
            .iter()
            .filter_map(|m| m["containerPort"].as_i64())
            .collect();
        assert!(ports.contains(&i64::from(admin)), "{path}: {ports:?}");
        if let Some(public) = public {
            assert!(ports.contains(&i64::from(public)), "{path}: {ports:?}");
        }
        // Liveness on /healthz (a long restore is not a death), readiness on /readyz.
        let check = &app["healthChecks"][0];
        assert_eq!(check["path"], "/healthz", "{path}");
        assert_eq!(app["readinessChecks"][0]["path"], "/readyz", "{path}");
        let index = check["portIndex"].as_u64().expect("portIndex") as usize;
        assert_eq!(
            mappings[index]["containerPort"].as_i64(),
            Some(i64::from(admin)),
            "{path}"
        );
        assert!(
            app["upgradeStrategy"].is_object() && app["constraints"].is_array(),
            "{path}"
        );
        assert!(
            app["taskKillGracePeriodSeconds"].as_i64().unwrap_or(0) > 30,
            "{path}"
        );
        let persistent = app["container"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["persistent"].is_object()));
        assert_eq!(
            persistent,
            STATEFUL.contains(&name),
            "{path}: persistent volume"
        );
        let help = help(name);
        // Variables set in `cmd` (from the agent: $HOST, ports) count too.
        let in_cmd: Vec<String> = app["cmd"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.split_once('=').map(|(k, _)| k.to_owned()))
            .collect();
        assert!(
            app["cmd"]
                .as_str()
                .unwrap_or_default()
                .contains("exec /usr/bin/tini --"),
            "{path}: tini must stay the init"
        );
        for key in app["env"]
            .as_object()
            .expect("env")
            .keys()
            .chain(in_cmd.iter())
        {
            assert!(
                key == "RUST_LOG" || help.contains(&format!("[env: {key}")),
                "{path}: {key} is not in --help"
            );
        }
    }
}
