//! `trib groups` and `trib lag`: every consumer group with its members, committed offsets
//! and lag; and Burrow's status from a few readings, judged by the same code as
//! metrics-emitter's `/lag` (`tributary_cluster::lag`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use tributary_cluster::TopicPartition;
use tributary_cluster::lag::{LagMonitor, Settings, assignment};

use crate::Context_;
use crate::output;

/// `trib groups` arguments.
#[derive(Debug, Args)]
pub(crate) struct GroupsArgs {
    /// Only this group.
    #[arg(long, short)]
    group: Option<String>,
}

/// `trib lag` arguments.
#[derive(Debug, Args)]
pub(crate) struct LagArgs {
    /// Only this group.
    #[arg(long, short)]
    group: Option<String>,
    /// Readings to take before judging (Burrow's rules need commits over time).
    #[arg(long, default_value_t = 3)]
    samples: u32,
    /// Time between readings, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    interval_ms: u64,
    /// Lag at or below this counts as none (Burrow's `allowed-lag`).
    #[arg(long, default_value_t = 0)]
    allowed_lag: i64,
}

fn wanted(all: &[String], only: Option<&String>) -> anyhow::Result<Vec<String>> {
    match only {
        None => Ok(all.to_vec()),
        Some(g) if all.contains(g) => Ok(vec![g.clone()]),
        Some(g) => bail!("no group named {g} on the cluster"),
    }
}

pub(crate) async fn groups(args: GroupsArgs, context: &Context_) -> anyhow::Result<()> {
    let cluster = context.cluster()?;
    let metadata = cluster.metadata().await.context("reading the cluster")?;
    let listed = cluster
        .list_groups(&metadata)
        .await
        .context("listing groups")?;
    let names: Vec<String> = listed.iter().map(|g| g.group.clone()).collect();
    let names = wanted(&names, args.group.as_ref())?;
    let coordinators = cluster
        .coordinators(&metadata, &names)
        .await
        .context("finding group coordinators")?;
    let (described, committed) = tokio::join!(
        cluster.describe_groups(&names, &coordinators),
        cluster.committed_offsets(&names, &coordinators),
    );
    let partitions: BTreeSet<TopicPartition> = committed
        .values()
        .filter_map(|c| c.as_ref().ok())
        .flat_map(|c| c.keys().cloned())
        .collect();
    let ends = cluster.high_watermarks(&metadata, &partitions).await;
    let mut failed = 0;
    for name in &names {
        let description = described.get(name).map(|d| d.as_ref());
        let offsets = committed.get(name).map(|c| c.as_ref());
        let (state, members) = match description {
            Some(Ok(d)) => (
                d.state.clone(),
                d.members
                    .iter()
                    .map(|m| {
                        let assigned: BTreeSet<TopicPartition> = if d.protocol_type == "consumer" {
                            assignment::parse(&m.assignment)
                        } else {
                            BTreeSet::new()
                        };
                        (
                            m.member_id.clone(),
                            m.client_id.clone(),
                            m.host.clone(),
                            assigned,
                        )
                    })
                    .collect::<Vec<_>>(),
            ),
            Some(Err(e)) => (format!("unknown ({e})"), Vec::new()),
            None => ("unknown".to_owned(), Vec::new()),
        };
        let rows: Vec<(TopicPartition, i64, Option<i64>)> = match offsets {
            Some(Ok(o)) => o
                .iter()
                .map(|(tp, c)| {
                    let end = ends.get(tp).and_then(|e| e.as_ref().ok()).copied();
                    (tp.clone(), *c, end)
                })
                .collect(),
            _ => Vec::new(),
        };
        let error = match (offsets, description) {
            (Some(Err(e)), _) => Some(e.to_string()),
            (None, _) => Some("no answer".to_owned()),
            (_, Some(Err(e))) => Some(format!("cannot describe the group: {e}")),
            (_, None) => Some("no description answered".to_owned()),
            _ => None,
        };
        if error.is_some() {
            failed += 1;
        }
        let total: i64 = rows
            .iter()
            .filter_map(|(_, c, e)| e.map(|e| (e - c).max(0)))
            .sum();
        output::line(
            context.json,
            || {
                let mut text = format!(
                    "{name}  state={state}  members={}  lag={total}",
                    members.len()
                );
                if let Some(e) = &error {
                    text.push_str(&format!("  error: {e}"));
                }
                for (id, client, host, assigned) in &members {
                    let assigned: Vec<String> =
                        assigned.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                    text.push_str(&format!(
                        "\n  member {id} (client {client} at {host}) assigned [{}]",
                        assigned.join(", ")
                    ));
                }
                for ((t, p), c, e) in &rows {
                    let end = e.map_or("?".to_owned(), |e| e.to_string());
                    let lag = e.map_or("?".to_owned(), |e| (e - c).max(0).to_string());
                    text.push_str(&format!("\n  {t}/{p}  committed={c}  end={end}  lag={lag}"));
                }
                text
            },
            || {
                json!({
                    "group": name, "state": state, "lag": total, "error": error,
                    "members": members.iter().map(|(id, client, host, assigned)| json!({
                        "member_id": id, "client_id": client, "host": host,
                        "assigned": assigned.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "partitions": rows.iter().map(|((t, p), c, e)| json!({
                        "topic": t, "partition": p, "committed": c, "high_watermark": e,
                        "lag": e.map(|e| (e - c).max(0)),
                    })).collect::<Vec<_>>(),
                })
            },
        );
    }
    if failed > 0 {
        bail!("{failed} group(s) could not be read");
    }
    Ok(())
}

pub(crate) async fn lag(args: LagArgs, context: &Context_) -> anyhow::Result<()> {
    let mut monitor = LagMonitor::new(
        context.cluster()?,
        Settings {
            window: args.samples.max(1) as usize,
            allowed_lag: args.allowed_lag,
            minimum_complete: 0.0,
        },
    );
    let mut report = None;
    for i in 0..args.samples.max(1) {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        report = Some(
            monitor
                .try_observe()
                .await
                .map_err(|e| anyhow::anyhow!(e))?,
        );
    }
    let report = report.expect("at least one reading");
    let names: Vec<String> = report.groups.iter().map(|g| g.group.clone()).collect();
    let names: BTreeSet<String> = wanted(&names, args.group.as_ref())?.into_iter().collect();
    let mut statuses = BTreeMap::new();
    for group in report.groups.iter().filter(|g| names.contains(&g.group)) {
        statuses.insert(group.group.clone(), group.status);
        output::line(
            context.json,
            || {
                let mut text = format!(
                    "{}  {}  complete={:.2}  members={}",
                    group.group,
                    group.status.as_str(),
                    group.complete,
                    group.members
                );
                if let Some(e) = &group.error {
                    text.push_str(&format!("  error: {e}"));
                }
                for p in &group.partitions {
                    let show = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
                    text.push_str(&format!(
                        "\n  {}/{}  committed={}  end={}  lag={}  {}",
                        p.topic,
                        p.partition,
                        show(p.committed),
                        show(p.high_watermark),
                        show(p.lag),
                        p.status.as_str()
                    ));
                }
                text
            },
            || serde_json::to_value(group).unwrap_or_default(),
        );
    }
    Ok(())
}
