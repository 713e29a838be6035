//! One partition's store on disk: a redb database holding the state's entries, the input
//! offsets they cover and the changelog position they are consistent with, all written in
//! one transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::StateError;

/// Entries: `table \0 key` → the value's JSON bytes.
const ENTRIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("entries");
/// Bookkeeping: input offsets (`offset:<topic>/<partition>`) and the changelog position.
const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const CHANGELOG_POSITION: &str = "changelog";
/// Set while the store is being written back to its changelog (see `Stateful`): the id of
/// that re-seed, cleared by the next commit.
const RESEED: &str = "reseed";
/// With [`RESEED`]: the changelog's end when that re-seed began.
const RESEED_FROM: &str = "reseed_from";
/// Wall-clock milliseconds of the last commit.
const COMMITTED_AT: &str = "committed_at";
const OFFSET_PREFIX: &str = "offset:";

/// The entry key of `key` in `table`: the table name, a NUL, the key.
pub(crate) fn entry_key(table: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(table.len() + 1 + key.len());
    k.extend_from_slice(table.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Splits an entry key into table and key.
pub(crate) fn split_entry_key(k: &[u8]) -> Option<(&str, &str)> {
    let nul = k.iter().position(|b| *b == 0)?;
    let table = std::str::from_utf8(&k[..nul]).ok()?;
    let key = std::str::from_utf8(&k[nul + 1..]).ok()?;
    (!table.is_empty()).then_some((table, key))
}

/// An entry as stored: entry key and value bytes.
pub(crate) type RawEntry = (Vec<u8>, Vec<u8>);

/// What a store's last transaction covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Next input offset per input partition (`topic/partition`).
    pub offsets: BTreeMap<String, i64>,
    /// The changelog offset after the last record this state includes.
    pub changelog_position: i64,
}

/// The entries table as a read transaction sees it.
type Snapshot = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// One partition's store.
#[derive(Debug)]
pub struct Store {
    /// The entries as of the last write, kept open between writes: a processor reads
    /// committed state for most of its messages, and a read transaction per read cost more
    /// than the read. Dropped by every write, so that no read sees an older snapshot than
    /// the last commit. Declared before `db` so that it is dropped first.
    snapshot: Mutex<Option<Snapshot>>,
    db: Database,
    path: PathBuf,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn storage(e: impl std::fmt::Display) -> StateError {
    StateError::Storage(e.to_string())
}

/// The page cache of a store opened with [`Store::open`]. redb's own default is 1 GiB per
/// database, and a service holds one database per partition it owns: its memory would
/// follow its stores' size up to several GiB.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl Store {
    /// Opens (or creates) the store at `path`, with a page cache of
    /// [`DEFAULT_CACHE_BYTES`].
    pub fn open(path: &Path) -> Result<Store, StateError> {
        Store::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store at `path`, caching at most `cache_bytes` of its pages
    /// in memory (reads past the cache go to the file, and the operating system's page
    /// cache).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StateError::Storage(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| StateError::Storage(format!("cannot open {}: {e}", path.display())))?;
        // Tables exist from the start, so that reads never meet a missing table.
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(ENTRIES).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Store {
            snapshot: Mutex::new(None),
            db,
            path: path.to_owned(),
        })
    }

    /// The open snapshot of the entries (opened now if a write dropped it).
    fn snapshot(&self) -> Result<MutexGuard<'_, Option<Snapshot>>, StateError> {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if snapshot.is_none() {
            let txn = self.db.begin_read().map_err(storage)?;
            *snapshot = Some(txn.open_table(ENTRIES).map_err(storage)?);
        }
        Ok(snapshot)
    }

    /// Forgets the open snapshot: a write transaction is about to change the entries.
    fn drop_snapshot(&self) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The committed value of `key` in `table`.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let snapshot = self.snapshot()?;
        let Some(entries) = snapshot.as_ref() else {
            return Err(StateError::Storage("no snapshot".to_owned()));
        };
        let value = entries
            .get(entry_key(table, key).as_slice())
            .map_err(storage)?
            .map(|v| v.value().to_vec());
        Ok(value)
    }

    /// The committed values of `keys` in `table`, read in one transaction (one snapshot).
    pub fn get_many(
        &self,
        table: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let entries = txn.open_table(ENTRIES).map_err(storage)?;
        keys.iter()
            .map(|key| {
                Ok(entries
                    .get(entry_key(table, key).as_slice())
                    .map_err(storage)?
                    .map(|v| v.value().to_vec()))
            })
            .collect()
    }

    /// The committed entries of `table` whose keys lie in `[from, to)`, in key order, at
    /// most `limit` of them.
    pub fn range(
        &self,
        table: &str,
        from: &str,
        to: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let snapshot = self.snapshot()?;
        let Some(entries) = snapshot.as_ref() else {
            return Err(StateError::Storage("no snapshot".to_owned()));
        };
        let (low, high) = (entry_key(table, from), entry_key(table, to));
        let mut out = Vec::new();
        if low >= high {
            return Ok(out);
        }
        for row in entries
            .range(low.as_slice()..high.as_slice())
            .map_err(storage)?
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(storage)?;
            if let Some((_, key)) = split_entry_key(k.value()) {
                out.push((key.to_owned(), v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// What the store's last transaction covers.
    pub fn checkpoint(&self) -> Result<Checkpoint, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let mut checkpoint = Checkpoint::default();
        for row in meta.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let (k, v) = (k.value(), v.value());
            if k == CHANGELOG_POSITION {
                checkpoint.changelog_position = v;
            } else if let Some(partition) = k.strip_prefix(OFFSET_PREFIX) {
                checkpoint.offsets.insert(partition.to_owned(), v);
            }
        }
        Ok(checkpoint)
    }

    /// Applies `changes` (a value, or `None` to delete) and records `checkpoint`, in one
    /// durable transaction: after a crash, either all of it is there or none.
    pub fn commit(
        &self,
        changes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        checkpoint: &Checkpoint,
    ) -> Result<(), StateError> {
        self.commit_as_of(changes, checkpoint, now_ms())
    }

    /// [`Store::commit`], recording `committed_at` (wall-clock ms) as the time after which
    /// every changelog record past the checkpoint's position was written. A processing
    /// commit writes the changelog's newest records itself, so that is now; a restore
    /// commits records other owners wrote earlier, and passes when the last one it
    /// applies was written. The stale check (`changelog::restore`) relies on it: a store
    /// whose records after its position may have lost their tombstones must not look
    /// fresh.
    pub fn commit_as_of(
        &self,
        changes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        checkpoint: &Checkpoint,
        committed_at: i64,
    ) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            for (k, v) in changes {
                match v {
                    Some(v) => {
                        entries
                            .insert(k.as_slice(), v.as_slice())
                            .map_err(storage)?;
                    }
                    None => {
                        entries.remove(k.as_slice()).map_err(storage)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            for (partition, offset) in &checkpoint.offsets {
                meta.insert(format!("{OFFSET_PREFIX}{partition}").as_str(), *offset)
                    .map_err(storage)?;
            }
            meta.insert(CHANGELOG_POSITION, checkpoint.changelog_position)
                .map_err(storage)?;
            meta.insert(COMMITTED_AT, committed_at).map_err(storage)?;
            // A commit follows a changelog write that ended in a checkpoint: whatever
            // re-seed was pending, the changelog is consistent with the store again.
            meta.remove(RESEED).map_err(storage)?;
            meta.remove(RESEED_FROM).map_err(storage)?;
        }
        let committed = txn.commit().map_err(storage);
        self.drop_snapshot();
        committed
    }

    /// The id of a re-seed begun and not finished, and the changelog's end when it began.
    pub fn reseed_pending(&self) -> Result<Option<(i64, i64)>, StateError> {
        Ok(match (self.meta(RESEED)?, self.meta(RESEED_FROM)?) {
            (Some(id), from) => Some((id, from.unwrap_or(0))),
            (None, _) => None,
        })
    }

    /// Records, durably, that re-seed `id` begins with the changelog ending at `from`.
    pub(crate) fn begin_reseed(&self, id: i64, from: i64) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(RESEED, id).map_err(storage)?;
            meta.insert(RESEED_FROM, from).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Wall-clock milliseconds of the last commit (`None` for a store that never committed,
    /// or was written before this was recorded).
    pub fn committed_at(&self) -> Result<Option<i64>, StateError> {
        self.meta(COMMITTED_AT)
    }

    /// Forgets every entry, offset and position: the store starts over (restored from the
    /// changelog's beginning).
    pub(crate) fn wipe(&self) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.delete_table(ENTRIES).map_err(storage)?;
        txn.delete_table(META).map_err(storage)?;
        // Reads never meet a missing table (see `open`).
        txn.open_table(ENTRIES).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        let committed = txn.commit().map_err(storage);
        self.drop_snapshot();
        committed
    }

    fn meta(&self, key: &str) -> Result<Option<i64>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        Ok(meta.get(key).map_err(storage)?.map(|v| v.value()))
    }

    /// Every entry, as `(table, key) → JSON value`: for inspection and tests.
    pub fn dump(&self) -> Result<BTreeMap<(String, String), serde_json::Value>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let entries = txn.open_table(ENTRIES).map_err(storage)?;
        let mut out = BTreeMap::new();
        for row in entries.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let Some((table, key)) = split_entry_key(k.value()) else {
                continue;
            };
            let value = serde_json::from_slice(v.value())
                .unwrap_or_else(|_| serde_json::Value::String("<not JSON>".to_owned()));
            out.insert((table.to_owned(), key.to_owned()), value);
        }
        Ok(out)
    }

    /// Every entry as stored: entry key (`table \0 key`) and value bytes.
    pub(crate) fn entries(&self) -> Result<Vec<RawEntry>, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let entries = txn.open_table(ENTRIES).map_err(storage)?;
        let mut out = Vec::new();
        for row in entries.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// How many entries the store holds.
    pub fn len(&self) -> Result<u64, StateError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let entries = txn.open_table(ENTRIES).map_err(storage)?;
        entries.len().map_err(storage)
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_round_trip_and_keep_tables_apart() {
        let k = entry_key("price", "p:1");
        assert_eq!(split_entry_key(&k), Some(("price", "p:1")));
        assert_eq!(split_entry_key(b"\0offsets"), None);
    }

    #[test]
    fn a_read_after_a_commit_sees_it_though_the_snapshot_stays_open_between_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p0.redb")).unwrap();
        let put = |v: &[u8]| {
            let mut changes = BTreeMap::new();
            changes.insert(entry_key("t", "a"), Some(v.to_vec()));
            store.commit(&changes, &Checkpoint::default()).unwrap();
        };
        assert_eq!(store.get("t", "a").unwrap(), None);
        put(b"1");
        assert_eq!(store.get("t", "a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.range("t", "a", "b", 10).unwrap().len(), 1);
        put(b"2");
        assert_eq!(store.get("t", "a").unwrap(), Some(b"2".to_vec()));
        store.wipe().unwrap();
        assert_eq!(store.get("t", "a").unwrap(), None);
    }

    #[test]
    fn changes_and_checkpoint_commit_together_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/p0.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.checkpoint().unwrap(), Checkpoint::default());
            let mut changes = BTreeMap::new();
            changes.insert(entry_key("t", "a"), Some(b"1".to_vec()));
            changes.insert(entry_key("t", "b"), Some(b"2".to_vec()));
            let checkpoint = Checkpoint {
                offsets: [("in/0".to_owned(), 10)].into(),
                changelog_position: 3,
            };
            store.commit(&changes, &checkpoint).unwrap();
            let mut delete = BTreeMap::new();
            delete.insert(entry_key("t", "a"), None);
            let checkpoint = Checkpoint {
                offsets: [("in/0".to_owned(), 11)].into(),
                changelog_position: 5,
            };
            store.commit(&delete, &checkpoint).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get("t", "a").unwrap(), None);
        assert_eq!(store.get("t", "b").unwrap(), Some(b"2".to_vec()));
        let checkpoint = store.checkpoint().unwrap();
        assert_eq!(checkpoint.offsets["in/0"], 11);
        assert_eq!(checkpoint.changelog_position, 5);
        assert_eq!(store.len().unwrap(), 1);
    }
}
