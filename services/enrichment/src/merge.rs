//! The join: one product's state (product, price, stock as last seen) and the enriched
//! value it makes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tributary_events::{EnrichedProduct, Price, Product, Stock};

/// What enrichment knows about one product. A price or stock can be known before the
/// product; the enriched value exists only once the product does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductState {
    /// The product as its brand last published it.
    #[serde(default)]
    pub product: Option<Product>,
    /// The latest price.
    #[serde(default)]
    pub price: Option<Price>,
    /// The latest stock level.
    #[serde(default)]
    pub stock: Option<Stock>,
    /// How many input messages were applied to this state: each exactly once, even
    /// across crashes (the state and the offsets commit together).
    #[serde(default)]
    pub updates: u64,
}

/// One change of a product's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The product was published or changed.
    Product(Product),
    /// The product was withdrawn: its state goes.
    Deleted,
    /// A new price; `None` withdraws it (a tombstone on the price topic).
    Price(Option<Price>),
    /// A new stock level; `None` withdraws it.
    Stock(Option<Stock>),
}

/// The enriched value as a comparable whole, without its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    product: Product,
    price: Option<Price>,
    stock: Option<u64>,
}

impl ProductState {
    /// The state after `change`; `None` when the product's state is removed.
    pub fn apply(&self, change: Change) -> Option<ProductState> {
        let mut next = self.clone();
        match change {
            Change::Product(product) => next.product = Some(product),
            Change::Deleted => return None,
            Change::Price(price) => next.price = price,
            Change::Stock(stock) => next.stock = stock,
        }
        next.updates += 1;
        Some(next)
    }

    /// What the enriched topic shows for this state: nothing until the product is known.
    pub fn view(&self) -> Option<View> {
        Some(View {
            product: self.product.clone()?,
            price: self.price.clone(),
            stock: self.stock.as_ref().map(|s| s.quantity),
        })
    }
}

impl View {
    /// The enriched payload, changed at `at`.
    pub fn enriched(&self, at: DateTime<Utc>) -> EnrichedProduct {
        EnrichedProduct {
            product: self.product.clone(),
            price: self.price.clone(),
            stock: self.stock,
            complete: self.price.is_some() && self.stock.is_some(),
            updated_at: at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(name: &str) -> Product {
        Product {
            product_id: "p1".into(),
            brand_id: "b1".into(),
            sku: "s".into(),
            name: name.into(),
            category: "c".into(),
            description: None,
            attributes: None,
            images: None,
        }
    }

    fn price(retail: u64) -> Price {
        Price {
            product_id: "p1".into(),
            currency: "EUR".into(),
            wholesale_minor: retail / 2,
            retail_minor: retail,
        }
    }

    fn stock(quantity: u64) -> Stock {
        Stock {
            product_id: "p1".into(),
            quantity,
            warehouse: None,
        }
    }

    #[test]
    fn price_and_stock_before_the_product_wait_for_it() {
        let s = ProductState::default()
            .apply(Change::Stock(Some(stock(3))))
            .unwrap()
            .apply(Change::Price(Some(price(100))))
            .unwrap();
        assert_eq!(s.view(), None);
        let s = s.apply(Change::Product(product("a"))).unwrap();
        let enriched = s.view().unwrap().enriched(Utc::now());
        assert!(enriched.complete);
        assert_eq!(enriched.stock, Some(3));
        assert_eq!(enriched.price, Some(price(100)));
        assert_eq!(s.updates, 3);
    }

    #[test]
    fn an_identical_repeat_leaves_the_view_unchanged_and_a_delete_removes_the_state() {
        let s = ProductState::default()
            .apply(Change::Product(product("a")))
            .unwrap();
        let again = s.apply(Change::Product(product("a"))).unwrap();
        assert_eq!(s.view(), again.view());
        assert!(!again.view().unwrap().enriched(Utc::now()).complete);
        assert_ne!(
            again.apply(Change::Price(Some(price(5)))).unwrap().view(),
            again.view()
        );
        assert_eq!(again.apply(Change::Deleted), None);
    }
}
