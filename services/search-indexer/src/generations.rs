//! Index generations and blue/green rebuilds. Each generation is an index directory
//! (`DATA_DIR/index-<n>`) fed by its own consumer group (generation 1 by `GROUP_ID`, later
//! ones by `<GROUP_ID>.g<n>`). One is live and answers searches; a rebuild starts the next
//! from offset 0 beside it and, once its durable commit covers every input partition up to
//! the high watermark, makes it live in one pointer swap, then stops and removes the old.
//!
//! `DATA_DIR/generations.json` records which generation is live and which is building,
//! written (atomically, by rename) before either changes, so a crash at any point restarts
//! into a consistent pair: the live index keeps serving, an interrupted rebuild goes on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tributary_runtime::rdkafka;
use tributary_runtime::{Batching, Health, RuntimeError, ServiceSpec, Shutdown};

use crate::index::ProductIndex;
use crate::indexer::{Indexer, Inputs};
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
    /// How its consumer ended, once it did.
    ended: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

impl Generation {
    /// Stops its consumer (finishing and committing in-flight batches) and closes its
    /// index; returns how the consumer ended.
    async fn retire(&self) -> Result<(), String> {
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
        if let Some(number) = recorded.building {
            tracing::info!(generation = number, "Resuming an interrupted rebuild");
            generations
                .begin(number)
                .await
                .map_err(|e| anyhow::anyhow!("resuming the rebuild of generation {number}: {e}"))?;
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
        let number = {
            let building = self.building.lock().await;
            if let Some(b) = building.as_ref() {
                return Err(RebuildError::InProgress(b.number));
            }
            self.live().number + 1
        };
        // A directory left by a crash before the rebuild was recorded is not ours.
        let dir = index_dir(&self.config.runtime.data_dir, number);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                RebuildError::Failed(anyhow::anyhow!("removing {}: {e}", dir.display()))
            })?;
        }
        self.begin(number).await?;
        Ok(number)
    }

    async fn begin(self: &Arc<Self>, number: u64) -> Result<(), RebuildError> {
        if self.shutdown.is_triggered() {
            return Err(RebuildError::Stopping);
        }
        let mut building = self.building.lock().await;
        if let Some(b) = building.as_ref() {
            return Err(RebuildError::InProgress(b.number));
        }
        write_recorded(
            &self.config.runtime.data_dir,
            Recorded {
                live: self.live().number,
                building: Some(number),
            },
        )
        .map_err(RebuildError::Failed)?;
        let generation = start_generation(&self.config, &self.base_group, number, &self.shutdown)
            .await
            .map_err(RebuildError::Failed)?;
        tracing::info!(generation = number, group = %generation.group, "Rebuilding the index from offset 0 beside the live one");
        *building = Some(generation.clone());
        drop(building);
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

    /// Stops the service when a generation's consumer ends on its own (a fatal error), so
    /// that the orchestrator restarts it rather than leave it serving a stale index.
    fn watch_consumer(self: &Arc<Self>, generation: Arc<Generation>) {
        let this = self.clone();
        tokio::spawn(async move {
            let reason = tokio::select! {
                r = generation.ended() => match r {
                    Ok(()) => "its consumer stopped".to_owned(),
                    Err(e) => e,
                },
                _ = this.shutdown.wait() => return,
            };
            if generation.stop.is_triggered() || this.shutdown.is_triggered() {
                return; // retired by a swap, or the service is stopping
            }
            tracing::error!(generation = generation.number, error = %reason, "Index generation failed; stopping");
            lock(&this.fatal).get_or_insert(format!("generation {}: {reason}", generation.number));
            this.shutdown.trigger();
        });
    }

    /// Follows a building generation until its durable index covers every input
    /// partition up to the high watermark, then swaps it in.
    async fn follow(self: Arc<Self>, generation: Arc<Generation>) {
        let started = Instant::now();
        let client: Option<BaseConsumer> = self
            .config
            .runtime
            .admin_config(NAME)
            .ok()
            .and_then(|c| c.create().ok());
        let Some(client) = client.map(Arc::new) else {
            tracing::error!("Cannot create a client to follow the rebuild");
            return;
        };
        let topics = self
            .config
            .inputs()
            .into_iter()
            .map(|t| t.to_owned())
            .collect::<Vec<_>>();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = self.shutdown.wait() => return,
            }
            if generation.stop.is_triggered() {
                return;
            }
            let durable = generation.index.durable_offsets();
            let c = client.clone();
            let topics = topics.clone();
            let ends = tokio::task::spawn_blocking(move || partition_ends(&c, &topics)).await;
            let Ok(Ok(ends)) = ends else {
                continue; // broker unreachable: try again
            };
            let mut lag = 0i64;
            let mut behind = 0usize;
            for ((topic, partition), (low, high)) in &ends {
                let at = durable
                    .get(&(topic.clone(), *partition))
                    .copied()
                    .unwrap_or(*low);
                if at < *high {
                    behind += 1;
                    lag += high - at;
                }
            }
            let caught_up = behind == 0 && !ends.is_empty();
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
            if let Err(e) = write_recorded(
                &self.config.runtime.data_dir,
                Recorded {
                    live: generation.number,
                    building: None,
                },
            ) {
                tracing::error!(
                    error = format!("{e:#}"),
                    "Cannot record the swap; the rebuild stays beside the live index"
                );
                return;
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
        let building = self.building.lock().await.clone();
        let mut result = Ok(());
        for generation in [Some(self.live()), building].into_iter().flatten() {
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

/// Every partition of `topics` that exists, with its low and high watermarks.
fn partition_ends(
    client: &BaseConsumer,
    topics: &[String],
) -> Result<Vec<((String, i32), (i64, i64))>, rdkafka::error::KafkaError> {
    let timeout = Duration::from_secs(5);
    let mut ends = Vec::new();
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), timeout)?;
        for t in metadata.topics() {
            if t.error().is_some() {
                continue; // not created yet: nothing to catch up with
            }
            for p in t.partitions() {
                let (low, high) = client.fetch_watermarks(topic, p.id(), timeout)?;
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
    );
    let stop = Shutdown::new();
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
