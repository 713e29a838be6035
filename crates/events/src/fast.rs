//! The fast path of [`Envelope::decode`]: one typed serde pass over the bytes, then the
//! schema's value rules checked on the typed fields. It only ever *accepts*; anything it
//! does not accept (including input it is merely unsure about) goes to the schema walker,
//! which is authoritative and reports every violation. A differential test holds that the
//! fast path never accepts what the walker refuses, and decodes what it accepts identically.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use ulid::Ulid;

use crate::activity::{Activity, ActivityKind};
use crate::analytics::WindowAggregate;
use crate::catalog::{EnrichedProduct, Price, Product, ProductDeleted, Stock};
use crate::envelope::Envelope;
use crate::event::{Event, EventType};
use crate::rules::strict::Object;
use crate::rules::{TEXT_MAX, chars_within, is_currency, is_id};

/// The envelope as it arrives; `data` is kept raw until `type` is known.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    v: u64,
    #[serde(borrow)]
    time: Cow<'a, str>,
    source: String,
    key: String,
    #[serde(default, deserialize_with = "crate::rules::strict::present_string")]
    trace: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The envelope, when the bytes are a valid envelope of a known type and version whose
/// payload passes every rule; `None` otherwise (the caller then runs the walker).
pub(crate) fn decode(bytes: &[u8]) -> Option<Envelope> {
    // JSON is UTF-8 throughout: serde skips an unknown field's string without checking it,
    // so the whole input is checked here, as the walker's parse checks it (found by the
    // envelope fuzz target: an unknown field holding byte 0xAB passed this path only).
    let text = std::str::from_utf8(bytes).ok()?;
    let wire: Wire<'_> = serde_json::from_str(text).ok()?;
    let event_type = EventType::from_name(&wire.event_type)?;
    let v = u32::try_from(wire.v).ok()?;
    if !event_type.supported_versions().contains(&v)
        || !is_ulid(&wire.id)
        || !chars_within(&wire.source, 1, usize::MAX)
        || !chars_within(&wire.key, 1, usize::MAX)
    {
        return None;
    }
    let id = Ulid::from_string(&wire.id).ok()?;
    let time = DateTime::parse_from_rfc3339(&wire.time)
        .ok()?
        .with_timezone(&Utc);
    let event = payload(event_type, wire.data.get())?;
    Some(Envelope {
        id,
        v,
        time,
        source: wire.source,
        key: wire.key,
        trace: wire.trace,
        event,
    })
}

/// [`crate::schema::ULID_PATTERN`] by hand.
fn is_ulid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 26
        && (b'0'..=b'7').contains(&b[0])
        && b[1..].iter().all(|c| {
            c.is_ascii_digit()
                || (c.is_ascii_alphabetic()
                    && !matches!(c.to_ascii_uppercase(), b'I' | b'L' | b'O' | b'U'))
        })
}

fn typed<'a, T: Deserialize<'a>>(raw: &'a str) -> Option<T> {
    serde_json::from_str::<Object<T>>(raw).ok().map(|o| o.0)
}

fn payload(event_type: EventType, raw: &str) -> Option<Event> {
    let event = match event_type {
        EventType::ProductUpserted => Event::ProductUpserted(typed(raw).filter(product_ok)?),
        EventType::ProductDeleted => {
            Event::ProductDeleted(typed(raw).filter(|d: &ProductDeleted| is_id(&d.product_id))?)
        }
        EventType::PriceUpdated => Event::PriceUpdated(typed(raw).filter(price_ok)?),
        EventType::StockChanged => Event::StockChanged(typed(raw).filter(stock_ok)?),
        EventType::ProductEnriched => Event::ProductEnriched(typed(raw).filter(enriched_ok)?),
        EventType::ProductViewed | EventType::AddedToCart | EventType::OrderPlaced => {
            let activity: Activity = typed(raw)?;
            if event_type.activity_kind() != Some(activity.kind) || !activity_ok(&activity) {
                return None;
            }
            Event::Activity(activity)
        }
        EventType::WindowAggregated => Event::WindowAggregated(typed(raw).filter(aggregate_ok)?),
    };
    Some(event)
}

fn product_ok(p: &Product) -> bool {
    is_id(&p.product_id)
        && is_id(&p.brand_id)
        && chars_within(&p.sku, 1, 128)
        && chars_within(&p.name, 1, 512)
        && chars_within(&p.category, 1, 256)
        && p.description
            .as_deref()
            .is_none_or(|d| chars_within(d, 0, TEXT_MAX as usize))
        && p.attributes.as_ref().is_none_or(|a| {
            a.len() <= 128
                && a.iter()
                    .all(|(k, v)| chars_within(k, 1, 128) && chars_within(v, 0, 1024))
        })
        && p.images.as_ref().is_none_or(|images| {
            images.len() <= 64 && images.iter().all(|i| chars_within(i, 1, 2048))
        })
}

fn price_ok(p: &Price) -> bool {
    is_id(&p.product_id) && is_currency(&p.currency)
}

fn stock_ok(s: &Stock) -> bool {
    is_id(&s.product_id)
        && s.warehouse
            .as_deref()
            .is_none_or(|w| chars_within(w, 1, 128))
}

fn enriched_ok(e: &EnrichedProduct) -> bool {
    product_ok(&e.product) && e.price.as_ref().is_none_or(price_ok)
}

fn activity_ok(a: &Activity) -> bool {
    let order_complete = a.kind != ActivityKind::OrderPlaced
        || (a.unit_price_minor.is_some() && a.currency.is_some() && a.order_id.is_some());
    is_id(&a.product_id)
        && is_id(&a.retailer_id)
        && a.quantity.is_none_or(|q| q >= 1)
        && a.currency.as_deref().is_none_or(is_currency)
        && a.order_id.as_deref().is_none_or(is_id)
        && order_complete
}

fn aggregate_ok(w: &WindowAggregate) -> bool {
    is_id(&w.id) && w.currency.as_deref().is_none_or(is_currency)
}
