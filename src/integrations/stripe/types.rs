//! The Stripe shapes we read, parsed defensively (PROVIDERS.md §B.3–B.6): only the fields we
//! apply, unknown fields ignored, both pre- and post-"basil" locations accepted (a
//! subscription's period end on `items.data[]` or at the top; an invoice's subscription under
//! `parent.subscription_details` or at the top), and an expandable id taken from a string or an
//! expanded object.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// The event envelope: what the intake needs to store a delivery, before the object is parsed.
#[derive(Debug, Clone, Deserialize)]
pub struct EventEnvelope {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created: i64,
    #[serde(default)]
    pub livemode: bool,
    #[serde(default)]
    pub api_version: Option<String>,
}

/// A whole event with its object still raw: the job parses the object by type.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created: i64,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    #[serde(default, deserialize_with = "opt_id")]
    pub customer: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    pub subscription: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub payment_status: Option<String>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    #[serde(deserialize_with = "id")]
    pub customer: String,
    pub status: String,
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// Pre-"basil" location of the period end.
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub items: Option<List<SubscriptionItem>>,
}

impl Subscription {
    /// The first item's price (our plans have one item).
    pub fn price_id(&self) -> Option<&str> {
        let item = self.items.as_ref()?.data.first()?;
        Some(item.price.as_ref()?.id.as_str())
    }

    /// The items' period end (post-"basil"), else the top-level one.
    pub fn period_end(&self) -> Option<i64> {
        self.items
            .as_ref()
            .and_then(|items| items.data.iter().filter_map(|i| i.current_period_end).max())
            .or(self.current_period_end)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    #[serde(default)]
    pub price: Option<Price>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Invoice {
    pub id: String,
    #[serde(deserialize_with = "id")]
    pub customer: String,
    #[serde(default)]
    pub amount_paid: i64,
    #[serde(default)]
    pub amount_due: i64,
    pub currency: String,
    #[serde(default)]
    pub hosted_invoice_url: Option<String>,
    #[serde(default)]
    pub customer_email: Option<String>,
    #[serde(default)]
    pub customer_name: Option<String>,
    #[serde(default)]
    pub status_transitions: Option<StatusTransitions>,
    /// Pre-"basil" location of the subscription.
    #[serde(default, deserialize_with = "opt_id")]
    pub subscription: Option<String>,
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
}

impl Invoice {
    pub fn subscription_id(&self) -> Option<&str> {
        self.parent
            .as_ref()
            .and_then(|p| p.subscription_details.as_ref())
            .and_then(|d| d.subscription.as_deref())
            .or(self.subscription.as_deref())
    }

    pub fn paid_at(&self) -> Option<i64> {
        self.status_transitions.as_ref()?.paid_at
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusTransitions {
    #[serde(default)]
    pub paid_at: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InvoiceParent {
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionDetails {
    #[serde(default, deserialize_with = "opt_id")]
    pub subscription: Option<String>,
}

/// A page of a list endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
    /// Stripe's clock when it answered (the response's `Date`, Unix seconds), set by the client:
    /// the same clock that stamps events' `created`, unlike ours.
    #[serde(skip)]
    pub served_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Expandable {
    Id(String),
    Object { id: String },
}

fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Expandable::deserialize(d)? {
        Expandable::Id(id) | Expandable::Object { id } => id,
    })
}

fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Expandable>::deserialize(d)?.map(|e| match e {
        Expandable::Id(id) | Expandable::Object { id } => id,
    }))
}

fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
