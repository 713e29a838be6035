//! The search of `GET /v1/search`: its parameters read strictly (a bad one is named), the
//! query built from them (free text is words, never query syntax), hits in one of four
//! orders, the total and the brand and category facets of everything that matched.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use serde_json::{Value, json};
use tantivy::collector::{Collector, Count, SegmentCollector, TopDocs};
use tantivy::columnar::StrColumn;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Value as _};
use tantivy::tokenizer::TokenStream;
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term};

use crate::index::{ANALYZER, IndexError, ProductIndex};

/// Hits per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 20;
/// Hits per page at most.
pub const MAX_LIMIT: usize = 100;
/// `offset + limit` at most: deeper pages cost memory in proportion (a heap of that many
/// hits); narrow the query instead, as Elasticsearch's `max_result_window` asks.
pub const MAX_WINDOW: usize = 10_000;
/// Characters of `q` at most.
pub const MAX_Q_CHARS: usize = 1_000;
/// Words of `q` at most.
pub const MAX_Q_WORDS: usize = 32;
/// Values per facet at most (the most frequent).
pub const MAX_FACET_VALUES: usize = 100;

/// The parameters of a search (CONTRACTS.md).
pub const PARAMETERS: [&str; 9] = [
    "q",
    "brand",
    "category",
    "min_price",
    "max_price",
    "in_stock",
    "sort",
    "limit",
    "offset",
];

/// The order of hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// BM25 over name (weighted 2), description and attribute values.
    Relevance,
    /// Cheapest first.
    PriceAsc,
    /// Dearest first.
    PriceDesc,
    /// Most popular first (the latest hour of activity).
    Popularity,
}

/// The validated parameters of one search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParams {
    /// Free text; empty matches every product.
    pub q: String,
    /// Only this brand.
    pub brand: Option<String>,
    /// Only this category.
    pub category: Option<String>,
    /// Retail price at least (minor units).
    pub min_price: Option<u64>,
    /// Retail price at most (minor units).
    pub max_price: Option<u64>,
    /// Only in stock (`true`) or only out of stock (`false`).
    pub in_stock: Option<bool>,
    /// Order of hits.
    pub sort: Sort,
    /// Hits per page.
    pub limit: usize,
    /// Hits skipped.
    pub offset: usize,
}

/// A parameter refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParameter {
    /// The parameter's name.
    pub parameter: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(parameter: &str, message: impl Into<String>) -> BadParameter {
    BadParameter {
        parameter: parameter.to_owned(),
        message: message.into(),
    }
}

/// At most 64 characters of a refused value, for the error message.
pub fn shown(value: &str) -> String {
    let cut: String = value.chars().take(64).collect();
    if cut.len() < value.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

fn whole_number(name: &str, value: &str) -> Result<u64, BadParameter> {
    value.parse::<u64>().map_err(|_| {
        bad(
            name,
            format!("must be a whole number ≥ 0, not {:?}", shown(value)),
        )
    })
}

/// Reads the query string of a search.
pub fn parse(raw: Option<&str>) -> Result<SearchParams, BadParameter> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
        .map_err(|e| bad("query", format!("not a valid query string: {e}")))?;
    let mut params: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &pairs {
        if !PARAMETERS.contains(&k.as_str()) {
            // A misspelt filter would otherwise answer unfiltered, as if it had applied.
            return Err(bad(
                k,
                format!("unknown parameter; known: {}", PARAMETERS.join(", ")),
            ));
        }
        if params.insert(k.as_str(), v.as_str()).is_some() {
            return Err(bad(k, "given more than once"));
        }
    }
    let q = params.get("q").copied().unwrap_or_default();
    if q.chars().count() > MAX_Q_CHARS {
        return Err(bad("q", format!("longer than {MAX_Q_CHARS} characters")));
    }
    let brand = match params.get("brand") {
        None | Some(&"") => None,
        Some(b) if tributary_events::rules::is_id(b) => Some((*b).to_owned()),
        Some(b) => {
            return Err(bad(
                "brand",
                format!(
                    "must be a brand id (1-128 characters of letters, digits, '.', '_', ':' and '-'), not {:?}",
                    shown(b)
                ),
            ));
        }
    };
    let category = match params.get("category") {
        None | Some(&"") => None,
        Some(c) if c.chars().count() <= 256 => Some((*c).to_owned()),
        Some(_) => return Err(bad("category", "longer than 256 characters")),
    };
    let price = |name: &str| match params.get(name) {
        None | Some(&"") => Ok(None),
        Some(v) => whole_number(name, v).map(Some),
    };
    let min_price = price("min_price")?;
    let max_price = price("max_price")?;
    if let (Some(min), Some(max)) = (min_price, max_price) {
        if min > max {
            return Err(bad("min_price", format!("{min} is above max_price {max}")));
        }
    }
    let in_stock = match params.get("in_stock").copied() {
        None | Some("") => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(other) => {
            return Err(bad(
                "in_stock",
                format!("must be true or false, not {:?}", shown(other)),
            ));
        }
    };
    let sort = match params.get("sort").copied() {
        None | Some("" | "relevance") => Sort::Relevance,
        Some("price_asc") => Sort::PriceAsc,
        Some("price_desc") => Sort::PriceDesc,
        Some("popularity") => Sort::Popularity,
        Some(other) => {
            return Err(bad(
                "sort",
                format!(
                    "must be relevance, price_asc, price_desc or popularity, not {:?}",
                    shown(other)
                ),
            ));
        }
    };
    let limit = match params.get("limit") {
        None | Some(&"") => DEFAULT_LIMIT,
        Some(v) => {
            let n = whole_number("limit", v)?;
            if n == 0 || n > MAX_LIMIT as u64 {
                return Err(bad("limit", format!("must be 1 to {MAX_LIMIT}, not {n}")));
            }
            n as usize
        }
    };
    let offset = match params.get("offset") {
        None | Some(&"") => 0,
        Some(v) => {
            let n = whole_number("offset", v)?;
            if n.saturating_add(limit as u64) > MAX_WINDOW as u64 {
                return Err(bad(
                    "offset",
                    format!(
                        "offset + limit must be at most {MAX_WINDOW} (narrow the search instead), not {}",
                        n.saturating_add(limit as u64)
                    ),
                ));
            }
            n as usize
        }
    };
    Ok(SearchParams {
        q: q.to_owned(),
        brand,
        category,
        min_price,
        max_price,
        in_stock,
        sort,
        limit,
        offset,
    })
}

/// The words of `q` as the full-text fields index them.
fn words(index: &ProductIndex, q: &str) -> Vec<String> {
    let mut analyzer = index
        .index()
        .tokenizers()
        .get(ANALYZER)
        .expect("the en_stem analyzer is built in");
    let mut stream = analyzer.token_stream(q);
    let mut words = Vec::new();
    while let Some(token) = stream.next() {
        if !words.contains(&token.text) {
            words.push(token.text.clone());
        }
    }
    words
}

/// The query of `params`: every word in name, description or attributes, and the filters.
pub fn build(index: &ProductIndex, params: &SearchParams) -> Result<Box<dyn Query>, BadParameter> {
    let f = index.fields();
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(
        Occur::Must,
        Box::new(TermQuery::new(
            Term::from_field_u64(f.complete, 1),
            IndexRecordOption::Basic,
        )),
    )];
    let words = words(index, &params.q);
    if words.len() > MAX_Q_WORDS {
        return Err(bad("q", format!("more than {MAX_Q_WORDS} words")));
    }
    for word in &words {
        let per_field: Vec<(Occur, Box<dyn Query>)> =
            [(f.name, 2.0), (f.description, 1.0), (f.attributes, 1.0)]
                .into_iter()
                .map(|(field, boost)| {
                    let term = TermQuery::new(
                        Term::from_field_text(field, word),
                        IndexRecordOption::WithFreqs,
                    );
                    (
                        Occur::Should,
                        Box::new(BoostQuery::new(Box::new(term), boost)) as Box<dyn Query>,
                    )
                })
                .collect();
        clauses.push((Occur::Must, Box::new(BooleanQuery::new(per_field))));
    }
    let raw = |field, value: &str| -> Box<dyn Query> {
        Box::new(TermQuery::new(
            Term::from_field_text(field, value),
            IndexRecordOption::Basic,
        ))
    };
    if let Some(brand) = &params.brand {
        clauses.push((Occur::Must, raw(f.brand_id, brand)));
    }
    if let Some(category) = &params.category {
        clauses.push((Occur::Must, raw(f.category, category)));
    }
    if params.min_price.is_some() || params.max_price.is_some() {
        let bound = |v: Option<u64>| match v {
            Some(v) => Bound::Included(Term::from_field_u64(f.retail_minor, v)),
            None => Bound::Unbounded,
        };
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                bound(params.min_price),
                bound(params.max_price),
            )),
        ));
    }
    match params.in_stock {
        Some(true) => clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                Bound::Included(Term::from_field_u64(f.stock, 1)),
                Bound::Unbounded,
            )),
        )),
        Some(false) => clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_u64(f.stock, 0),
                IndexRecordOption::Basic,
            )),
        )),
        None => {}
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A parameter was refused.
    #[error("{}: {}", .0.parameter, .0.message)]
    Bad(BadParameter),
    /// The index could not be read.
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> SearchError {
        SearchError::Index(IndexError::Tantivy(e))
    }
}

/// Runs a search: `{"total", "hits", "facets"}` of CONTRACTS.md.
pub fn search(index: &ProductIndex, params: &SearchParams) -> Result<Value, SearchError> {
    let query = build(index, params).map_err(SearchError::Bad)?;
    let searcher = index.searcher();
    let f = *index.fields();
    let sort = params.sort;
    // Every order keeps the relevance score as its tie-break and for the hit's `score`.
    let top = TopDocs::with_limit(params.limit)
        .and_offset(params.offset)
        .tweak_score(move |segment: &SegmentReader| {
            let column = |name: &str| {
                segment
                    .fast_fields()
                    .u64(name)
                    .ok()
                    .map(|c| c.first_or_default_col(0))
            };
            let key = match sort {
                Sort::Relevance => None,
                Sort::PriceAsc | Sort::PriceDesc => column("retail_minor"),
                Sort::Popularity => column("popularity"),
            };
            let tiebreak = column("tiebreak");
            move |doc: DocId, score: Score| {
                let value = key.as_ref().map_or(0, |c| c.get_val(doc));
                let primary = match sort {
                    Sort::PriceAsc => u64::MAX - value,
                    _ => value,
                };
                // Ties end on the product, not on where its document sits (segments
                // change with every commit and merge): pages do not skip or repeat.
                (
                    primary,
                    score,
                    tiebreak.as_ref().map_or(0, |c| c.get_val(doc)),
                )
            }
        });
    let (hits, total, facets) =
        searcher.search(&query, &(top, Count, Facets::new(["brand_id", "category"])))?;
    let mut out = Vec::with_capacity(hits.len());
    for ((_, score, _), address) in hits {
        let doc: TantivyDocument = searcher.doc(address)?;
        let text = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let number = |field| doc.get_first(field).and_then(|v| v.as_u64());
        out.push(json!({
            "product_id": text(f.product_id),
            "name": text(f.name),
            "brand_id": text(f.brand_id),
            "category": text(f.category),
            "retail_minor": number(f.retail_minor),
            "currency": text(f.currency),
            "stock": number(f.stock),
            "score": score,
        }));
    }
    let [brands, categories] = facets;
    Ok(json!({
        "total": total,
        "hits": out,
        "facets": {"brand": top_values(brands), "category": top_values(categories)},
    }))
}

fn top_values(counts: HashMap<String, u64>) -> serde_json::Map<String, Value> {
    let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
        .into_iter()
        .take(MAX_FACET_VALUES)
        .map(|(k, v)| (k, json!(v)))
        .collect()
}

/// Counts the values of string fast fields over the matching documents.
struct Facets<const N: usize> {
    fields: [&'static str; N],
}

impl<const N: usize> Facets<N> {
    fn new(fields: [&'static str; N]) -> Facets<N> {
        Facets { fields }
    }
}

struct SegmentFacets<const N: usize> {
    columns: [Option<(StrColumn, Vec<u64>)>; N],
}

impl<const N: usize> Collector for Facets<N> {
    type Fruit = [HashMap<String, u64>; N];
    type Child = SegmentFacets<N>;

    fn for_segment(
        &self,
        _ord: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<SegmentFacets<N>> {
        let mut columns: [Option<(StrColumn, Vec<u64>)>; N] = std::array::from_fn(|_| None);
        for (slot, name) in columns.iter_mut().zip(self.fields) {
            if let Some(column) = segment.fast_fields().str(name)? {
                let terms = column.num_terms();
                *slot = Some((column, vec![0; terms]));
            }
        }
        Ok(SegmentFacets { columns })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(
        &self,
        fruits: Vec<[HashMap<String, u64>; N]>,
    ) -> tantivy::Result<[HashMap<String, u64>; N]> {
        let mut merged: [HashMap<String, u64>; N] = std::array::from_fn(|_| HashMap::new());
        for fruit in fruits {
            for (into, from) in merged.iter_mut().zip(fruit) {
                for (k, v) in from {
                    *into.entry(k).or_default() += v;
                }
            }
        }
        Ok(merged)
    }
}

impl<const N: usize> SegmentCollector for SegmentFacets<N> {
    type Fruit = [HashMap<String, u64>; N];

    fn collect(&mut self, doc: DocId, _score: Score) {
        for (column, counts) in self.columns.iter_mut().flatten() {
            for ord in column.term_ords(doc) {
                if let Some(c) = counts.get_mut(ord as usize) {
                    *c += 1;
                }
            }
        }
    }

    fn harvest(self) -> [HashMap<String, u64>; N] {
        let mut out: [HashMap<String, u64>; N] = std::array::from_fn(|_| HashMap::new());
        for (into, column) in out.iter_mut().zip(self.columns) {
            let Some((column, counts)) = column else {
                continue;
            };
            // One pass over the dictionary for every value that matched (a lookup per
            // ordinal would decode its dictionary block again each time).
            let matched: Vec<(u64, u64)> = counts
                .into_iter()
                .enumerate()
                .filter(|(_, c)| *c > 0)
                .map(|(ord, c)| (ord as u64, c))
                .collect();
            let mut next = matched.iter();
            let _ = column.dictionary().sorted_ords_to_term_cb(
                matched.iter().map(|(ord, _)| *ord),
                |term| {
                    if let Some((_, count)) = next.next() {
                        into.insert(String::from_utf8_lossy(term).into_owned(), *count);
                    }
                    Ok(())
                },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_and_a_bad_one_is_named() {
        let p = parse(Some("q=red+shoes&brand=b1&min_price=100&max_price=500&in_stock=true&sort=price_asc&limit=5&offset=10")).unwrap();
        assert_eq!(p.q, "red shoes");
        assert_eq!(p.brand.as_deref(), Some("b1"));
        assert_eq!((p.min_price, p.max_price), (Some(100), Some(500)));
        assert_eq!(
            (p.in_stock, p.sort, p.limit, p.offset),
            (Some(true), Sort::PriceAsc, 5, 10)
        );
        let named = |q: &str| parse(Some(q)).unwrap_err().parameter;
        assert_eq!(named("limit=0"), "limit");
        assert_eq!(named("limit=1000000"), "limit");
        assert_eq!(named("limit=abc"), "limit");
        assert_eq!(named("offset=-1"), "offset");
        assert_eq!(named("offset=99999999999999999999999"), "offset");
        assert_eq!(named("offset=9990&limit=20"), "offset");
        assert_eq!(named("min_price=1.5"), "min_price");
        assert_eq!(named("max_price=-3"), "max_price");
        assert_eq!(named("min_price=9&max_price=3"), "min_price");
        assert_eq!(named("in_stock=maybe"), "in_stock");
        assert_eq!(named("sort=cheapest"), "sort");
        assert_eq!(named("brand=a%20b"), "brand");
        assert_eq!(named("limit=1&limit=2"), "limit");
        assert_eq!(named("catgory=shoes"), "catgory");
        assert_eq!(named(&format!("q={}", "a".repeat(MAX_Q_CHARS + 1))), "q");
    }
}
