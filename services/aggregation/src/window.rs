//! Tumbling event-time windows: where an event falls, what a window holds, and the rows a
//! window is published and served as.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tributary_events::{Activity, ActivityKind, Dimension, WindowAggregate, WindowSize};

/// Both window sizes, smallest first: an event is late when its smallest window closed.
pub const SIZES: [WindowSize; 2] = [WindowSize::Minute, WindowSize::Hour];

/// A window size in milliseconds.
pub fn size_ms(size: WindowSize) -> i64 {
    match size {
        WindowSize::Minute => 60_000,
        WindowSize::Hour => 3_600_000,
    }
}

/// The start (inclusive, ms since the epoch) of the `size` window holding `time_ms`.
pub fn start_of(size: WindowSize, time_ms: i64) -> i64 {
    time_ms - time_ms.rem_euclid(size_ms(size))
}

/// The one-letter tag of a dimension in state keys.
fn dim_tag(dim: Dimension) -> char {
    match dim {
        Dimension::Product => 'p',
        Dimension::Brand => 'b',
    }
}

/// The state key of a window: `p|1m|<start ms, 13 digits>|<id>`. Time before id: every
/// window of one dimension and size that starts before a time is one key range, so closing
/// and forgetting windows as stream time passes are range scans, with no index to keep.
pub fn state_key(dim: Dimension, id: &str, size: WindowSize, start_ms: i64) -> String {
    format!("{}{id}", start_prefix(dim, size, start_ms))
}

/// The keys of `dim`'s `size` windows starting at `start_ms` all begin with this, and it
/// sorts after every key of an earlier start (`|` follows the digits).
pub fn start_prefix(dim: Dimension, size: WindowSize, start_ms: i64) -> String {
    format!(
        "{}|{}|{:013}|",
        dim_tag(dim),
        size.as_str(),
        start_ms.clamp(0, 9_999_999_999_999)
    )
}

/// Sorts after every key of `dim`'s `size` windows.
pub fn keys_end(dim: Dimension, size: WindowSize) -> String {
    format!("{}|{}|~", dim_tag(dim), size.as_str())
}

/// Parses a state key back into its parts.
pub fn parse_state_key(key: &str) -> Option<(Dimension, &str, WindowSize, i64)> {
    let mut parts = key.splitn(4, '|');
    let dim = match parts.next()? {
        "p" => Dimension::Product,
        "b" => Dimension::Brand,
        _ => return None,
    };
    let size = match parts.next()? {
        "1m" => WindowSize::Minute,
        "1h" => WindowSize::Hour,
        _ => return None,
    };
    let start = parts.next()?.parse().ok()?;
    Some((dim, parts.next()?, size, start))
}

/// Orders of one currency in a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orders {
    /// Number of `order_placed`.
    pub orders: u64,
    /// Sum of quantities.
    pub units: u64,
    /// Sum of quantity × unit price, minor units.
    pub revenue_minor: u64,
}

/// The state of one window of one product or brand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// Number of `product_viewed`.
    pub views: u64,
    /// Number of `added_to_cart`.
    pub carts: u64,
    /// Orders per currency.
    #[serde(default)]
    pub orders: BTreeMap<String, Orders>,
    /// The window's first currency: its row carries the views and carts.
    #[serde(default)]
    pub primary: Option<String>,
    /// Closed: the final value was published and nothing changes it any more. Set on the
    /// values published and served (from the close cursor), never stored.
    #[serde(default, rename = "final")]
    pub is_final: bool,
    /// The partition's publication epoch when the window last changed (see
    /// `aggregator::EPOCH`): a partition opened on another instance re-publishes only the
    /// open windows changed in or after the epoch its state was at, the ones no earlier
    /// flush is known to have published. 0 in windows stored before epochs existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl WindowState {
    /// Counts one activity event.
    pub fn add(&mut self, activity: &Activity) {
        match activity.kind {
            ActivityKind::ProductViewed => self.views += 1,
            ActivityKind::AddedToCart => self.carts += 1,
            ActivityKind::OrderPlaced => {
                // Ingest requires a currency and a price on an order; an order without them
                // (from a producer outside the suite) still counts, without revenue.
                let currency = activity.currency.clone().unwrap_or_default();
                if self.primary.is_none() {
                    self.primary = Some(currency.clone());
                }
                let units = activity.quantity.unwrap_or(1);
                let orders = self.orders.entry(currency).or_default();
                orders.orders += 1;
                orders.units = orders.units.saturating_add(units);
                orders.revenue_minor = orders
                    .revenue_minor
                    .saturating_add(units.saturating_mul(activity.unit_price_minor.unwrap_or(0)));
            }
        }
    }

    /// The rows the window is served and published as: one per currency (the first
    /// currency's row carries the views and carts), or one without a currency when the
    /// window has no orders. Each with the suffix of its topic key (`""` for the main row,
    /// `":<currency>"` for another currency's).
    pub fn rows(
        &self,
        dim: Dimension,
        id: &str,
        size: WindowSize,
        start_ms: i64,
    ) -> Vec<(String, WindowAggregate)> {
        let start = millis(start_ms);
        let end = millis(start_ms + size_ms(size));
        let row = |currency: Option<&str>, orders: &Orders, main: bool| WindowAggregate {
            dim,
            id: id.to_owned(),
            window: size,
            start,
            end,
            views: if main { self.views } else { 0 },
            carts: if main { self.carts } else { 0 },
            orders: orders.orders,
            units: orders.units,
            revenue_minor: orders.revenue_minor,
            currency: currency.filter(|c| !c.is_empty()).map(str::to_owned),
            is_final: self.is_final,
        };
        if self.orders.is_empty() {
            return vec![(String::new(), row(None, &Orders::default(), true))];
        }
        let primary = self.primary.as_deref().unwrap_or_default();
        let mut rows = vec![(
            String::new(),
            row(Some(primary), &self.orders[primary], true),
        )];
        for (currency, orders) in &self.orders {
            if currency != primary {
                rows.push((format!(":{currency}"), row(Some(currency), orders, false)));
            }
        }
        rows
    }
}

/// The record key of a window's row on `analytics.aggregates.v1`:
/// `<dim>:<id>:<window>:<start RFC 3339>` (plus `:<currency>` for a second currency).
pub fn topic_key(dim: Dimension, id: &str, size: WindowSize, start_ms: i64) -> String {
    format!(
        "{}:{id}:{}:{}",
        dim.as_str(),
        size.as_str(),
        millis(start_ms).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// A UTC instant from ms since the epoch (clamped to the representable range).
pub fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(quantity: u64, price: u64, currency: &str) -> Activity {
        Activity {
            kind: ActivityKind::OrderPlaced,
            product_id: "p".into(),
            retailer_id: "r".into(),
            time: None,
            quantity: Some(quantity),
            unit_price_minor: Some(price),
            currency: Some(currency.into()),
            order_id: Some("o".into()),
        }
    }

    fn view() -> Activity {
        Activity {
            kind: ActivityKind::ProductViewed,
            product_id: "p".into(),
            retailer_id: "r".into(),
            time: None,
            quantity: None,
            unit_price_minor: None,
            currency: None,
            order_id: None,
        }
    }

    #[test]
    fn windows_are_aligned_and_keys_sort_by_start() {
        assert_eq!(start_of(WindowSize::Minute, 125_000), 120_000);
        assert_eq!(start_of(WindowSize::Hour, 3_600_001), 3_600_000);
        assert_eq!(start_of(WindowSize::Minute, -1), -60_000);
        let a = state_key(Dimension::Product, "zz", WindowSize::Minute, 60_000);
        let b = state_key(Dimension::Product, "a", WindowSize::Minute, 600_000);
        assert!(a < b, "start orders before id");
        assert_eq!(
            parse_state_key(&a),
            Some((Dimension::Product, "zz", WindowSize::Minute, 60_000))
        );
        // Ids may hold ':', '.' and even '|'.
        let k = state_key(Dimension::Brand, "b:1.x|y", WindowSize::Hour, 0);
        assert_eq!(
            parse_state_key(&k),
            Some((Dimension::Brand, "b:1.x|y", WindowSize::Hour, 0))
        );
        // Every key of a start lies between its prefix and the next start's.
        let p = start_prefix(Dimension::Product, WindowSize::Minute, 60_000);
        let next = start_prefix(Dimension::Product, WindowSize::Minute, 120_000);
        assert!(p <= a && a < next);
        assert!(b > next);
    }

    #[test]
    fn counts_units_and_revenue_per_currency_with_views_on_the_first_currency() {
        let mut w = WindowState::default();
        w.add(&view());
        w.add(&order(2, 150, "EUR"));
        w.add(&order(1, 100, "USD"));
        w.add(&order(3, 10, "EUR"));
        let rows = w.rows(Dimension::Product, "p", WindowSize::Minute, 0);
        assert_eq!(rows.len(), 2);
        let (suffix, eur) = &rows[0];
        assert_eq!(suffix, "");
        assert_eq!(
            (
                eur.views,
                eur.orders,
                eur.units,
                eur.revenue_minor,
                eur.currency.as_deref()
            ),
            (1, 2, 5, 330, Some("EUR"))
        );
        let (suffix, usd) = &rows[1];
        assert_eq!(suffix, ":USD");
        assert_eq!((usd.views, usd.orders, usd.revenue_minor), (0, 1, 100));
        assert_eq!(eur.end - eur.start, chrono::Duration::minutes(1));
    }

    #[test]
    fn a_window_without_orders_is_one_row_without_currency() {
        let mut w = WindowState::default();
        w.add(&view());
        let rows = w.rows(Dimension::Brand, "b", WindowSize::Hour, 3_600_000);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1.currency, None);
        assert_eq!(rows[0].1.views, 1);
        assert_eq!(
            topic_key(Dimension::Brand, "b", WindowSize::Hour, 3_600_000),
            "brand:b:1h:1970-01-01T01:00:00Z"
        );
    }
}
