//! The suite as processes: the dev broker (SQLite) and instances of every service, each on
//! its own ports and data directory, which the faults kill, stop, pause and add to.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tributary_testkit::TestBroker;

/// A service of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// HTTP in, truth topics out.
    Ingest,
    /// Joins the catalogue.
    Enrichment,
    /// Windows activity.
    Aggregation,
    /// Indexes enriched products.
    SearchIndexer,
    /// Counts everything for StatsD.
    MetricsEmitter,
}

impl Service {
    /// Every service, in start order.
    pub const ALL: [Service; 5] = [
        Service::Ingest,
        Service::Enrichment,
        Service::Aggregation,
        Service::SearchIndexer,
        Service::MetricsEmitter,
    ];
    /// The services that consume (and so can be scaled in a group).
    pub const CONSUMERS: [Service; 4] = [
        Service::Enrichment,
        Service::Aggregation,
        Service::SearchIndexer,
        Service::MetricsEmitter,
    ];

    /// Binary and default group name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Ingest => "ingest",
            Service::Enrichment => "enrichment",
            Service::Aggregation => "aggregation",
            Service::SearchIndexer => "search-indexer",
            Service::MetricsEmitter => "metrics-emitter",
        }
    }

    /// The environment variable of its public API's listen address, if it has one.
    fn api_env(self) -> Option<&'static str> {
        match self {
            Service::Ingest => Some("INGEST_ADDR"),
            Service::Aggregation => Some("AGGREGATION_ADDR"),
            Service::SearchIndexer => Some("SEARCH_ADDR"),
            _ => None,
        }
    }
}

/// One running (or stopped) instance of a service.
#[derive(Debug)]
pub struct Instance {
    /// Which service.
    pub service: Service,
    /// 0 for the instance the stack starts with; extras count up.
    pub n: usize,
    /// Port of its public API, if any.
    pub api: Option<u16>,
    /// Port of its admin API.
    pub admin: u16,
    /// Its consumer group (search-indexer replicas each have their own).
    pub group: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Stopped with SIGSTOP and not yet continued.
    pub paused: bool,
}

impl Instance {
    /// `service#n`, as the fault table names it.
    pub fn label(&self) -> String {
        format!("{}#{}", self.service.name(), self.n)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether its process runs (a paused one counts as running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                if let Some(child) = self.child.take() {
                    track(child.id(), false);
                }
                false
            }
            None => false,
        }
    }

    /// `http://127.0.0.1:<api>`.
    pub fn api_url(&self) -> Option<String> {
        self.api.map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// `http://127.0.0.1:<admin>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    /// SIGKILL: no shutdown, no flush, no commit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            track(child.id(), false);
        }
        self.paused = false;
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `grace`). Returns the exit code.
    pub fn terminate(&mut self, grace: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        if self.paused {
            signal(child.id(), "CONT");
            self.paused = false;
        }
        signal(child.id(), "TERM");
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                track(child.id(), false);
                return status.code();
            }
            if started.elapsed() > grace {
                let _ = child.kill();
                let _ = child.wait();
                track(child.id(), false);
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP: the process keeps its sockets but does nothing (a long GC pause, a frozen VM).
    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
            self.paused = true;
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        if let (Some(pid), true) = (self.pid(), self.paused) {
            signal(pid, "CONT");
        }
        self.paused = false;
    }
}

/// Every service process this harness started and has not seen exit: killed if the harness
/// is interrupted, so no instance outlives the run.
static CHILDREN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn track(pid: u32, alive: bool) {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let set = children.get_or_insert_with(HashSet::new);
    if alive {
        set.insert(pid);
    } else {
        set.remove(&pid);
    }
}

/// SIGKILLs every service process still running (the harness was interrupted).
pub fn kill_all_children() {
    let children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    for pid in children.iter().flatten() {
        signal(*pid, "KILL");
    }
}

/// Sends a signal with the system's `kill` (this workspace forbids unsafe code).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The broker and every instance.
#[derive(Debug)]
pub struct Stack {
    /// The dev broker, SQLite storage.
    pub broker: TestBroker,
    /// Every instance ever started (stopped extras stay, not running).
    pub instances: Vec<Instance>,
    bin_dir: PathBuf,
    work: PathBuf,
    statsd: String,
    key: String,
    /// `fetch.wait.max.ms` of every service.
    fetch_wait_ms: u32,
}

impl Stack {
    /// Starts the broker, applies `deploy/topics.yaml` with `trib`, starts one instance of
    /// every service.
    pub fn start(
        bin_dir: &Path,
        topics_file: &Path,
        work: &Path,
        statsd: &str,
        key: &str,
        fetch_wait_ms: u32,
    ) -> anyhow::Result<Stack> {
        for service in Service::ALL {
            let bin = bin_dir.join(service.name());
            if !bin.is_file() {
                bail!(
                    "{} is missing: build the workspace's binaries",
                    bin.display()
                );
            }
        }
        let broker = TestBroker::start_durable().context("starting the dev broker")?;
        let status = Command::new(bin_dir.join("trib"))
            .args(["topics", "apply", "--file"])
            .arg(topics_file)
            .args(["--wait-secs", "60"])
            .env("KAFKA_BROKERS", broker.bootstrap())
            .stdout(Stdio::null())
            .status()
            .context("running trib topics apply")?;
        if !status.success() {
            bail!("trib topics apply failed ({status})");
        }
        let mut stack = Stack {
            broker,
            instances: Vec::new(),
            bin_dir: bin_dir.to_owned(),
            work: work.to_owned(),
            statsd: statsd.to_owned(),
            key: key.to_owned(),
            fetch_wait_ms,
        };
        for service in Service::ALL {
            stack.add(service)?;
        }
        Ok(stack)
    }

    /// Every service log's text (for what the services reported but no check sees).
    pub fn logs(&self) -> Vec<String> {
        self.instances
            .iter()
            .filter_map(|i| std::fs::read_to_string(&i.log).ok())
            .collect()
    }

    /// Starts a new instance of `service` (its own ports and data directory); returns its index.
    pub fn add(&mut self, service: Service) -> anyhow::Result<usize> {
        let n = self
            .instances
            .iter()
            .filter(|i| i.service == service)
            .count();
        let group = match (service, n) {
            (Service::SearchIndexer, n) if n > 0 => format!("search-indexer-{n}"),
            _ => service.name().to_owned(),
        };
        let name = format!("{}-{n}", service.name());
        let data_dir = self.work.join("data").join(&name);
        std::fs::create_dir_all(&data_dir)?;
        let mut instance = Instance {
            service,
            n,
            api: service.api_env().map(|_| free_port()).transpose()?,
            admin: free_port()?,
            group,
            data_dir,
            log: self.work.join("logs").join(format!("{name}.log")),
            child: None,
            paused: false,
        };
        self.launch(&mut instance)?;
        self.instances.push(instance);
        Ok(self.instances.len() - 1)
    }

    /// (Re)starts an instance's process with its ports, data and group.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let mut instance = std::mem::replace(
            &mut self.instances[index],
            Instance {
                service: Service::Ingest,
                n: 0,
                api: None,
                admin: 0,
                group: String::new(),
                data_dir: PathBuf::new(),
                log: PathBuf::new(),
                child: None,
                paused: false,
            },
        );
        let result = self.launch(&mut instance);
        self.instances[index] = instance;
        result
    }

    fn launch(&self, instance: &mut Instance) -> anyhow::Result<()> {
        if instance.is_running() {
            return Ok(());
        }
        std::fs::create_dir_all(self.work.join("logs"))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&instance.log)?;
        let service = instance.service;
        let mut command = Command::new(self.bin_dir.join(service.name()));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KAFKA_BROKERS", self.broker.bootstrap())
            // The dev broker holds an empty fetch for all of fetch.wait.max.ms (ARCHITECTURE.md
            // §9): the run chooses between latency and the broker's load.
            .env(
                "KAFKA_CONFIG",
                format!("fetch.wait.max.ms={}", self.fetch_wait_ms),
            )
            .env("GROUP_ID", &instance.group)
            .env("SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string())
            .env("SHUTDOWN_TIMEOUT_MS", "15000")
            .env("STATSD_ADDR", &self.statsd)
            .env("LOG_FORMAT", "json")
            // tantivy logs every commit at info.
            .env("RUST_LOG", "info,tantivy=warn")
            .env("ADMIN_ADDR", format!("127.0.0.1:{}", instance.admin))
            .env("DATA_DIR", &instance.data_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let (Some(var), Some(port)) = (service.api_env(), instance.api) {
            command.env(var, format!("127.0.0.1:{port}"));
        }
        match service {
            Service::Ingest => {
                command.env(
                    "INGEST_CLIENT_KEYS",
                    format!("{}:{}", crate::load::CLIENT, self.key),
                );
            }
            Service::Aggregation => {
                let url = instance.api_url().unwrap_or_default();
                command.env("AGGREGATION_ADVERTISED_URL", url);
            }
            _ => {}
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", instance.label()))?;
        track(child.id(), true);
        instance.child = Some(child);
        Ok(())
    }

    /// The running instances of `service`.
    pub fn running(&mut self, service: Service) -> Vec<usize> {
        (0..self.instances.len())
            .filter(|&i| self.instances[i].service == service && self.instances[i].is_running())
            .collect()
    }

    /// Stops everything: services with SIGTERM (in reverse start order), then the broker.
    pub fn stop(&mut self) {
        for instance in self.instances.iter_mut().rev() {
            instance.terminate(Duration::from_secs(20));
        }
        let _ = self.broker.stop();
    }
}

/// The consumers' session timeout: a paused instance is out of its group after this.
pub const SESSION_TIMEOUT_MS: u64 = 6000;

impl Drop for Stack {
    fn drop(&mut self) {
        for instance in &mut self.instances {
            instance.kill();
        }
    }
}
