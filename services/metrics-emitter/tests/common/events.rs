//! Shared event builders of the metrics-emitter tests.

use chrono::{Duration as Age, Utc};
use tributary_events::{
    Activity, ActivityKind, Dimension, EnrichedProduct, Envelope, Event, Price, Product,
    ProductDeleted, Stock, WindowAggregate, WindowSize,
};

pub fn product(id: &str, brand: &str, category: &str) -> Envelope {
    Envelope::new(
        "test",
        Event::ProductUpserted(Product {
            product_id: id.into(),
            brand_id: brand.into(),
            sku: format!("sku-{id}"),
            name: format!("Product {id}"),
            category: category.into(),
            description: None,
            attributes: None,
            images: None,
        }),
    )
}

pub fn deleted(id: &str) -> Envelope {
    Envelope::new(
        "test",
        Event::ProductDeleted(ProductDeleted {
            product_id: id.into(),
        }),
    )
}

pub fn price(id: &str, currency: &str) -> Envelope {
    Envelope::new(
        "test",
        Event::PriceUpdated(Price {
            product_id: id.into(),
            currency: currency.into(),
            wholesale_minor: 100,
            retail_minor: 200,
        }),
    )
}

pub fn stock(id: &str, quantity: u64) -> Envelope {
    Envelope::new(
        "test",
        Event::StockChanged(Stock {
            product_id: id.into(),
            quantity,
            warehouse: None,
        }),
    )
}

pub fn enriched(id: &str, complete: bool) -> Envelope {
    let Event::ProductUpserted(product) = product(id, "b1", "shoes").event else {
        unreachable!()
    };
    Envelope::new(
        "test",
        Event::ProductEnriched(EnrichedProduct {
            product,
            price: None,
            stock: None,
            complete,
            updated_at: Utc::now(),
        }),
    )
}

/// An activity event that happened `seconds_ago`.
pub fn activity(
    kind: ActivityKind,
    id: &str,
    order: Option<(Option<u64>, u64, &str)>,
    seconds_ago: i64,
) -> Envelope {
    let time = Utc::now() - Age::seconds(seconds_ago);
    Envelope::new(
        "test",
        Event::Activity(Activity {
            kind,
            product_id: id.into(),
            retailer_id: "r-1".into(),
            time: Some(time),
            quantity: order.and_then(|o| o.0),
            unit_price_minor: order.map(|o| o.1),
            currency: order.map(|o| o.2.to_owned()),
            order_id: order.map(|_| format!("o-{id}")),
        }),
    )
    .at(time)
}

pub fn aggregate(id: &str) -> Envelope {
    let start = Utc::now();
    Envelope::new(
        "test",
        Event::WindowAggregated(WindowAggregate {
            dim: Dimension::Product,
            id: id.into(),
            window: WindowSize::Minute,
            start,
            end: start + Age::minutes(1),
            views: 1,
            carts: 0,
            orders: 0,
            units: 0,
            revenue_minor: 0,
            currency: None,
            is_final: false,
        }),
    )
}
