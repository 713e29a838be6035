//! The product index: a tantivy index in one directory whose every commit carries, in its
//! payload, the input offsets it covers, so that a restart resumes exactly where the durable
//! index ends (effectively-once: nothing skipped, and what is read again is an upsert of a
//! whole value).
//!
//! A product id has at most one document. A complete product is indexed in full; a product
//! that is unknown, incomplete or deleted but has a popularity keeps a placeholder document
//! holding only the popularity (never searchable), so that the popularity survives a
//! restart with the offsets that produced it. Every change commutes with the changes of the
//! other input (product values touch only the product, window scores only the popularity),
//! so a replay after a crash, which interleaves the two topics differently, ends the same.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tantivy::collector::Count;
use tantivy::directory::MmapDirectory;
use tantivy::query::TermQuery;
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::{
    DocAddress, DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TERMINATED,
    TantivyDocument, Term,
};
use tributary_events::EnrichedProduct;

/// The text analyzer of the full-text fields: words, lower-cased, English stems.
pub const ANALYZER: &str = "en_stem";

/// Why the index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// tantivy refused an operation.
    #[error("index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// The index directory could not be opened.
    #[error("index directory: {0}")]
    Directory(String),
    /// The commit payload is not ours.
    #[error("commit payload: {0}")]
    Payload(String),
    /// The index was closed (its generation was swapped out).
    #[error("the index is closed")]
    Closed,
}

/// The fields of a product document.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// The product id (raw term; the document's identity).
    pub product_id: Field,
    /// Display name (full text).
    pub name: Field,
    /// Description (full text).
    pub description: Field,
    /// Attribute values (full text).
    pub attributes: Field,
    /// Brand id (raw term, facet).
    pub brand_id: Field,
    /// Category (raw term, facet).
    pub category: Field,
    /// Retail price in minor units.
    pub retail_minor: Field,
    /// Currency of the price.
    pub currency: Field,
    /// Stock quantity.
    pub stock: Field,
    /// Popularity: the sort key (the larger of the latest window's score and the hour's
    /// before).
    pub popularity: Field,
    /// Start of the latest window (ms since the epoch).
    pub popularity_window: Field,
    /// Score of the latest window.
    pub popularity_latest: Field,
    /// Score of the window the hour before it.
    pub popularity_previous: Field,
    /// A hash of the product id: the last tie-break of every order, so that pages are
    /// stable while documents move between segments.
    pub tiebreak: Field,
    /// 1 for a searchable (complete) product, 0 for a placeholder.
    pub complete: Field,
    /// The enriched product as JSON (what `GET /v1/products/{id}` returns).
    pub document: Field,
}

/// The schema and its fields.
pub fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        product_id: builder.add_text_field("product_id", STRING | STORED),
        name: builder.add_text_field("name", text.clone() | STORED),
        description: builder.add_text_field("description", text.clone()),
        attributes: builder.add_text_field("attributes", text),
        brand_id: builder.add_text_field("brand_id", STRING | FAST | STORED),
        category: builder.add_text_field("category", STRING | FAST | STORED),
        retail_minor: builder.add_u64_field("retail_minor", INDEXED | FAST | STORED),
        currency: builder.add_text_field("currency", STRING | STORED),
        stock: builder.add_u64_field("stock", INDEXED | FAST | STORED),
        popularity: builder.add_u64_field("popularity", FAST | STORED),
        popularity_window: builder.add_i64_field("popularity_window", STORED),
        popularity_latest: builder.add_u64_field("popularity_latest", STORED),
        popularity_previous: builder.add_u64_field("popularity_previous", STORED),
        tiebreak: builder.add_u64_field("tiebreak", FAST),
        complete: builder.add_u64_field("complete", INDEXED),
        document: builder.add_bytes_field("document", STORED),
    };
    (builder.build(), fields)
}

/// One window's activity score for a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowScore {
    /// Start of the 1-hour window, ms since the epoch.
    pub window_start_ms: i64,
    /// `views + 5 × cart additions + 20 × units ordered` in that window.
    pub score: u64,
}

const HOUR_MS: i64 = 3_600_000;

/// A product's popularity: its latest 1-hour window's score and the score of the hour
/// before, so that it does not drop to nearly nothing when a new hour starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Popularity {
    /// Start of the latest window, ms since the epoch.
    pub window_start_ms: i64,
    /// Its score so far.
    pub score: u64,
    /// The score of the window one hour before it (0 when none was seen).
    pub previous: u64,
}

impl Popularity {
    /// What search orders by.
    pub fn value(&self) -> u64 {
        self.score.max(self.previous)
    }

    /// `held` updated by a window's score; `None` when it changes nothing. The result does
    /// not depend on the order in which different windows arrive (each window's own
    /// values arrive in order: they share a key, so a partition).
    pub fn merge(held: Option<Popularity>, w: WindowScore) -> Option<Popularity> {
        let Some(held) = held else {
            return Some(Popularity {
                window_start_ms: w.window_start_ms,
                score: w.score,
                previous: 0,
            });
        };
        let next = if w.window_start_ms > held.window_start_ms {
            Popularity {
                window_start_ms: w.window_start_ms,
                score: w.score,
                previous: if held.window_start_ms == w.window_start_ms - HOUR_MS {
                    held.score
                } else {
                    0
                },
            }
        } else if w.window_start_ms == held.window_start_ms {
            Popularity {
                score: w.score,
                ..held
            }
        } else if w.window_start_ms == held.window_start_ms - HOUR_MS {
            Popularity {
                previous: w.score,
                ..held
            }
        } else {
            held // older than the hour before: no longer counts
        };
        (next != held).then_some(next)
    }
}

/// What the index holds for one product id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// The product, when it is complete (only then is it searchable).
    pub product: Option<EnrichedProduct>,
    /// Its popularity, once any activity was aggregated for it.
    pub popularity: Option<Popularity>,
}

/// A change to one product id.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The product's latest enriched value: `Some` when complete, `None` when it is
    /// incomplete or deleted (it leaves the search; its popularity stays, since a window
    /// of the other input may have been applied after it and would not be read again).
    Product(Option<Box<EnrichedProduct>>),
    /// A window's score (see [`Popularity::merge`]).
    Popularity(WindowScore),
}

/// The commit payload: every input partition's next offset.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Payload {
    format: u32,
    /// topic → partition → next offset.
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

const PAYLOAD_FORMAT: u32 = 1;

struct Inner {
    /// `None` once closed.
    writer: Option<IndexWriter>,
    /// Entries written since the last commit (tantivy shows them only once committed).
    pending: HashMap<String, Option<Entry>>,
    /// Offsets of finished batches, committed with the next commit.
    offsets: BTreeMap<(String, i32), i64>,
    /// Batches recorded so far (a ticket per [`ProductIndex::commit`] call).
    recorded: u64,
}

/// One index directory: its writer, its reader and the offsets its last commit covers.
pub struct ProductIndex {
    dir: PathBuf,
    index: Index,
    fields: Fields,
    reader: IndexReader,
    inner: Arc<tokio::sync::Mutex<Inner>>,
    /// One commit at a time; callers queued behind it are served by the next one.
    commit_lock: tokio::sync::Mutex<Option<Instant>>,
    /// The highest ticket a finished commit covers.
    committed: AtomicU64,
    /// Commits at least this far apart (the freshness/cost trade-off).
    commit_interval: Duration,
    /// Offsets of the last durable commit.
    durable: std::sync::Mutex<BTreeMap<(String, i32), i64>>,
    commits: AtomicU64,
}

impl std::fmt::Debug for ProductIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProductIndex")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ProductIndex {
    /// Opens the index in `dir` (created when absent), with `writer_memory` bytes of
    /// indexing buffer and commits at least `commit_interval` apart.
    pub fn open(
        dir: &Path,
        writer_memory: usize,
        commit_interval: Duration,
    ) -> Result<ProductIndex, IndexError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| IndexError::Directory(format!("{}: {e}", dir.display())))?;
        let directory = MmapDirectory::open(dir)
            .map_err(|e| IndexError::Directory(format!("{}: {e}", dir.display())))?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(directory, schema)?;
        // One indexing thread: the machine's other core serves searches and the consumer.
        let writer = index.writer_with_num_threads(1, writer_memory.max(15_000_000))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let payload: Payload = match index.load_metas()?.payload {
            None => Payload::default(),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| IndexError::Payload(format!("{e}: {text:.200}")))?,
        };
        if payload.format > PAYLOAD_FORMAT {
            return Err(IndexError::Payload(format!(
                "format {} is newer than this binary's {PAYLOAD_FORMAT}",
                payload.format
            )));
        }
        let durable: BTreeMap<(String, i32), i64> = payload
            .offsets
            .into_iter()
            .flat_map(|(topic, parts)| {
                parts
                    .into_iter()
                    .map(move |(p, offset)| ((topic.clone(), p), offset))
            })
            .collect();
        Ok(ProductIndex {
            dir: dir.to_owned(),
            index,
            fields,
            reader,
            inner: Arc::new(tokio::sync::Mutex::new(Inner {
                writer: Some(writer),
                pending: HashMap::new(),
                offsets: durable.clone(),
                recorded: 0,
            })),
            commit_lock: tokio::sync::Mutex::new(None),
            committed: AtomicU64::new(0),
            commit_interval,
            durable: std::sync::Mutex::new(durable),
            commits: AtomicU64::new(0),
        })
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fields.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The tantivy index (its tokenizers).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// A searcher over the last commit.
    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    /// Where the durable index ends for `topic`/`partition`: the next offset to read.
    pub fn resume_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        lock(&self.durable)
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// Every input partition's next offset, as of the last commit.
    pub fn durable_offsets(&self) -> BTreeMap<(String, i32), i64> {
        lock(&self.durable).clone()
    }

    /// Commits made since the index was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Searchable (complete) products in the last commit.
    pub fn documents(&self) -> u64 {
        let query = TermQuery::new(
            Term::from_field_u64(self.fields.complete, 1),
            IndexRecordOption::Basic,
        );
        self.searcher()
            .search(&query, &Count)
            .map_or(0, |n| n as u64)
    }

    /// The committed entry of `product_id`, if any.
    pub fn get(&self, product_id: &str) -> Result<Option<Entry>, IndexError> {
        self.committed_entry(&self.searcher(), product_id)
    }

    fn committed_entry(
        &self,
        searcher: &Searcher,
        product_id: &str,
    ) -> Result<Option<Entry>, IndexError> {
        // The id's postings straight from each segment: one term lookup per segment, no
        // scoring or collector (this runs for every change, under the writer's lock).
        let term = Term::from_field_text(self.fields.product_id, product_id);
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            let postings = segment
                .inverted_index(self.fields.product_id)?
                .read_postings(&term, IndexRecordOption::Basic)
                .map_err(|e| IndexError::Directory(format!("reading postings: {e}")))?;
            let Some(mut postings) = postings else {
                continue;
            };
            let mut doc = postings.doc();
            while doc != TERMINATED {
                if segment
                    .alive_bitset()
                    .is_none_or(|alive| alive.is_alive(doc))
                {
                    let stored: TantivyDocument = searcher.doc(DocAddress::new(ord as u32, doc))?;
                    return Ok(Some(self.entry_of(&stored)));
                }
                doc = postings.advance();
            }
        }
        Ok(None)
    }

    fn entry_of(&self, doc: &TantivyDocument) -> Entry {
        let f = &self.fields;
        let product = doc
            .get_first(f.document)
            .and_then(|v| v.as_bytes())
            .and_then(|bytes| serde_json::from_slice::<EnrichedProduct>(bytes).ok());
        let number = |field| doc.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
        let popularity = doc
            .get_first(f.popularity_window)
            .and_then(|v| v.as_i64())
            .map(|window_start_ms| Popularity {
                window_start_ms,
                score: number(f.popularity_latest),
                previous: number(f.popularity_previous),
            });
        Entry {
            product,
            popularity,
        }
    }

    fn document_of(&self, id: &str, entry: &Entry) -> Result<TantivyDocument, IndexError> {
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.product_id, id);
        doc.add_u64(f.tiebreak, fnv1a(id.as_bytes()));
        if let Some(p) = &entry.product {
            doc.add_u64(f.complete, 1);
            doc.add_text(f.name, &p.product.name);
            if let Some(d) = &p.product.description {
                doc.add_text(f.description, d);
            }
            for value in p.product.attributes.iter().flat_map(|a| a.values()) {
                doc.add_text(f.attributes, value);
            }
            doc.add_text(f.brand_id, &p.product.brand_id);
            doc.add_text(f.category, &p.product.category);
            if let Some(price) = &p.price {
                doc.add_u64(f.retail_minor, price.retail_minor);
                doc.add_text(f.currency, &price.currency);
            }
            doc.add_u64(f.stock, p.stock.unwrap_or(0));
            let json = serde_json::to_vec(p)
                .map_err(|e| IndexError::Payload(format!("product {id}: {e}")))?;
            doc.add_bytes(f.document, &json);
        } else {
            doc.add_u64(f.complete, 0);
        }
        doc.add_u64(f.popularity, entry.popularity.map_or(0, |p| p.value()));
        if let Some(p) = entry.popularity {
            doc.add_i64(f.popularity_window, p.window_start_ms);
            doc.add_u64(f.popularity_latest, p.score);
            doc.add_u64(f.popularity_previous, p.previous);
        }
        Ok(doc)
    }

    /// Applies a change to `product_id`. Visible to searches after the next commit.
    pub async fn apply(&self, product_id: &str, change: Change) -> Result<(), IndexError> {
        let mut inner = self.inner.lock().await;
        let current = match inner.pending.get(product_id) {
            Some(entry) => entry.clone(),
            None => self.committed_entry(&self.searcher(), product_id)?,
        };
        let mut next = current.clone().unwrap_or_default();
        match change {
            Change::Product(product) => next.product = product.map(|p| *p),
            Change::Popularity(w) => match Popularity::merge(next.popularity, w) {
                Some(p) => next.popularity = Some(p),
                None => return Ok(()),
            },
        }
        let next = (next != Entry::default()).then_some(next);
        if next == current {
            return Ok(());
        }
        // The new document is built before anything is queued: a delete must never go
        // without its add.
        let document = next
            .as_ref()
            .map(|entry| self.document_of(product_id, entry))
            .transpose()?;
        let writer = inner.writer.as_ref().ok_or(IndexError::Closed)?;
        // The delete's opstamp is below the add's: it removes the old document only.
        writer.delete_term(Term::from_field_text(self.fields.product_id, product_id));
        if let Some(document) = document {
            writer.add_document(document)?;
        }
        inner.pending.insert(product_id.to_owned(), next);
        Ok(())
    }

    /// Makes everything applied so far durable together with `offsets` (each partition's
    /// next offset), and visible to searches. Commits are at least the commit interval
    /// apart; calls that arrive meanwhile are served by one commit.
    pub async fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), IndexError> {
        let ticket = {
            let mut inner = self.inner.lock().await;
            for (topic, partition, offset) in offsets {
                inner.offsets.insert((topic.clone(), *partition), *offset);
            }
            inner.recorded += 1;
            inner.recorded
        };
        let mut last = self.commit_lock.lock().await;
        if self.committed.load(Ordering::Acquire) >= ticket {
            return Ok(()); // a commit that started after ours was recorded covered it
        }
        if let Some(at) = *last {
            let due = at + self.commit_interval;
            if Instant::now() < due {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let mut inner = self.inner.clone().lock_owned().await;
        let covered = inner.recorded;
        let offsets = inner.offsets.clone();
        let payload = {
            let mut p = Payload {
                format: PAYLOAD_FORMAT,
                offsets: BTreeMap::new(),
            };
            for ((topic, partition), offset) in &offsets {
                p.offsets
                    .entry(topic.clone())
                    .or_default()
                    .insert(*partition, *offset);
            }
            serde_json::to_string(&p).expect("a payload serialises")
        };
        let reader = self.reader.clone();
        let inner = tokio::task::spawn_blocking(move || {
            let result = (|| {
                let writer = inner.writer.as_mut().ok_or(IndexError::Closed)?;
                let mut prepared = writer.prepare_commit()?;
                prepared.set_payload(&payload);
                prepared.commit()?;
                Ok::<(), IndexError>(())
            })();
            if result.is_ok() {
                // The commit is durable. Pending entries are only forgotten once searches
                // (and lookups) see it; a failed reload keeps them for the next commit.
                match reader.reload() {
                    Ok(()) => inner.pending.clear(),
                    Err(e) => tracing::warn!(error = %e, "Index reader reload failed; retried at the next commit"),
                }
            }
            (inner, result)
        })
        .await
        .map_err(|e| IndexError::Directory(format!("commit task: {e}")))?;
        let (inner, result) = inner;
        drop(inner);
        result?;
        *lock(&self.durable) = offsets;
        self.committed.store(covered, Ordering::Release);
        self.commits.fetch_add(1, Ordering::Relaxed);
        *last = Some(Instant::now());
        Ok(())
    }

    /// Closes the writer (waiting for its merges), so the directory can be removed.
    pub async fn close(&self) {
        let writer = self.inner.lock().await.writer.take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.wait_merging_threads()).await;
        }
    }
}

/// FNV-1a: a stable 64-bit hash (the tie-break is stored in the index, so it must not
/// change between builds).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_events::{Price, Product};

    fn product(id: &str, name: &str) -> EnrichedProduct {
        EnrichedProduct {
            product: Product {
                product_id: id.into(),
                brand_id: "b1".into(),
                sku: "s".into(),
                name: name.into(),
                category: "shoes".into(),
                description: None,
                attributes: None,
                images: None,
            },
            price: Some(Price {
                product_id: id.into(),
                currency: "EUR".into(),
                wholesale_minor: 1,
                retail_minor: 100,
            }),
            stock: Some(3),
            complete: true,
            updated_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_commit_carries_the_offsets_and_a_reopened_index_resumes_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let index = ProductIndex::open(dir.path(), 20_000_000, Duration::ZERO).unwrap();
        index
            .apply(
                "p1",
                Change::Product(Some(Box::new(product("p1", "Red shoe")))),
            )
            .await
            .unwrap();
        assert!(index.get("p1").unwrap().is_none(), "visible before commit");
        index.commit(&[("t".into(), 3, 42)]).await.unwrap();
        assert_eq!(
            index
                .get("p1")
                .unwrap()
                .unwrap()
                .product
                .unwrap()
                .product
                .name,
            "Red shoe"
        );
        index
            .apply(
                "p2",
                Change::Product(Some(Box::new(product("p2", "Blue shoe")))),
            )
            .await
            .unwrap();
        index.close().await;
        drop(index);
        // p2 was never committed: a restart reads it again from offset 42.
        let index = ProductIndex::open(dir.path(), 20_000_000, Duration::ZERO).unwrap();
        assert_eq!(index.resume_offset("t", 3), Some(42));
        assert_eq!(index.resume_offset("t", 0), None);
        assert!(index.get("p2").unwrap().is_none());
        assert_eq!(index.documents(), 1);
    }

    fn window(hour: i64, score: u64) -> WindowScore {
        WindowScore {
            window_start_ms: hour * HOUR_MS,
            score,
        }
    }

    #[test]
    fn popularity_keeps_the_hour_before_and_ends_the_same_in_any_order_of_windows() {
        let updates = [
            window(5, 3),
            window(6, 1),
            window(5, 9),
            window(6, 4),
            window(3, 100),
        ];
        let merged = |order: &[usize]| {
            order.iter().fold(None, |held, &i| {
                Popularity::merge(held, updates[i]).or(held)
            })
        };
        // Each window's own values keep their order (5: 3 then 9; 6: 1 then 4).
        let expected = merged(&[0, 1, 2, 3, 4]);
        assert_eq!(
            expected,
            Some(Popularity {
                window_start_ms: 6 * HOUR_MS,
                score: 4,
                previous: 9
            })
        );
        assert_eq!(expected.unwrap().value(), 9, "a new hour does not drop it");
        for order in [
            [1, 3, 0, 2, 4],
            [4, 0, 1, 2, 3],
            [1, 0, 3, 4, 2],
            [0, 2, 4, 1, 3],
        ] {
            assert_eq!(merged(&order), expected, "{order:?}");
        }
        // Two hours on, the old ones no longer count.
        let later = Popularity::merge(expected, window(8, 2)).unwrap();
        assert_eq!((later.score, later.previous, later.value()), (2, 0, 2));
    }

    #[tokio::test]
    async fn popularity_outlives_an_incomplete_or_deleted_product_and_an_older_window_changes_nothing()
     {
        let dir = tempfile::tempdir().unwrap();
        let index = ProductIndex::open(dir.path(), 20_000_000, Duration::ZERO).unwrap();
        index
            .apply("p1", Change::Popularity(window(2, 9)))
            .await
            .unwrap();
        index
            .apply("p1", Change::Popularity(window(0, 50)))
            .await
            .unwrap();
        index.commit(&[]).await.unwrap();
        assert_eq!(index.documents(), 0, "a placeholder is not searchable");
        let held = Popularity {
            window_start_ms: 2 * HOUR_MS,
            score: 9,
            previous: 0,
        };
        assert_eq!(index.get("p1").unwrap().unwrap().popularity, Some(held));
        index
            .apply("p1", Change::Product(Some(Box::new(product("p1", "Shoe")))))
            .await
            .unwrap();
        index.commit(&[]).await.unwrap();
        let entry = index.get("p1").unwrap().unwrap();
        assert_eq!(entry.popularity, Some(held));
        assert!(entry.product.is_some());
        assert_eq!(index.documents(), 1);
        // Incomplete or deleted: out of the search, the popularity kept.
        index.apply("p1", Change::Product(None)).await.unwrap();
        index.commit(&[]).await.unwrap();
        assert_eq!(index.documents(), 0);
        let entry = index.get("p1").unwrap().unwrap();
        assert_eq!((entry.product, entry.popularity), (None, Some(held)));
        // A product without popularity leaves no document at all.
        index
            .apply("p2", Change::Product(Some(Box::new(product("p2", "Hat")))))
            .await
            .unwrap();
        index.apply("p2", Change::Product(None)).await.unwrap();
        index.commit(&[]).await.unwrap();
        assert!(index.get("p2").unwrap().is_none());
    }
}
