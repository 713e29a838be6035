//! `cargo xtask up`: the whole suite on one machine, with a durable dev broker.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cargo::{self, workspace_root};

/// Where the dev broker listens when `up` starts it.
const DEV_BROKER: &str = "127.0.0.1:9092";
/// How long services get to shut down cleanly (their own deadline is 30 s).
const SERVICE_GRACE: Duration = Duration::from_secs(35);
/// How long the broker gets to shut down cleanly.
const BROKER_GRACE: Duration = Duration::from_secs(10);

/// The contract's ports (CONTRACTS.md), to print where each service answers.
fn endpoints(service: &str) -> &'static str {
    match service {
        "ingest" => "API http://127.0.0.1:8080  admin http://127.0.0.1:9101",
        "enrichment" => "admin http://127.0.0.1:9102",
        "aggregation" => "API http://127.0.0.1:8082  admin http://127.0.0.1:9103",
        "search-indexer" => "API http://127.0.0.1:8081  admin http://127.0.0.1:9104",
        "metrics-emitter" => "admin http://127.0.0.1:9105 (/lag)",
        _ => "",
    }
}

struct Running {
    name: String,
    child: Child,
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut demo = false;
    for arg in args {
        match arg.as_str() {
            "--demo" => demo = true,
            other => bail!("unknown option {other:?} (cargo xtask up [--demo])"),
        }
    }
    let root = workspace_root();
    let services = service_names(&root)?;
    if demo && !services.iter().any(|s| s == "ingest") {
        bail!("--demo loads its data through the ingest HTTP API, and services/ingest is missing");
    }
    // Ingest runs signed: with no keys given, a dev key (kept under .tributary/) is used.
    let keys_given = std::env::var("INGEST_CLIENT_KEYS").is_ok_and(|k| !k.trim().is_empty())
        || std::env::var_os("INGEST_CLIENT_KEYS_FILE").is_some();
    let dev_key = if keys_given {
        None
    } else {
        Some(crate::demo::dev_key(&root)?)
    };

    eprintln!("xtask: building release binaries");
    cargo::run(&["build", "--release", "--workspace", "--bins"], &[])?;
    let bin_dir = root.join("target").join("release");

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    let mut broker = None;
    let mut kafka_config = std::env::var("KAFKA_CONFIG").ok();
    let brokers = match std::env::var("KAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => {
            eprintln!("xtask: using the cluster at KAFKA_BROKERS={brokers}");
            brokers
        }
        _ => {
            broker = Some(start_broker(&root)?);
            // The dev broker holds every fetch for the full fetch.wait.max.ms
            // (ARCHITECTURE.md section 9): librdkafka's 500 ms default would cap every
            // service near 60k records/s and delay each message by up to half a second.
            kafka_config.get_or_insert_with(|| DEV_BROKER_CLIENT.to_owned());
            DEV_BROKER.to_owned()
        }
    };

    let suite = Suite {
        root: &root,
        bin_dir: &bin_dir,
        brokers: &brokers,
        services: &services,
        dev_key: dev_key.as_deref(),
        kafka_config: kafka_config.as_deref(),
        demo,
    };
    let result = run_suite(&suite, &stop_rx, broker.as_mut());
    if let Some(broker) = broker {
        stop_all(vec![broker], BROKER_GRACE, &stop_rx);
    }
    result
}

/// Client settings for the dev broker (production keeps librdkafka's defaults).
const DEV_BROKER_CLIENT: &str = "fetch.wait.max.ms=5";

/// What `up` runs.
struct Suite<'a> {
    root: &'a Path,
    bin_dir: &'a Path,
    brokers: &'a str,
    services: &'a [String],
    dev_key: Option<&'a str>,
    kafka_config: Option<&'a str>,
    demo: bool,
}

fn run_suite(
    suite: &Suite<'_>,
    stop_rx: &mpsc::Receiver<()>,
    mut broker: Option<&mut Running>,
) -> anyhow::Result<()> {
    let Suite {
        root,
        bin_dir,
        brokers,
        services,
        dev_key,
        kafka_config,
        demo,
    } = *suite;
    eprintln!("xtask: applying deploy/topics.yaml");
    let status = Command::new(bin_dir.join("trib"))
        .args(["topics", "apply", "--file"])
        .arg(root.join("deploy/topics.yaml"))
        .args(["--wait-secs", "60"])
        .env("KAFKA_BROKERS", brokers)
        .status()
        .context("running trib topics apply")?;
    if !status.success() {
        bail!("applying topics failed ({status})");
    }

    let data_root = root.join(".tributary").join("data");
    let mut running = Vec::new();
    for name in services {
        let data_dir = data_root.join(name);
        std::fs::create_dir_all(&data_dir)?;
        let mut command = Command::new(bin_dir.join(name));
        command
            .env("KAFKA_BROKERS", brokers)
            .env("DATA_DIR", &data_dir)
            .env(
                "LOG_FORMAT",
                std::env::var("LOG_FORMAT").unwrap_or_else(|_| "pretty".into()),
            );
        if let Some(kafka_config) = kafka_config {
            command.env("KAFKA_CONFIG", kafka_config);
        }
        if let (Some(key), "ingest") = (dev_key, name.as_str()) {
            command.env(
                "INGEST_CLIENT_KEYS",
                format!("{}:{key}", crate::demo::DEV_CLIENT),
            );
        }
        running.push(spawn(name, &mut command)?);
    }

    println!();
    println!("Tributary is up. Kafka: {brokers}");
    if services.is_empty() {
        println!("  (no services under services/ yet: the broker and topics are ready)");
    }
    for name in services {
        println!("  {name:<16} {}", endpoints(name));
    }
    if let (Some(key), true) = (dev_key, services.iter().any(|s| s == "ingest")) {
        println!();
        println!(
            "Ingest requires signed requests. Dev client: id {}, key {key}",
            crate::demo::DEV_CLIENT
        );
        println!("A signed request, ready to paste:");
        println!("{}", crate::demo::curl_example(key));
    }
    println!("Press Ctrl-C to stop.");
    println!();
    if demo {
        let key = dev_key.map(str::to_owned).or_else(|| {
            std::env::var("INGEST_CLIENT_KEYS").ok().and_then(|k| {
                k.split(',')
                    .find_map(|e| e.strip_prefix("dev:").map(str::to_owned))
            })
        });
        match key {
            Some(key) => {
                crate::demo::wait_ready("127.0.0.1:9101", Duration::from_secs(60))
                    .and_then(|()| crate::demo::load("127.0.0.1:8080", &key))
                    .unwrap_or_else(|e| eprintln!("xtask: demo load failed: {e:#}"));
            }
            None => eprintln!(
                "xtask: --demo needs the dev key; unset INGEST_CLIENT_KEYS or include dev:<key>"
            ),
        }
    }

    // Run until Ctrl-C, or until the broker dies (nothing works without it).
    loop {
        if stop_rx.recv_timeout(Duration::from_millis(250)).is_ok() {
            eprintln!("xtask: stopping");
            break;
        }
        for service in &mut running {
            if let Ok(Some(status)) = service.child.try_wait() {
                eprintln!("xtask: {} exited ({status})", service.name);
            }
        }
        running.retain_mut(|s| !matches!(s.child.try_wait(), Ok(Some(_))));
        if let Some(broker) = broker.as_deref_mut() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                stop_all(running, SERVICE_GRACE, stop_rx);
                bail!("the dev broker exited ({status}); see its log lines above");
            }
        }
    }
    stop_all(running, SERVICE_GRACE, stop_rx);
    Ok(())
}

/// Every directory under `services/` with a Cargo.toml; its name is its binary's name.
fn service_names(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let dir = root.join("services");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries {
            let path = entry?.path();
            if path.join("Cargo.toml").is_file() {
                if let Some(name) = path.file_name() {
                    names.push(name.to_string_lossy().into_owned());
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

fn start_broker(root: &Path) -> anyhow::Result<Running> {
    let addr: SocketAddr = DEV_BROKER.parse()?;
    if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
        bail!(
            "something already listens on {DEV_BROKER}; if it is a Kafka broker, run \
             `KAFKA_BROKERS={DEV_BROKER} cargo xtask up` to use it"
        );
    }
    let bin = crate::broker::ensure()?;
    let nisshi = crate::broker::version_of(&bin).is_some_and(|(name, _)| name == "nisshi");
    let dir = root.join(".tributary").join("broker");
    std::fs::create_dir_all(&dir)?;
    let log_path = root.join(".tributary").join("broker.log");
    eprintln!(
        "xtask: starting the dev broker on {DEV_BROKER} (data: {}, log: {})",
        dir.join("broker.db").display(),
        log_path.display()
    );
    let url = format!("tcp://{DEV_BROKER}");
    // The broker reads sqlite:///abs as relative to its working directory: run it in `dir`.
    let mut command = Command::new(bin);
    command
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://broker.db"]);
    if nisshi {
        // A group of one service's instances forms as they come; no 3 s hold on the first join.
        command.args(["--group-initial-rebalance-delay", "0s"]);
    }
    let broker = spawn_logged("broker", &mut command, &log_path)?;
    let started = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the dev broker did not listen on {DEV_BROKER} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(broker)
}

/// Starts the broker in its own process group with everything it prints appended to
/// `log_path`; only its warnings, errors and panics reach the console, one line each (its
/// errors can be kilobytes of debug output on one line).
fn spawn_logged(name: &str, command: &mut Command, log_path: &Path) -> anyhow::Result<Running> {
    let mut child = spawn_child(name, command)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log = std::sync::Arc::new(std::sync::Mutex::new(log));
    let color = std::io::stdout().is_terminal();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let log = std::sync::Arc::clone(&log);
        let label = label(name, color);
        let log_name = log_path.display().to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Ok(mut file) = log.lock() {
                    let _ = writeln!(file, "{line}");
                }
                if let Some(summary) = console_summary(&line, &log_name) {
                    println!("{label} {summary}");
                }
            }
        });
    }
    Ok(Running {
        name: name.to_owned(),
        child,
    })
}

/// What of a broker log line the console shows: warnings, errors and panics, without colour
/// codes, cut to one short line.
fn console_summary(line: &str, log_name: &str) -> Option<String> {
    const WIDTH: usize = 200;
    let plain = strip_ansi(line);
    let notable = plain.contains(" WARN ")
        || plain.contains(" ERROR ")
        || (plain.starts_with("thread ") && plain.contains("panicked"));
    if !notable {
        return None;
    }
    let plain = plain.trim();
    if plain.chars().count() <= WIDTH {
        return Some(plain.to_owned());
    }
    let cut: String = plain.chars().take(WIDTH).collect();
    Some(format!("{cut}… (whole line in {log_name})"))
}

/// Removes terminal colour sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn label(name: &str, color: bool) -> String {
    let palette = [32, 33, 34, 35, 36, 92, 93, 94];
    let hue = palette[name.bytes().map(usize::from).sum::<usize>() % palette.len()];
    if color {
        format!("\x1b[{hue}m{name:>16}\x1b[0m |")
    } else {
        format!("{name:>16} |")
    }
}

/// Starts a child in its own process group (so a terminal Ctrl-C reaches only xtask, which
/// then stops children in order), its output piped to us.
fn spawn_child(name: &str, command: &mut Command) -> anyhow::Result<Child> {
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}"))
}

/// Starts a child (see [`spawn_child`]) with its output prefixed by its name.
fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Running> {
    let mut child = spawn_child(name, command)?;
    let color = std::io::stdout().is_terminal();
    if let Some(out) = child.stdout.take() {
        prefix_lines(name, out, color);
    }
    if let Some(err) = child.stderr.take() {
        prefix_lines(name, err, color);
    }
    Ok(Running {
        name: name.to_owned(),
        child,
    })
}

fn prefix_lines(name: &str, stream: impl Read + Send + 'static, color: bool) {
    let label = label(name, color);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            println!("{label} {line}");
        }
    });
}

/// SIGTERM to every child, wait up to `grace`, then SIGKILL what is left. A second Ctrl-C
/// skips the wait.
fn stop_all(mut children: Vec<Running>, grace: Duration, stop_rx: &mpsc::Receiver<()>) {
    for c in &children {
        signal(c.child.id(), "TERM");
    }
    let started = Instant::now();
    while !children.is_empty() && started.elapsed() < grace {
        if stop_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            eprintln!("xtask: second Ctrl-C, killing");
            break;
        }
        children.retain_mut(|c| match c.child.try_wait() {
            Ok(Some(status)) => {
                eprintln!("xtask: {} stopped ({status})", c.name);
                false
            }
            _ => true,
        });
    }
    for mut c in children {
        eprintln!("xtask: {} did not stop in time, killing", c.name);
        let _ = c.child.kill();
        let _ = c.child.wait();
    }
}

/// Sends a signal with the system's `kill`, keeping this crate free of unsafe code.
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

#[cfg(test)]
mod tests {
    use super::console_summary;

    #[test]
    fn only_warnings_errors_and_panics_reach_the_console_on_one_short_line() {
        let log = ".tributary/broker.log";
        assert_eq!(console_summary("ready in 133ms", log), None);
        assert_eq!(
            console_summary("2026-11-23T12:19:17Z  INFO nisshi_broker: joined", log),
            None
        );
        let error = "\u{1b}[2m2026-11-23T12:19:17.949223Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m \
                     storage: failed";
        assert_eq!(
            console_summary(error, log).as_deref(),
            Some("2026-11-23T12:19:17.949223Z ERROR storage: failed")
        );
        let blob = format!("2026-11-23T12:19:17Z  WARN x: {}", "y".repeat(5000));
        let summary = console_summary(&blob, log).unwrap();
        assert!(summary.chars().count() < 300, "{summary}");
        assert!(summary.ends_with("(whole line in .tributary/broker.log)"));
        assert!(
            console_summary(
                "thread 'tokio-rt-worker' (1) panicked at src/x.rs:1:2:",
                log
            )
            .is_some()
        );
    }
}
