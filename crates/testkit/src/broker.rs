//! Starting, stopping, killing and restarting a dev broker process (nisshi, or Tansu when
//! an override points at one) for tests.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::clients::unique_name;
use crate::{Result, TestkitError};

/// How long a broker may take to answer its first metadata request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the broker keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory: fastest, gone when the broker stops.
    Memory,
    /// A SQLite file: records and committed offsets survive a restart.
    Sqlite(PathBuf),
}

impl Storage {
    /// The `--storage-engine` URL, and the directory to run the broker in. Both nisshi 0.8
    /// and Tansu 0.6 read `sqlite:///abs/path` as a path relative to their working
    /// directory, so the broker runs in the database's directory and is given the bare file
    /// name.
    fn url_and_dir(&self, scratch: &Path) -> (String, PathBuf) {
        match self {
            Storage::Memory => ("memory://tributary/".to_owned(), scratch.to_owned()),
            Storage::Sqlite(path) => {
                let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
                let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
                (
                    format!("sqlite://{}", file.unwrap_or_else(|| "broker.db".into())),
                    dir.map_or_else(|| scratch.to_owned(), Path::to_owned),
                )
            }
        }
    }
}

/// A running dev broker on a loopback port, stopped when dropped.
#[derive(Debug)]
pub struct TestBroker {
    port: u16,
    storage: Storage,
    dir: PathBuf,
    process: Option<Child>,
    /// Extra command-line arguments (TLS, authentication).
    args: Vec<String>,
}

/// Which dev broker a binary is: their command lines differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// nisshi 0.8 (the default).
    Nisshi,
    /// Tansu 0.6 (nisshi's predecessor, still accepted through an override).
    Tansu,
}

/// The dev broker binary and what it is.
#[derive(Debug, Clone)]
pub struct BrokerBin {
    /// Its path.
    pub path: PathBuf,
    /// Which broker it is.
    pub flavour: Flavour,
}

/// Finds the dev broker: `TRIB_BROKER_BIN`, else `TANSU_BIN` (the old name of the
/// override), else `nisshi` on `PATH`, else `~/.cargo/bin/nisshi`. What it is comes from
/// its `--version` (`nisshi 0.8.1`, `tansu 0.6.0`).
pub fn find_broker() -> Result<BrokerBin> {
    static FOUND: OnceLock<std::result::Result<BrokerBin, String>> = OnceLock::new();
    FOUND
        // The reason alone is kept, so that the error is not wrapped twice.
        .get_or_init(|| {
            locate().map_err(|e| match e {
                TestkitError::BrokerNotFound(reason) => reason,
                other => other.to_string(),
            })
        })
        .clone()
        .map_err(TestkitError::BrokerNotFound)
}

fn locate() -> Result<BrokerBin> {
    let overridden = ["TRIB_BROKER_BIN", "TANSU_BIN"]
        .iter()
        .find_map(|var| std::env::var_os(var).map(|bin| (*var, PathBuf::from(bin))));
    let path = match overridden {
        Some((_, bin)) if bin.is_file() => bin,
        Some((var, bin)) => {
            return Err(TestkitError::BrokerNotFound(format!(
                "{var}={} is not a file",
                bin.display()
            )));
        }
        None => {
            let on_path = std::env::var_os("PATH")
                .into_iter()
                .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
                .map(|dir| dir.join("nisshi"));
            let in_cargo_home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
                .map(|home| home.join("bin").join("nisshi"));
            on_path
                .chain(in_cargo_home)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    TestkitError::BrokerNotFound(
                        "no nisshi binary (TRIB_BROKER_BIN, PATH, ~/.cargo/bin)".into(),
                    )
                })?
        }
    };
    let version = Command::new(&path).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    let flavour = match version.split_whitespace().next() {
        Some("nisshi") => Flavour::Nisshi,
        Some("tansu") => Flavour::Tansu,
        _ => {
            return Err(TestkitError::BrokerNotFound(format!(
                "{} says {:?} to --version, not nisshi or tansu",
                path.display(),
                version.trim()
            )));
        }
    };
    Ok(BrokerBin { path, flavour })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl TestBroker {
    /// Starts a broker with in-memory storage on a free port: the fastest, for benchmarks
    /// and tests that never resume a consumer mid-stream (see [`shared`](Self::shared)).
    pub fn start() -> Result<TestBroker> {
        TestBroker::start_with(Storage::Memory)
    }

    /// Starts a broker with SQLite storage in a fresh directory, for tests that restart it.
    pub fn start_durable() -> Result<TestBroker> {
        let dir = scratch_dir()?;
        let db = dir.join("broker.db");
        TestBroker::start_in(Storage::Sqlite(db), dir)
    }

    /// Starts a broker with the given storage on a free port.
    pub fn start_with(storage: Storage) -> Result<TestBroker> {
        TestBroker::start_in(storage, scratch_dir()?)
    }

    fn start_in(storage: Storage, dir: PathBuf) -> Result<TestBroker> {
        let mut broker = TestBroker {
            port: free_port()?,
            storage,
            dir,
            process: None,
            args: Vec::new(),
        };
        broker.launch()?;
        Ok(broker)
    }

    /// One broker per test binary, started on first use. Tests isolate themselves with
    /// unique topic and group names. The process ends with the test binary: the watchdog
    /// sees its stdin close however the binary exits.
    ///
    /// It stores to SQLite: committed offsets and high watermarks are what the durable
    /// engine reports, and tests that restart or rebalance consumers run on the storage
    /// `cargo xtask up` uses.
    pub fn shared() -> &'static TestBroker {
        static SHARED: OnceLock<TestBroker> = OnceLock::new();
        SHARED.get_or_init(|| match TestBroker::start_durable() {
            Ok(broker) => broker,
            Err(e) => panic!("cannot start the shared test broker: {e}"),
        })
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The broker's log file (its stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// Whether the broker process is running.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    fn launch(&mut self) -> Result<()> {
        let bin = find_broker()?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let (storage_url, run_dir) = self.storage.url_and_dir(&self.dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        // A tiny shell watchdog owns the broker: a `kill` line on its stdin SIGKILLs the
        // broker (a crash, for tests); when our end of its stdin closes (drop, stop, or this
        // process dying in any way, even SIGKILL), it stops the broker, so no test run leaves
        // a broker behind.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(
                r#""$@" & pid=$!;
                   while read line; do [ "$line" = kill ] && kill -9 "$pid" 2>/dev/null; done;
                   kill "$pid" 2>/dev/null;
                   (sleep 5; kill -9 "$pid" 2>/dev/null) & killer=$!;
                   wait "$pid"; status=$?; kill "$killer" 2>/dev/null;
                   echo "broker-watchdog: broker exited with status $status""#,
            )
            .arg("broker-watchdog")
            .arg(&bin.path)
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg(storage_url)
            .args(&self.args);
        if bin.flavour == Flavour::Nisshi {
            // Kafka's default holds an empty group's first join for 3 s; a test group is
            // formed by whoever joins first, and waiting would only slow every test.
            command.args(["--group-initial-rebalance-delay", "0s"]);
        }
        for var in [
            "STORAGE_ENGINE",
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "CLUSTER_ID",
            "GROUP_INITIAL_REBALANCE_DELAY",
            "GROUP_POLL_INTERVAL",
            "SCHEMA_REGISTRY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            command.env_remove(var);
        }
        let child = command
            .current_dir(run_dir)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.process = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        if !self.args.is_empty() {
            // Secured (TLS, authentication): a plain client cannot ask; the port opening
            // is the sign.
            while started.elapsed() < READY_TIMEOUT {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            return Err(TestkitError::NotReady {
                bootstrap: self.bootstrap(),
                waited: started.elapsed(),
                log: tail(&self.log_path(), 2000),
            });
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()?;
        while started.elapsed() < READY_TIMEOUT {
            if let Some(Ok(Some(_))) = self.process.as_mut().map(Child::try_wait) {
                break;
            }
            if consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(TestkitError::NotReady {
            bootstrap: self.bootstrap(),
            waited: started.elapsed(),
            log: tail(&self.log_path(), 2000),
        })
    }

    /// Stops the broker (clients see it go away). Storage is kept for [`restart`](Self::restart).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.process.take() {
            drop(child.stdin.take());
            child.wait()?;
        }
        Ok(())
    }

    /// Kills the broker with SIGKILL, as a crash would: no flush, no clean close.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.process.take() {
            if let Some(stdin) = child.stdin.as_mut() {
                stdin.write_all(b"kill\n")?;
                stdin.flush()?;
            }
            drop(child.stdin.take());
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port and storage with extra command-line
    /// arguments (for example `--authentication`, `--cert`, `--key`).
    pub fn restart_with_args(&mut self, args: &[&str]) -> Result<()> {
        self.stop()?;
        self.args = args.iter().map(|a| (*a).to_owned()).collect();
        self.launch()
    }

    /// Starts the broker again on the same port with the same storage.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Client settings for this broker: bootstrap servers and quiet client logs.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "3");
        config
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(unique_name("tributary-broker"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn tail(path: &Path, bytes: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let start = text.len().saturating_sub(bytes);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[start..].to_owned()
}
