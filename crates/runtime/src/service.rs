//! Starting a consumer service: owned topics, clients, the loop, admin HTTP, and an orderly
//! stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};

use crate::admin::{self, Health};
use crate::config::RuntimeConfig;
use crate::consumer::context::LoopContext;
use crate::consumer::{LoopSettings, Shared, poll_loop};
use crate::processor::{Output, Processor};
use crate::topics::{self, TopicSpec};
use crate::{Shutdown, metrics};

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The admin port could not be bound.
    #[error("admin server: {0}")]
    Io(#[from] std::io::Error),
    /// A task failed.
    #[error("{0}")]
    Task(String),
    /// The service stopped because it could not go on safely (a fatal producer error, a
    /// permanent failure of a processor hook); the orchestrator should restart it.
    #[error("stopped on a fatal error: {0}")]
    Fatal(String),
    /// The stop did not finish cleanly: work was left unfinished at the deadline, the
    /// consumer did not close, or the producer did not flush. Nothing finished was lost
    /// (unfinished offsets stay uncommitted), but some work will be done again.
    #[error("unclean stop: {}", .0.join("; "))]
    Unclean(Vec<String>),
}

impl RuntimeError {
    /// The process exit status for this error: 1 for a fatal error or a failed start, 2
    /// for an unclean stop. A clean stop exits 0.
    pub fn exit_code(&self) -> u8 {
        match self {
            RuntimeError::Unclean(_) => 2,
            _ => 1,
        }
    }
}

/// What a consumer service is: its name (the default group id and client id), the topics
/// it reads, and its default admin port.
#[derive(Debug)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Input topics.
    pub inputs: Vec<String>,
    /// Admin port used when `--admin-addr` is not given.
    pub admin_port: u16,
    /// Extra admin routes (merged into the admin router).
    pub admin_routes: Option<axum::Router>,
}

impl ServiceSpec {
    /// A service reading `inputs`, with its admin API on `admin_port` by default.
    pub fn new(name: &str, inputs: &[&str], admin_port: u16) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            admin_port,
            admin_routes: None,
        }
    }
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    /// Where the admin HTTP server listens.
    pub admin_addr: SocketAddr,
    /// The service's health, shared with its admin endpoints.
    pub health: Health,
    task: tokio::task::JoinHandle<Result<(), RuntimeError>>,
}

impl Running {
    /// Waits until the service stopped (after its shutdown signal fired).
    pub async fn wait(self) -> Result<(), RuntimeError> {
        self.task
            .await
            .map_err(|e| RuntimeError::Task(format!("service task: {e}")))?
    }
}

/// Starts a consumer service and returns once its admin server listens; the service runs
/// until `shutdown` fires.
pub async fn start<P: Processor>(
    spec: ServiceSpec,
    config: RuntimeConfig,
    processor: P,
    shutdown: Shutdown,
) -> Result<Running, RuntimeError> {
    let name = spec.name.clone();
    let metrics = metrics::install(&config.metrics_prefix, &config.statsd_addr, &name);
    let group = config.group(&name);
    let dlq_topic = tributary_events::topics::dlq(&group);
    let health = Health::consumer(&name, &group, &dlq_topic);
    let mut router = admin::router(health.clone(), metrics);
    if let Some(extra) = spec.admin_routes {
        router = router.merge(extra);
    }
    let admin_stop = Shutdown::new();
    let addr = config
        .admin_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], spec.admin_port)));
    let (admin_addr, admin_task) = admin::serve(addr, router, admin_stop.clone()).await?;
    tracing::info!(service = %name, group = %group, admin = %admin_addr, "Starting");

    let settings = LoopSettings {
        service: name.clone(),
        inputs: spec.inputs.clone(),
        dlq_topic: dlq_topic.clone(),
        max_in_flight: config.max_in_flight,
        max_attempts: config.max_attempts.max(1),
        backoff: Duration::from_millis(config.backoff_ms),
        max_backoff: Duration::from_millis(config.max_backoff_ms),
        commit_interval: Duration::from_millis(config.commit_interval_ms.max(10)),
        shutdown_timeout: config.shutdown_timeout(),
        static_member: config.group_instance_id.is_some(),
        session_timeout: Duration::from_millis(config.session_timeout_ms),
    };
    let task_health = health.clone();
    let task = tokio::spawn(async move {
        let result = run_loop(
            &name,
            &spec.inputs,
            &config,
            settings,
            Arc::new(processor),
            task_health,
            shutdown,
        )
        .await;
        // Everything processed is committed by now; its metrics must leave with it.
        let _ = tokio::task::spawn_blocking(metrics::flush).await;
        admin_stop.trigger();
        let _ = admin_task.await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "Service failed");
        } else {
            tracing::info!("Stopped");
        }
        result
    });
    Ok(Running {
        admin_addr,
        health,
        task,
    })
}

/// Starts a consumer service and runs it until `shutdown` fires and it stopped.
pub async fn run<P: Processor>(
    spec: ServiceSpec,
    config: RuntimeConfig,
    processor: P,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    start(spec, config, processor, shutdown).await?.wait().await
}

async fn run_loop<P: Processor>(
    name: &str,
    inputs: &[String],
    config: &RuntimeConfig,
    settings: LoopSettings,
    processor: Arc<P>,
    health: Health,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let config_error = |e: crate::kafka::PropertyError| RuntimeError::Config(e.to_string());
    let admin_config = config.admin_config(name).map_err(config_error)?;

    // The dead-letter topic is ours to create: the dev broker creates nothing on first
    // use, and a production cluster may not allow auto-creation either.
    let owned = [TopicSpec::new(&settings.dlq_topic, 1)
        .with_config("cleanup.policy", "delete")
        .with_config("retention.ms", "2592000000")];
    let mut delay = Duration::from_millis(250);
    loop {
        match topics::apply(&admin_config, &owned, -1, false).await {
            Ok(_) => break,
            Err(e) => {
                health.set_broker_reachable(false);
                tracing::warn!(error = %e, "Cannot ensure owned topics; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    health.set_broker_reachable(true);

    let producer: FutureProducer = config
        .producer_config(name)
        .map_err(config_error)?
        .create()?;
    let (shared, control) = Shared::new(
        settings.clone(),
        processor.clone(),
        producer.clone(),
        health.clone(),
        shutdown.clone(),
    );
    let context = crate::processor::ServiceContext {
        service: name.to_owned(),
        group: config.group(name),
        inputs: inputs.to_vec(),
        config: config.clone(),
        health: health.clone(),
        producer: producer.clone(),
        freeze: shared.freeze_guard(),
    };
    let mut delay = Duration::from_millis(250);
    loop {
        let started = std::panic::AssertUnwindSafe(processor.on_start(&context))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(crate::ProcessError::Permanent(format!(
                    "on_start panicked: {}",
                    crate::consumer::worker::panic_text(&*panic)
                )))
            });
        match started {
            Ok(()) => break,
            Err(crate::ProcessError::Transient(e) | crate::ProcessError::Blocked(e)) => {
                tracing::warn!(error = %e, "Service start failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e @ crate::ProcessError::Permanent(_)) => {
                return Err(RuntimeError::Fatal(format!("service start failed: {e}")));
            }
        }
    }
    let mut consumer_config = config.consumer_config(name).map_err(config_error)?;
    if processor.co_partitioned() {
        // One instance must own partition p of every input: `range` assigns partition p of
        // each topic to the same member (cooperative-sticky balances topics separately).
        consumer_config.set("partition.assignment.strategy", "range");
    }
    // The freeze detector works from the group timeouts in force (KAFKA_CONFIG may set
    // them).
    let millis = |key: &str| {
        consumer_config
            .get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    if let Some(session) = millis("session.timeout.ms") {
        let heartbeat = millis("heartbeat.interval.ms").unwrap_or(session / 3);
        shared.liveness.configure(session, heartbeat);
    }
    if consumer_config.get("statistics.interval.ms").is_none() {
        // Statistics carry each partition's high watermark, for lag without extra requests.
        consumer_config.set("statistics.interval.ms", "1000");
    }
    let consumer: BaseConsumer<LoopContext<P>> =
        consumer_config.create_with_context(LoopContext {
            shared: shared.clone(),
        })?;
    let topics: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;

    let probe = producer.clone();
    let watchdog = tokio::spawn(watch_broker(
        move || crate::kafka::reachable(probe.client()),
        health.clone(),
        shutdown.clone(),
    ));
    let ticker = tokio::spawn(tick(processor, shared.clone(), shutdown.clone()));

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let poll_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("{name}-poll"))
        .spawn(move || {
            poll_loop(consumer, poll_shared, control);
            let _ = done_tx.send(());
        })?;

    shutdown.wait().await;
    let mut unclean = Vec::new();
    // The poll thread drains and commits within the shutdown deadline; closing the
    // consumer can hang when the broker is gone (rust-rdkafka #509), so bound the wait.
    // Draining and on_revoked share one deadline; a commit and the close follow.
    let grace = settings.shutdown_timeout + Duration::from_secs(10);
    match tokio::time::timeout(grace, done_rx).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => unclean.push("the poll thread ended without closing the consumer".into()),
        Err(_) => unclean.push(format!("the consumer did not close within {grace:?}")),
    }
    // A tick in progress finishes publishing; past the deadline its re-sends stop.
    let mut ticker = ticker;
    if tokio::time::timeout(settings.shutdown_timeout, &mut ticker)
        .await
        .is_err()
    {
        shared.tick_abandon.cancel();
        if tokio::time::timeout(Duration::from_secs(1), &mut ticker)
            .await
            .is_err()
        {
            ticker.abort();
        }
        unclean.push(format!(
            "on_tick outputs were not all acknowledged within {:?}",
            settings.shutdown_timeout
        ));
    }
    watchdog.abort();
    let flush = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)));
    match flush.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => unclean.push(format!("producer flush incomplete: {e}")),
        Err(e) => unclean.push(format!("producer flush task failed: {e}")),
    }
    if let Some(reason) = shared.fatal() {
        return Err(RuntimeError::Fatal(reason));
    }
    unclean.splice(0..0, shared.unclean_reasons());
    if unclean.is_empty() {
        Ok(())
    } else {
        Err(RuntimeError::Unclean(unclean))
    }
}

/// Marks the broker reachable or not, every two seconds, until `shutdown`.
/// `probe` blocks (a metadata request); it runs on the blocking pool.
pub async fn watch_broker<F>(probe: F, health: Health, shutdown: Shutdown)
where
    F: Fn() -> bool + Clone + Send + 'static,
{
    while !shutdown.is_triggered() {
        let reachable = tokio::task::spawn_blocking(probe.clone())
            .await
            .unwrap_or(false);
        health.set_broker_reachable(reachable);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.wait() => {}
        }
    }
}

/// Calls the processor's `on_tick` every second and publishes what it returns, in order.
/// A panicking tick is logged and counted, and ticking goes on; on shutdown the tick in
/// progress finishes publishing before this returns.
async fn tick<P: Processor>(processor: Arc<P>, shared: Arc<Shared<P>>, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_triggered() {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.wait() => break,
        }
        // Right after a freeze a tick would compute from state that may have moved on
        // elsewhere; it skips until the hold ends.
        if shared.liveness.held() {
            continue;
        }
        let outputs = std::panic::AssertUnwindSafe(processor.on_tick())
            .catch_unwind()
            .await;
        let outputs: Vec<Output> = match outputs {
            Ok(outputs) => outputs,
            Err(panic) => {
                ::metrics::counter!(metrics::names::ERRORS, "kind" => "tick_panic").increment(1);
                tracing::error!(
                    panic = crate::consumer::worker::panic_text(&*panic),
                    "on_tick panicked; ticking goes on"
                );
                continue;
            }
        };
        if !outputs.is_empty() && shared.publish(outputs).await.is_err() {
            return;
        }
    }
}
