//! Changes applied but not yet committed, and the handle a processor reads and writes
//! state through.
//!
//! Every successfully processed message leaves one entry in a log, in processing order.
//! Reads see the newest pending value of a key before the committed one, so a message
//! always sees what the messages before it did. A batch is a prefix of that log: the
//! commit writes the prefix's final values and drops it, while the worker goes on adding
//! the next batch's entries behind it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tributary_runtime::ProcessError;

use crate::store::{Store, entry_key};

/// A typed table of a store: values of type `V`, stored as JSON, under string keys.
#[derive(Debug)]
pub struct Table<V> {
    name: &'static str,
    _value: PhantomData<fn() -> V>,
}

impl<V> Table<V> {
    /// The table called `name`: letters, digits, `_`, `-` and `.`, not empty.
    pub const fn new(name: &'static str) -> Table<V> {
        Table {
            name,
            _value: PhantomData,
        }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Whether `name` may name a table (it is the first part of every changelog key).
pub(crate) fn valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// One processed message's changes.
#[derive(Debug)]
struct Applied {
    seq: u64,
    /// `topic/partition` of the input (shared by every message of that partition).
    partition: Arc<str>,
    offset: i64,
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What a batch (a prefix of the log) changed.
#[derive(Debug, Default)]
pub(crate) struct Prefix {
    /// The last entry of the prefix; `0` when it is empty.
    pub(crate) last_seq: u64,
    /// Each changed entry's final value (`None`: deleted) ...
    pub(crate) changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// ... and the input that wrote it (`topic/partition@offset`).
    pub(crate) sources: HashMap<Vec<u8>, String>,
}

/// The pending changes of one task.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    seq: u64,
    log: VecDeque<Applied>,
    /// The newest pending value of each entry, with the entry that wrote it. Ordered, so a
    /// range read visits only the pending keys in its range, not every pending key.
    index: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
    /// The `topic/partition` names seen, made once.
    names: Vec<(String, i32, Arc<str>)>,
}

impl Pending {
    /// Records the changes of the message at `offset` of `topic`'s `partition`.
    pub(crate) fn apply(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) {
        if changes.is_empty() {
            return;
        }
        let partition = match self
            .names
            .iter()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, name)) => name.clone(),
            None => {
                let name: Arc<str> = format!("{topic}/{partition}").into();
                self.names.push((topic.to_owned(), partition, name.clone()));
                name
            }
        };
        self.seq += 1;
        let seq = self.seq;
        let changes: Vec<_> = changes.into_iter().collect();
        for (k, v) in &changes {
            self.index.insert(k.clone(), (seq, v.clone()));
        }
        self.log.push_back(Applied {
            seq,
            partition,
            offset,
            changes,
        });
    }

    /// The newest pending value of an entry: `Some(None)` when it was deleted, `None`
    /// when nothing pending touched it.
    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.index.get(key).map(|(_, v)| v)
    }

    /// The batch ending at `next` (the next offset of each input partition it covers):
    /// the longest prefix of the log whose entries all lie before those offsets.
    pub(crate) fn prefix(&self, next: &BTreeMap<String, i64>) -> Prefix {
        let mut prefix = Prefix::default();
        // Each entry's last write inside the prefix, copied once.
        let mut last: HashMap<&[u8], (&Option<Vec<u8>>, &Applied)> = HashMap::new();
        for applied in &self.log {
            let inside = next
                .get(&*applied.partition)
                .is_some_and(|n| applied.offset < *n);
            if !inside {
                break;
            }
            prefix.last_seq = applied.seq;
            for (k, v) in &applied.changes {
                last.insert(k.as_slice(), (v, applied));
            }
        }
        prefix.sources.reserve(last.len());
        for (k, (v, applied)) in last {
            prefix.changes.insert(k.to_vec(), v.clone());
            prefix.sources.insert(
                k.to_vec(),
                format!("{}@{}", applied.partition, applied.offset),
            );
        }
        prefix
    }

    /// Drops the committed prefix up to `last_seq`: its values are in the store now.
    pub(crate) fn drain(&mut self, last_seq: u64) {
        while self.log.front().is_some_and(|a| a.seq <= last_seq) {
            self.log.pop_front();
        }
        self.index.retain(|_, (seq, _)| *seq > last_seq);
    }

    /// Forgets everything: the batch will be processed again (by whoever owns it next).
    pub(crate) fn clear(&mut self) {
        self.log.clear();
        self.index.clear();
    }

    /// Every pending entry whose entry key lies in `[low, high)`.
    fn range<'s>(
        &'s self,
        low: &'s [u8],
        high: &'s [u8],
    ) -> impl Iterator<Item = (&'s Vec<u8>, &'s Option<Vec<u8>>)> + 's {
        use std::ops::Bound;
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(low), Bound::Excluded(high));
        // An empty range (low >= high) would make BTreeMap::range panic.
        (low < high)
            .then(|| self.index.range::<[u8], _>(bounds))
            .into_iter()
            .flatten()
            .map(|(k, (_, v))| (k, v))
    }

    /// How many processed messages wait for a commit.
    pub(crate) fn len(&self) -> usize {
        self.log.len()
    }
}

/// A processor's view of its partition's state while it processes one message: the
/// committed state with every earlier message's changes on top. Its own writes count only
/// if processing succeeds; a failed message leaves no trace.
#[derive(Debug)]
pub struct State<'a> {
    store: &'a Store,
    pending: &'a Pending,
    scratch: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

fn bad_table(name: &str) -> ProcessError {
    ProcessError::Permanent(format!("invalid state table name {name:?}"))
}

impl<'a> State<'a> {
    pub(crate) fn new(store: &'a Store, pending: &'a Pending) -> State<'a> {
        State {
            store,
            pending,
            scratch: BTreeMap::new(),
        }
    }

    pub(crate) fn into_changes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.scratch
    }

    /// The current value of `key` in `table`.
    pub fn get<V: DeserializeOwned>(
        &self,
        table: &Table<V>,
        key: &str,
    ) -> Result<Option<V>, ProcessError> {
        if !valid_table_name(table.name) {
            return Err(bad_table(table.name));
        }
        let k = entry_key(table.name, key);
        let bytes = match self.scratch.get(&k).or_else(|| self.pending.get(&k)) {
            Some(v) => v.clone(),
            None => self
                .store
                .get(table.name, key)
                // The local store failing is not the message's fault: it waits, it is not
                // dead-lettered (that would lose its update).
                .map_err(|e| ProcessError::Blocked(format!("reading state: {e}")))?,
        };
        bytes
            .map(|b| {
                // Neither is a stored value this code cannot read (a corrupt store, or a
                // deploy that changed the value's type): every later update of the key
                // would be lost if each were dead-lettered. The partition stalls and says
                // why, until the code or the store is fixed.
                serde_json::from_slice(&b).map_err(|e| {
                    ProcessError::Blocked(format!(
                        "stored value of {}/{key} does not decode: {e}",
                        table.name
                    ))
                })
            })
            .transpose()
    }

    /// The current entries of `table` whose keys lie in `[from, to)`, in key order, at
    /// most `limit` of them: the committed store with every pending change on top.
    pub fn range<V: DeserializeOwned>(
        &self,
        table: &Table<V>,
        from: &str,
        to: &str,
        limit: usize,
    ) -> Result<Vec<(String, V)>, ProcessError> {
        if !valid_table_name(table.name) {
            return Err(bad_table(table.name));
        }
        let (low, high) = (entry_key(table.name, from), entry_key(table.name, to));
        if low >= high {
            return Ok(Vec::new());
        }
        // Pending and scratch changes may delete committed entries or add new ones: read
        // enough committed entries that `limit` survive the deletions.
        let overlay: BTreeMap<&Vec<u8>, &Option<Vec<u8>>> = self
            .pending
            .range(&low, &high)
            .chain(self.scratch.range(low.clone()..high.clone()))
            .collect();
        let deleted = overlay.values().filter(|v| v.is_none()).count();
        let committed = self
            .store
            .range(table.name, from, to, limit.saturating_add(deleted))
            .map_err(|e| ProcessError::Blocked(format!("reading state: {e}")))?;
        let prefix = table.name.len() + 1;
        let mut merged: BTreeMap<String, Vec<u8>> = committed.into_iter().collect();
        for (k, v) in overlay {
            let key = String::from_utf8_lossy(&k[prefix..]).into_owned();
            match v {
                Some(v) => merged.insert(key, v.clone()),
                None => merged.remove(&key),
            };
        }
        merged
            .into_iter()
            .take(limit)
            .map(|(key, bytes)| {
                let value = serde_json::from_slice(&bytes).map_err(|e| {
                    ProcessError::Blocked(format!(
                        "stored value of {}/{key} does not decode: {e}",
                        table.name
                    ))
                })?;
                Ok((key, value))
            })
            .collect()
    }

    /// Sets `key` in `table` to `value`.
    pub fn put<V: Serialize>(
        &mut self,
        table: &Table<V>,
        key: &str,
        value: &V,
    ) -> Result<(), ProcessError> {
        if !valid_table_name(table.name) {
            return Err(bad_table(table.name));
        }
        let bytes = serde_json::to_vec(value).map_err(|e| {
            ProcessError::Permanent(format!(
                "value for {}/{key} does not encode: {e}",
                table.name
            ))
        })?;
        self.scratch.insert(entry_key(table.name, key), Some(bytes));
        Ok(())
    }

    /// Removes `key` from `table`.
    pub fn delete<V>(&mut self, table: &Table<V>, key: &str) -> Result<(), ProcessError> {
        if !valid_table_name(table.name) {
            return Err(bad_table(table.name));
        }
        self.scratch.insert(entry_key(table.name, key), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(k: &str, v: Option<&str>) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        [(k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))].into()
    }

    #[test]
    fn a_batch_is_the_prefix_before_its_offsets_and_later_entries_stay() {
        let mut pending = Pending::default();
        pending.apply("a", 0, 5, change("k", Some("1")));
        pending.apply("b", 0, 9, change("k", Some("2")));
        pending.apply("a", 0, 6, change("j", Some("3")));
        // The batch covers a/0 up to 6 (exclusive) and b/0 up to 10.
        let next = [("a/0".to_owned(), 6), ("b/0".to_owned(), 10)].into();
        let prefix = pending.prefix(&next);
        assert_eq!(prefix.last_seq, 2);
        assert_eq!(prefix.changes[b"k".as_slice()], Some(b"2".to_vec()));
        assert!(!prefix.changes.contains_key(b"j".as_slice()));
        assert_eq!(prefix.sources[b"k".as_slice()], "b/0@9");
        pending.drain(prefix.last_seq);
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending.get(b"k"),
            None,
            "committed values are read from the store"
        );
        assert_eq!(pending.get(b"j"), Some(&Some(b"3".to_vec())));
    }

    #[test]
    fn a_range_reads_committed_entries_with_pending_and_own_changes_on_top() {
        const T: Table<u32> = Table::new("t");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p0.redb")).unwrap();
        let committed: BTreeMap<_, _> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, k)| (entry_key("t", k), Some(i.to_string().into_bytes())))
            .chain([(entry_key("u", "b2"), Some(b"99".to_vec()))])
            .collect();
        store
            .commit(&committed, &crate::store::Checkpoint::default())
            .unwrap();
        let mut pending = Pending::default();
        // An earlier message deleted b and added b1; this one deletes c and adds bb.
        let mut earlier = BTreeMap::new();
        earlier.insert(entry_key("t", "b"), None);
        earlier.insert(entry_key("t", "b1"), Some(b"10".to_vec()));
        pending.apply("in", 0, 1, earlier);
        let mut state = State::new(&store, &pending);
        state.delete(&T, "c").unwrap();
        state.put(&T, "bb", &20).unwrap();
        let keys = |rows: Vec<(String, u32)>| rows.into_iter().collect::<Vec<_>>();
        assert_eq!(
            keys(state.range(&T, "a", "z", 10).unwrap()),
            vec![
                ("a".into(), 0),
                ("b1".into(), 10),
                ("bb".into(), 20),
                ("d".into(), 3)
            ]
        );
        // The limit counts what survives; the bounds are half-open; other tables stay out.
        assert_eq!(
            keys(state.range(&T, "b", "d", 2).unwrap()),
            vec![("b1".into(), 10), ("bb".into(), 20)]
        );
        assert_eq!(
            keys(state.range(&T, "a", "b1", 10).unwrap()),
            vec![("a".into(), 0)]
        );
    }

    #[test]
    fn a_key_changed_again_after_the_batch_keeps_its_newer_pending_value() {
        let mut pending = Pending::default();
        pending.apply("a", 0, 1, change("k", Some("old")));
        pending.apply("a", 0, 2, change("k", None));
        let prefix = pending.prefix(&[("a/0".to_owned(), 2)].into());
        assert_eq!(prefix.changes[b"k".as_slice()], Some(b"old".to_vec()));
        pending.drain(prefix.last_seq);
        assert_eq!(pending.get(b"k"), Some(&None));
    }

    #[test]
    fn table_names_are_checked() {
        assert!(valid_table_name("price_v1.x-y"));
        assert!(!valid_table_name(""));
        assert!(!valid_table_name("a\0b"));
        assert!(!valid_table_name("a/b"));
    }
}

#[cfg(test)]
mod model {
    //! A property test over random operation sequences: reads through pending changes,
    //! batch commits and crashes against a plain map model.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::store::Checkpoint;

    const TABLE: Table<u32> = Table::new("t");

    #[derive(Debug, Clone)]
    enum Op {
        /// A message of input partition `input` writing (key, value or delete) pairs.
        Message {
            input: u8,
            writes: Vec<(u8, Option<u32>)>,
        },
        /// Commit everything processed so far as one batch.
        Commit,
        /// Crash: lose what is pending, reopen the store.
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..2, prop::collection::vec((0u8..6, prop::option::of(0u32..100)), 0..4))
                .prop_map(|(input, writes)| Op::Message { input, writes }),
            2 => Just(Op::Commit),
            1 => Just(Op::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn reads_commits_and_crashes_agree_with_a_map(ops in prop::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p0.redb");
            let mut store = Store::open(&path).unwrap();
            let mut pending = Pending::default();
            // The model: what is committed, and what every processed message made of it.
            let mut committed: BTreeMap<String, u32> = BTreeMap::new();
            let mut current = committed.clone();
            let mut next = [0i64; 2];
            let mut batch_next: BTreeMap<String, i64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Message { input, writes } => {
                        let mut state = State::new(&store, &pending);
                        for (k, v) in &writes {
                            let key = k.to_string();
                            // Every read sees every earlier message's writes.
                            prop_assert_eq!(state.get(&TABLE, &key).unwrap(), current.get(&key).copied());
                            match v {
                                Some(v) => { state.put(&TABLE, &key, v).unwrap(); current.insert(key, *v); }
                                None => { state.delete(&TABLE, &key).unwrap(); current.remove(&key); }
                            }
                        }
                        let changes = state.into_changes();
                        let name = format!("in/{input}");
                        let offset = next[input as usize];
                        next[input as usize] += 1;
                        pending.apply("in", i32::from(input), offset, changes);
                        batch_next.insert(name, offset + 1);
                    }
                    Op::Commit => {
                        let prefix = pending.prefix(&batch_next);
                        let checkpoint = Checkpoint { offsets: batch_next.clone(), changelog_position: 0 };
                        store.commit(&prefix.changes, &checkpoint).unwrap();
                        pending.drain(prefix.last_seq);
                        prop_assert_eq!(pending.len(), 0);
                        committed = current.clone();
                        batch_next.clear();
                    }
                    Op::Crash => {
                        pending.clear();
                        drop(store);
                        store = Store::open(&path).unwrap();
                        current = committed.clone();
                        // Processing resumes where the store's offsets say.
                        let offsets = store.checkpoint().unwrap().offsets;
                        for (i, n) in next.iter_mut().enumerate() {
                            *n = offsets.get(&format!("in/{i}")).copied().unwrap_or(0);
                        }
                        batch_next.clear();
                    }
                }
                let stored: BTreeMap<String, u32> = store
                    .dump()
                    .unwrap()
                    .into_iter()
                    .map(|((_, k), v)| (k, serde_json::from_value(v).unwrap()))
                    .collect();
                prop_assert_eq!(&stored, &committed);
            }
        }
    }
}
