//! `trib replay`: moves a consumer group's committed offsets (to the earliest or latest
//! offset, a time, or an offset), so the group reads again from there: how a derived store
//! is rebuilt, or records are processed again after a fix. Refused while the group has
//! members: their commits would overwrite the new offsets.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::json;
use tributary_cluster::{EARLIEST, GroupDescription, LATEST, ResponseError, TopicPartition};

use crate::Context_;
use crate::output;

/// `trib replay` arguments.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The consumer group.
    #[arg(long, short)]
    group: String,
    /// Where to: `earliest`, `latest`, an RFC 3339 time (the first record at or after it)
    /// or an offset.
    #[arg(long)]
    to: String,
    /// Only this topic (repeatable); also how to position a group that has committed
    /// nothing yet.
    #[arg(long)]
    topic: Vec<String>,
    /// Print current and target offsets, and the lag the move would create, without
    /// committing.
    #[arg(long)]
    dry_run: bool,
}

/// Where the offsets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Earliest,
    Latest,
    Time(i64),
    Offset(i64),
}

fn parse_target(text: &str) -> anyhow::Result<Target> {
    match text {
        "earliest" => Ok(Target::Earliest),
        "latest" => Ok(Target::Latest),
        _ => {
            if let Ok(offset) = text.parse::<i64>() {
                if offset < 0 {
                    bail!("--to {text}: an offset is 0 or more");
                }
                return Ok(Target::Offset(offset));
            }
            DateTime::parse_from_rfc3339(text)
                .map(|t| Target::Time(t.with_timezone(&Utc).timestamp_millis()))
                .with_context(|| {
                    format!("--to {text}: expected earliest, latest, an offset or an RFC 3339 time (2026-11-01T10:00:00Z)")
                })
        }
    }
}

pub(crate) async fn run(args: ReplayArgs, context: &Context_) -> anyhow::Result<()> {
    let target = parse_target(&args.to)?;
    let cluster = context.cluster()?;
    let group = &args.group;
    let metadata = cluster.metadata().await.context("reading the cluster")?;
    for topic in &args.topic {
        if !metadata.topics.contains_key(topic) {
            bail!("no topic named {topic} on the cluster");
        }
    }
    let groups = [group.clone()];
    let coordinators = cluster
        .coordinators(&metadata, &groups)
        .await
        .context("finding the group's coordinator")?;
    let coordinator = coordinators
        .get(group)
        .cloned()
        .context("no coordinator answered for the group")?
        .context("finding the group's coordinator")?;
    let (described, committed) = tokio::join!(
        cluster.describe_groups(&groups, &coordinators),
        cluster.committed_offsets(&groups, &coordinators),
    );
    let description = match described
        .get(group)
        .cloned()
        .context("no description answered")?
    {
        Ok(description) => description,
        // A group that does not exist yet has no members.
        Err(tributary_cluster::Error::Kafka {
            error: ResponseError::GroupIdNotFound,
            ..
        }) => GroupDescription::default(),
        Err(e) => return Err(e).context("describing the group"),
    };
    if !description.members.is_empty() {
        let clients: BTreeSet<String> = description
            .members
            .iter()
            .map(|m| format!("{} at {}", m.client_id, m.host))
            .collect();
        bail!(
            "group {group} has {} active member(s) ({}): stop them first (stop the service or scale it to 0 and wait for its session to end), then run replay again; the broker refuses offsets for a group with members, and their commits would overwrite them",
            description.members.len(),
            clients.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let committed = committed
        .get(group)
        .cloned()
        .context("no committed offsets answered")?
        .context("reading the group's committed offsets")?;

    // The partitions to move: what the group committed (on the chosen topics), or every
    // partition of the chosen topics.
    let mut partitions: BTreeSet<TopicPartition> = committed
        .keys()
        .filter(|(t, _)| args.topic.is_empty() || args.topic.contains(t))
        .cloned()
        .collect();
    for topic in &args.topic {
        for p in &metadata.topics[topic] {
            partitions.insert((topic.clone(), p.partition));
        }
    }
    if partitions.is_empty() {
        bail!(
            "group {group} has committed no offsets: name the topics to position it on with --topic"
        );
    }

    let lows = cluster.list_offsets(&metadata, &partitions, EARLIEST).await;
    let highs = cluster.list_offsets(&metadata, &partitions, LATEST).await;
    let at_time = match target {
        Target::Time(ms) => Some(cluster.list_offsets(&metadata, &partitions, ms).await),
        _ => None,
    };
    let mut targets = BTreeMap::new();
    for tp in &partitions {
        let name = format!("{}/{}", tp.0, tp.1);
        let low = *lows[tp]
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let high = *highs[tp]
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let to = match target {
            Target::Earliest => low,
            Target::Latest => high,
            // No record at or after the time: the end.
            Target::Time(_) => match at_time.as_ref().and_then(|a| a.get(tp)) {
                Some(Ok(o)) if *o >= 0 => *o,
                Some(Err(e)) => bail!("{name}: {e}"),
                _ => high,
            },
            Target::Offset(o) if (low..=high).contains(&o) => o,
            Target::Offset(o) => {
                bail!("{name}: offset {o} is outside the records held ({low}..={high})")
            }
        };
        let current = committed.get(tp).copied();
        targets.insert(tp.clone(), to);
        output::line(
            context.json,
            || {
                format!(
                    "{name}  current={}  target={to}  end={high}  lag after={}",
                    current.map_or("-".to_owned(), |c| c.to_string()),
                    high - to
                )
            },
            || {
                json!({"group": group, "topic": tp.0, "partition": tp.1, "current": current,
                       "target": to, "high_watermark": high, "lag_after": high - to})
            },
        );
    }
    if args.dry_run {
        output::line(
            context.json,
            || "dry run: nothing was committed".to_owned(),
            || json!({"group": group, "committed": false, "dry_run": true}),
        );
        return Ok(());
    }
    cluster
        .commit_offsets(group, &coordinator, &targets)
        .await
        .with_context(|| format!("committing group {group}'s offsets"))?;
    output::line(
        context.json,
        || format!("committed {} offset(s) for group {group}", targets.len()),
        || json!({"group": group, "committed": true, "partitions": targets.len()}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_every_form_and_name_bad_ones() {
        assert_eq!(parse_target("earliest").unwrap(), Target::Earliest);
        assert_eq!(parse_target("latest").unwrap(), Target::Latest);
        assert_eq!(parse_target("42").unwrap(), Target::Offset(42));
        assert_eq!(
            parse_target("2026-11-01T10:00:00Z").unwrap(),
            Target::Time(1_793_527_200_000)
        );
        for bad in ["-1", "soon", "2026-11-01"] {
            let e = parse_target(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
