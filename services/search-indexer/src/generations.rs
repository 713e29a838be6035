//! Index generations and blue/green rebuilds. Each generation is an index directory
//! (`DATA_DIR/index-<n>`) fed by its own consumer group (generation 1 by `GROUP_ID`, later
//! ones by `<GROUP_ID>.g<n>`). One is live and answers searches; a rebuild starts the next
//! from offset 0 beside it and, once its durable commit covers every input partition up to
//! the high watermark, makes it live in one pointer swap, then stops and removes the old.
//!
//! `DATA_DIR/generations.json` records which generation is live and which is building,
//! written (atomically, by rename) before either changes, so a crash at any point restarts
//! into a consistent pair: the live index keeps serving, an interrupted rebuild goes on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tributary_runtime::rdkafka;
use tributary_runtime::{Batching, Health, RuntimeError, ServiceSpec, Shutdown};

use crate::index::ProductIndex;
use crate::indexer::{Failure, Indexer, Inputs};
use crate::{ADMIN_PORT, NAME, SearchConfig};

/// What `generations.json` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    live: u64,
    building: Option<u64>,
}

/// One index generation: its index, the consumer feeding it and that consumer's health.
#[derive(Debug)]
pub struct Generation {
    /// Its number (`index-<n>`).
    pub number: u64,
    /// Its consumer group.
    pub group: String,
    /// Its index.
    pub index: Arc<ProductIndex>,
    /// Its consumer's health and `/status`.
    pub health: Health,
    stop: Shutdown,
    /// Set before a swap or the service stops it: its consumer's end is then expected.
    retiring: AtomicBool,
    /// Why its index could not be written, when that stopped it.
    failure: Arc<Mutex<Option<String>>>,
    /// How its consumer ended, once it did.
    ended: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

impl Generation {
    /// Stops its consumer (finishing and committing in-flight batches) and closes its
    /// index; returns how the consumer ended.
    async fn retire(&self) -> Result<(), String> {
        self.retiring.store(true, Ordering::SeqCst);
        self.stop.trigger();
        let result = self.ended().await;
        self.index.close().await;
        result
    }

    /// Waits until its consumer ended; how it ended.
    async fn ended(&self) -> Result<(), String> {
        let mut ended = self.ended.clone();
        match ended.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Ok(())),
            Err(_) => Err("the consumer task is gone".into()),
        }
    }
}

/// Why a rebuild was not started.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// One is running already.
    #[error("generation {0} is being built already")]
    InProgress(u64),
    /// The service is stopping.
    #[error("the service is stopping")]
    Stopping,
    /// It could not start.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// The live generation, the one being built, and the rebuild's progress.
#[derive(Debug)]
pub struct Generations {
    config: SearchConfig,
    base_group: String,
    live: RwLock<Arc<Generation>>,
    building: tokio::sync::Mutex<Option<Arc<Generation>>>,
    rebuild: Mutex<Value>,
    shutdown: Shutdown,
    fatal: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Generations {
    /// Opens the recorded generations (or generation 1), starts their consumers, and a
    /// rebuild when `config.rebuild` asks for one and none is under way.
    pub async fn start(
        config: SearchConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<Arc<Generations>> {
        let data_dir = config.runtime.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let recorded = read_recorded(&data_dir)?.unwrap_or(Recorded {
            live: 1,
            building: None,
        });
        remove_strays(&data_dir, recorded)?;
        let base_group = config.runtime.group(NAME);
        let live = start_generation(&config, &base_group, recorded.live, &shutdown)
            .await
            .context("starting the live index generation")?;
        let generations = Arc::new(Generations {
            config,
            base_group,
            live: RwLock::new(live),
            building: tokio::sync::Mutex::new(None),
            rebuild: Mutex::new(json!({"state": "idle"})),
            shutdown,
            fatal: Mutex::new(None),
        });
        generations.watch_consumer(generations.live());
        tokio::spawn(generations.clone().ready_when_caught_up(generations.live()));
        if let Some(number) = recorded.building {
            tracing::info!(generation = number, "Resuming an interrupted rebuild");
            let mut building = generations.building.lock().await;
            if let Err(e) = generations.begin(&mut building, number).await {
                // The live index serves regardless; the rebuild is given up, not retried in
                // a crash loop.
                tracing::error!(generation = number, error = %e, "Cannot resume the rebuild; giving it up");
            }
        } else if generations.config.rebuild {
            generations
                .rebuild()
                .await
                .map_err(|e| anyhow::anyhow!("starting the rebuild asked for by --rebuild: {e}"))?;
        }
        generations.publish_status();
        let status = generations.clone();
        tokio::spawn(async move {
            while !status.shutdown.is_triggered() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = status.shutdown.wait() => {}
                }
                status.publish_status();
            }
        });
        Ok(generations)
    }

    /// The generation answering searches.
    pub fn live(&self) -> Arc<Generation> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why a generation's consumer failed, when one did (the service then stops).
    pub fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    /// The rebuild's progress, as `/status` shows it.
    pub fn rebuild_status(&self) -> Value {
        lock(&self.rebuild).clone()
    }

    /// Starts building the next generation beside the live one; returns its number.
    pub async fn rebuild(self: &Arc<Self>) -> Result<u64, RebuildError> {
        // Held throughout: of two requests at once, one starts the rebuild and the other is
        // told it runs.
        let mut building = self.building.lock().await;
        if let Some(b) = building.as_ref() {
            return Err(RebuildError::InProgress(b.number));
        }
        let number = self.live().number + 1;
        // A directory left by a crash before the rebuild was recorded is not ours.
        let dir = index_dir(&self.config.runtime.data_dir, number);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                RebuildError::Failed(anyhow::anyhow!("removing {}: {e}", dir.display()))
            })?;
        }
        self.begin(&mut building, number).await?;
        Ok(number)
    }

    /// Starts generation `number` beside the live one, records it as building, and follows
    /// it; on failure nothing is left recorded or running.
    async fn begin(
        self: &Arc<Self>,
        building: &mut Option<Arc<Generation>>,
        number: u64,
    ) -> Result<(), RebuildError> {
        if self.shutdown.is_triggered() {
            return Err(RebuildError::Stopping);
        }
        if let Some(b) = building.as_ref() {
            return Err(RebuildError::InProgress(b.number));
        }
        let live = self.live().number;
        write_recorded(
            &self.config.runtime.data_dir,
            Recorded {
                live,
                building: Some(number),
            },
        )
        .map_err(RebuildError::Failed)?;
        let started = start_generation(&self.config, &self.base_group, number, &self.shutdown);
        let generation = match started.await {
            Ok(g) => g,
            Err(e) => {
                self.abandon_record(number);
                return Err(RebuildError::Failed(e));
            }
        };
        tracing::info!(generation = number, group = %generation.group, "Rebuilding the index from offset 0 beside the live one");
        *building = Some(generation.clone());
        self.watch_consumer(generation.clone());
        *lock(&self.rebuild) = json!({
            "state": "building",
            "generation": number,
            "group": generation.group,
            "started_at": chrono::Utc::now().to_rfc3339(),
        });
        let this = self.clone();
        tokio::spawn(async move { this.follow(generation).await });
        Ok(())
    }

    /// Forgets a rebuild: recorded as not building, its directory removed.
    fn abandon_record(&self, number: u64) {
        let data_dir = &self.config.runtime.data_dir;
        let live = self.live().number;
        let recorded = Recorded {
            live,
            building: None,
        };
        if let Err(e) = write_recorded(data_dir, recorded) {
            tracing::error!(
                error = format!("{e:#}"),
                "Cannot record the given-up rebuild"
            );
        }
        let dir = index_dir(data_dir, number);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "Cannot remove the given-up index");
            }
        }
    }

    /// Gives up the rebuild of `generation` (its consumer failed): the live index goes on.
    async fn abandon(&self, generation: &Arc<Generation>, reason: &str) {
        let mut building = self.building.lock().await;
        if building.as_ref().map(|g| g.number) != Some(generation.number) {
            return;
        }
        *building = None;
        drop(building);
        let _ = generation.retire().await;
        self.abandon_record(generation.number);
        tracing::error!(
            generation = generation.number,
            error = reason,
            "The rebuild failed and was given up; the live index goes on"
        );
        *lock(&self.rebuild) = json!({
            "state": "failed",
            "generation": generation.number,
            "error": reason,
            "failed_at": chrono::Utc::now().to_rfc3339(),
        });
        self.publish_status();
    }

    /// Watches a generation's consumer: one that ends without being retired failed (its
    /// index cannot be written). A building generation is given up; the live one stops the
    /// service, so that the orchestrator restarts it rather than leave it serving an index
    /// that no longer changes.
    fn watch_consumer(self: &Arc<Self>, generation: Arc<Generation>) {
        let this = self.clone();
        tokio::spawn(async move {
            let ended = generation.ended().await;
            let failure = lock(&generation.failure).clone();
            let reason = match (failure, ended) {
                (Some(reason), _) => reason,
                (None, Ok(())) => "its consumer stopped".to_owned(),
                (None, Err(e)) => e,
            };
            if generation.retiring.load(Ordering::SeqCst) || this.shutdown.is_triggered() {
                // Replaced by a swap or given up; or the service is stopping, and its
                // wait reports how each consumer ended.
                return;
            }
            if this.live().number != generation.number {
                this.abandon(&generation, &reason).await;
                return;
            }
            tracing::error!(generation = generation.number, error = %reason, "The live index generation failed; stopping");
            lock(&this.fatal).get_or_insert(format!("generation {}: {reason}", generation.number));
            this.shutdown.trigger();
        });
    }

    /// Holds the live generation's readiness until its index covers every input partition
    /// up to the high watermark seen when it started: a new or emptied `DATA_DIR` does not
    /// serve a partial index as if it were whole.
    async fn ready_when_caught_up(self: Arc<Self>, generation: Arc<Generation>) {
        const BLOCKER: &str = "index";
        let reason = "index catching up with its inputs".to_owned();
        generation.health.set_blocker(BLOCKER, Some(reason));
        let client = self.client().await;
        let Some(target) = self.ends(&client, Some(&generation.health)).await else {
            return; // stopping
        };
        loop {
            let durable = generation.index.durable_offsets();
            if behind(&durable, &target).0 == 0 {
                generation.health.set_blocker(BLOCKER, None);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = self.shutdown.wait() => return,
            }
        }
    }

    /// A metadata client, retried until one can be made.
    async fn client(&self) -> Arc<BaseConsumer> {
        let mut delay = Duration::from_millis(250);
        loop {
            let made = self
                .config
                .runtime
                .admin_config(NAME)
                .map_err(|e| e.to_string())
                .and_then(|c| c.create::<BaseConsumer>().map_err(|e| e.to_string()));
            match made {
                Ok(client) => return Arc::new(client),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot create a metadata client; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Every input partition's low and high watermarks, retried until every configured
    /// input answers (a topic missing or in error is not "nothing to catch up with");
    /// `None` once the service stops.
    async fn ends(
        &self,
        client: &Arc<BaseConsumer>,
        report: Option<&Health>,
    ) -> Option<Vec<PartitionEnds>> {
        let topics: Vec<String> = self
            .config
            .inputs()
            .into_iter()
            .map(str::to_owned)
            .collect();
        loop {
            let (c, t) = (client.clone(), topics.clone());
            match tokio::task::spawn_blocking(move || partition_ends(&c, &t)).await {
                Ok(Ok(ends)) => return Some(ends),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Input watermarks not available yet");
                    if let Some(health) = report {
                        let reason = format!("cannot read where the index inputs end: {e}");
                        health.set_blocker("index", Some(reason));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Watermark task failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.shutdown.wait() => return None,
            }
        }
    }

    /// Follows a building generation until its durable index covers every input
    /// partition up to the high watermark, then swaps it in.
    async fn follow(self: Arc<Self>, generation: Arc<Generation>) {
        let started = Instant::now();
        let client = self.client().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = self.shutdown.wait() => return,
            }
            if generation.retiring.load(Ordering::SeqCst) {
                return;
            }
            // The durable offsets first: a high watermark read after them can only be
            // higher, which errs towards "behind".
            let durable = generation.index.durable_offsets();
            let Some(ends) = self.ends(&client, None).await else {
                return;
            };
            let (behind, lag) = behind(&durable, &ends);
            let caught_up = behind == 0;
            *lock(&self.rebuild) = json!({
                "state": if caught_up { "swapping" } else { "building" },
                "generation": generation.number,
                "group": generation.group,
                "partitions": ends.len(),
                "partitions_behind": behind,
                "lag": lag,
                "documents": generation.index.documents(),
                "elapsed_ms": started.elapsed().as_millis() as u64,
            });
            self.publish_status();
            if caught_up {
                break;
            }
        }
        self.swap(generation, started).await;
    }

    async fn swap(&self, generation: Arc<Generation>, started: Instant) {
        let old = {
            let mut building = self.building.lock().await;
            if building.as_ref().map(|g| g.number) != Some(generation.number) {
                return;
            }
            // The swap is recorded before it happens; until it can be, the new index keeps
            // building beside the live one.
            let mut delay = Duration::from_millis(250);
            while let Err(e) = write_recorded(
                &self.config.runtime.data_dir,
                Recorded {
                    live: generation.number,
                    building: None,
                },
            ) {
                tracing::error!(error = format!("{e:#}"), "Cannot record the swap; retrying");
                if self.shutdown.is_triggered() {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            let old = std::mem::replace(
                &mut *self.live.write().unwrap_or_else(|e| e.into_inner()),
                generation.clone(),
            );
            *building = None;
            old
        };
        tracing::info!(
            from = old.number,
            to = generation.number,
            took_ms = started.elapsed().as_millis() as u64,
            "Swapped in the rebuilt index"
        );
        *lock(&self.rebuild) = json!({
            "state": "retiring",
            "generation": generation.number,
            "group": generation.group,
            "replaced": old.number,
        });
        self.publish_status();
        // Searches that started on the old index hold it until they finish; its files stay
        // readable until then (removed files of an open mapping live on).
        if let Err(e) = old.retire().await {
            tracing::warn!(generation = old.number, error = %e, "The replaced generation stopped uncleanly");
        }
        let dir = old.index.dir().to_owned();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot remove the replaced index");
        }
        *lock(&self.rebuild) = json!({
            "state": "idle",
            "last": {
                "generation": generation.number,
                "group": generation.group,
                "replaced": old.number,
                "documents": generation.index.documents(),
                "took_ms": started.elapsed().as_millis() as u64,
                "swapped_at": chrono::Utc::now().to_rfc3339(),
            },
        });
        self.publish_status();
        self.forget_group(&old.group).await;
    }

    /// Deletes a replaced generation's consumer group, so that lag monitors do not report a
    /// group nobody reads for ever. Best effort: a broker without DeleteGroups keeps it.
    async fn forget_group(&self, group: &str) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        let Ok(config) = self.config.runtime.admin_config(NAME) else {
            return;
        };
        let Ok(admin) = config.create::<AdminClient<_>>() else {
            return;
        };
        match admin.delete_groups(&[group], &AdminOptions::new()).await {
            Ok(results) => {
                for r in results {
                    if let Err((g, e)) = r {
                        tracing::info!(group = %g, error = %e, "The replaced generation's group was not deleted");
                    }
                }
            }
            Err(e) => {
                tracing::info!(group, error = %e, "The replaced generation's group was not deleted")
            }
        }
    }

    /// Sets `/status`'s `index` and `rebuild` fields on the live generation's health.
    pub fn publish_status(&self) {
        let live = self.live();
        live.health.set_extra(
            "index",
            json!({
                "generation": live.number,
                "group": live.group,
                "directory": live.index.dir().display().to_string(),
                "documents": live.index.documents(),
                "commits": live.index.commits(),
            }),
        );
        live.health.set_extra("rebuild", self.rebuild_status());
    }

    /// Waits until every generation's consumer stopped (after the shutdown fired).
    pub async fn wait(&self) -> Result<(), RuntimeError> {
        self.shutdown.wait().await;
        let (live, building) = {
            // Both read under the lock a swap holds, so neither is missed nor doubled.
            let building = self.building.lock().await;
            (self.live(), building.clone())
        };
        let mut result = Ok(());
        for generation in [Some(live), building].into_iter().flatten() {
            if let Err(e) = generation.retire().await {
                tracing::warn!(generation = generation.number, error = %e, "Index generation stopped uncleanly");
                result = Err(RuntimeError::Unclean(vec![format!(
                    "generation {}: {e}",
                    generation.number
                )]));
            }
        }
        if let Some(reason) = self.fatal() {
            return Err(RuntimeError::Fatal(reason));
        }
        result
    }
}

/// One input partition and its low and high watermarks.
type PartitionEnds = ((String, i32), (i64, i64));

/// How many partitions `durable` (next offsets) is behind `ends` on, and by how many
/// records in all. A partition without a durable offset is at its low watermark.
fn behind(durable: &BTreeMap<(String, i32), i64>, ends: &[PartitionEnds]) -> (usize, i64) {
    let mut partitions = 0;
    let mut lag = 0;
    for (key, (low, high)) in ends {
        let at = durable.get(key).copied().unwrap_or(*low);
        if at < *high {
            partitions += 1;
            lag += high - at;
        }
    }
    (partitions, lag)
}

/// Every partition of every topic of `topics`, with its low and high watermarks; an error
/// when a topic is missing, in error or without partitions (its data may exist).
fn partition_ends(client: &BaseConsumer, topics: &[String]) -> Result<Vec<PartitionEnds>, String> {
    let timeout = Duration::from_secs(5);
    let mut ends = Vec::new();
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("{topic}: {e}"))?;
        for t in metadata.topics() {
            if let Some(e) = t.error() {
                return Err(format!("{topic}: {e:?}"));
            }
            if t.partitions().is_empty() {
                return Err(format!("{topic}: no partitions"));
            }
            for p in t.partitions() {
                let (low, high) = client
                    .fetch_watermarks(topic, p.id(), timeout)
                    .map_err(|e| format!("{topic}/{}: {e}", p.id()))?;
                ends.push(((topic.clone(), p.id()), (low, high)));
            }
        }
    }
    Ok(ends)
}

fn index_dir(data_dir: &Path, number: u64) -> PathBuf {
    data_dir.join(format!("index-{number}"))
}

/// The consumer group of generation `number`.
pub fn group_of(base: &str, number: u64) -> String {
    if number <= 1 {
        base.to_owned()
    } else {
        format!("{base}.g{number}")
    }
}

async fn start_generation(
    config: &SearchConfig,
    base_group: &str,
    number: u64,
    parent: &Shutdown,
) -> anyhow::Result<Arc<Generation>> {
    let dir = index_dir(&config.runtime.data_dir, number);
    let memory = config.writer_memory_mb.saturating_mul(1_000_000) as usize;
    let interval = Duration::from_millis(config.commit_ms);
    let index = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || ProductIndex::open(&dir, memory, interval))
            .await
            .context("opening the index")?
    }
    .with_context(|| format!("opening the index in {}", dir.display()))?;
    let index = Arc::new(index);
    let group = group_of(base_group, number);
    let mut runtime = config.runtime.clone();
    runtime.group_id = Some(group.clone());
    // The service's admin port is its own (it outlives generations); each generation's
    // consumer answers on a loopback port nobody needs.
    runtime.admin_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let spec = ServiceSpec::new(NAME, &config.inputs(), ADMIN_PORT);
    let stop = Shutdown::new();
    let failure = Failure {
        reason: Arc::new(Mutex::new(None)),
        stop: stop.clone(),
    };
    let indexer = Indexer::new(
        index.clone(),
        Inputs {
            products: config.products_topic.clone(),
            aggregates: config.aggregates_topic.clone(),
        },
        Batching {
            max_messages: config.batch_messages.max(1),
            max_wait: Duration::from_millis(config.batch_ms.max(1)),
        },
        failure.clone(),
    );
    {
        let (stop, parent) = (stop.clone(), parent.clone());
        tokio::spawn(async move {
            parent.wait().await;
            stop.trigger();
        });
    }
    let running = tributary_runtime::start(spec, runtime, indexer, stop.clone())
        .await
        .with_context(|| format!("starting the consumer of generation {number}"))?;
    let health = running.health.clone();
    let (ended_tx, ended) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let result = running.wait().await.map_err(|e| e.to_string());
        let _ = ended_tx.send(Some(result));
    });
    Ok(Arc::new(Generation {
        number,
        group,
        index,
        health,
        stop,
        failure: failure.reason,
        retiring: AtomicBool::new(false),
        ended,
    }))
}

fn recorded_path(data_dir: &Path) -> PathBuf {
    data_dir.join("generations.json")
}

fn read_recorded(data_dir: &Path) -> anyhow::Result<Option<Recorded>> {
    let path = recorded_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_recorded(data_dir: &Path, recorded: Recorded) -> anyhow::Result<()> {
    use std::io::Write;
    let path = recorded_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(&serde_json::to_vec(&recorded)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    // The rename is durable once the directory is.
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

/// Removes index directories that are neither live nor building (a replaced generation
/// whose removal a crash interrupted).
fn remove_strays(data_dir: &Path, recorded: Recorded) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("index-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if number != recorded.live && Some(number) != recorded.building {
            tracing::info!(dir = %entry.path().display(), "Removing a replaced index");
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}
