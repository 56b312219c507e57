//! The Stripe simulator (PROVIDERS.md §B): the read API reconciliation uses, and a webhook sender.
//!
//! **API**: `GET /v1/subscriptions` (newest first; `limit` 1–100, default 10; `starting_after` /
//! `ending_before` cursors; `has_more`; `customer`; `status`, where no value means "every status
//! but canceled" and `all` means all), `GET /v1/subscriptions/{id}`, `GET /v1/invoices/{id}`,
//! `GET /v1/customers/{id}` (a deleted customer answers `{"id","object":"customer","deleted":true}`).
//! Auth is the secret key as `Authorization: Bearer` (or HTTP Basic user, as Stripe accepts);
//! errors use Stripe's body `{"error":{"type","code","message","param","doc_url"}}` and every
//! response carries a `Request-Id`. Objects are Stripe's own fixtures (`fixtures/`) with the ids
//! and links rewritten, so their shape is the current (post-"basil") API.
//!
//! **Webhooks**: [`WebhookSender`] builds events from the constructed sample envelopes (each
//! `data.object` an official fixture), gives each a unique `evt_` id, serializes it once
//! (pretty-printed, as Stripe does) and signs exactly those bytes:
//! `Stripe-Signature: t={t},v1=hex(HMAC-SHA256(secret, "{t}.{payload}"))`. It can send with a
//! wrong secret, a stale timestamp, no signature or extra signatures, send again (duplicate),
//! in a shuffled order, and retry non-2xx answers on a compressed schedule.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};

use super::fault::{FaultConfig, FaultResponder, Faults};
use super::{CallLog, SimServer, lock, mix};

const FIXTURES: &str = include_str!("fixtures/stripe_fixtures.subset.json");
const SAMPLE_EVENTS: &str = include_str!("fixtures/stripe_sample_events.constructed.json");

/// The event types the sample envelopes cover.
pub const EVENT_TYPES: [&str; 5] = [
    "checkout.session.completed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
];

#[derive(Clone, Debug)]
pub struct StripeConfig {
    pub bind: Option<SocketAddr>,
    /// The secret key clients must present.
    pub api_key: String,
    /// How many customers to seed, each with one subscription and its latest invoice.
    pub customers: usize,
    /// Seeds statuses and timestamps of the seeded objects.
    pub seed: u64,
    pub faults: FaultConfig,
    /// How far the simulated Stripe's clock is ahead of this machine's (negative: behind), as
    /// seen in every response's `Date` header; tests of a local clock that is off use it.
    pub clock_offset: chrono::Duration,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            bind: None,
            api_key: "sk_test_sim_0000000000000000".to_owned(),
            customers: 3,
            seed: 0,
            faults: FaultConfig::default(),
            clock_offset: chrono::Duration::zero(),
        }
    }
}

#[derive(Debug, Default)]
struct StripeState {
    api_key: String,
    customers: BTreeMap<String, Value>,
    subscriptions: BTreeMap<String, Value>,
    invoices: BTreeMap<String, Value>,
    requests: u64,
}

/// A running Stripe API simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct StripeSim {
    server: SimServer,
    state: Arc<Mutex<StripeState>>,
}

/// A fixture object of `resource` (`"customer"`, `"subscription"`, `"invoice"`,
/// `"checkout.session"`, `"event"`, `"deleted_customer"`), as Stripe publishes it.
pub fn fixture(resource: &str) -> Option<Value> {
    let all: Value = serde_json::from_str(FIXTURES).ok()?;
    all.get("resources")?.get(resource).cloned()
}

/// The constructed sample event of `event_type` (one of [`EVENT_TYPES`]), unchanged.
pub fn sample_event(event_type: &str) -> Option<Value> {
    let all: Value = serde_json::from_str(SAMPLE_EVENTS).ok()?;
    all.get("events")?
        .as_array()?
        .iter()
        .find(|e| e.get("type").and_then(Value::as_str) == Some(event_type))
        .cloned()
}

impl StripeSim {
    pub async fn start(config: StripeConfig) -> std::io::Result<Self> {
        let faults = Faults::new(config.faults.clone());
        let state = Arc::new(Mutex::new(StripeState {
            api_key: config.api_key.clone(),
            ..StripeState::default()
        }));
        {
            let mut s = lock(&state);
            for i in 1..=config.customers {
                seed_customer(&mut s, &config, i);
            }
        }
        let router = Router::new()
            .route("/v1/subscriptions", get(list_subscriptions))
            .route("/v1/subscriptions/{id}", get(get_subscription))
            .route("/v1/invoices/{id}", get(get_invoice))
            .route("/v1/customers/{id}", get(get_customer))
            .fallback(|| async {
                stripe_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    None,
                    "Unrecognized request URL. Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
                    None,
                )
            })
            .with_state(state.clone());
        let offset = config.clock_offset;
        // hyper adds a `Date` only where the response has none.
        let router = router.layer(axum::middleware::map_response(
            move |mut response: Response| async move {
                let now = chrono::Utc::now() + offset;
                let date = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
                if let Ok(value) = HeaderValue::from_str(&date) {
                    response.headers_mut().insert(header::DATE, value);
                }
                response
            },
        ));
        let server = SimServer::start(router, config.bind, faults, Arc::new(StripeFaults)).await?;
        Ok(Self { server, state })
    }

    /// The base URL to configure instead of `https://api.stripe.com`.
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    pub fn api_key(&self) -> String {
        lock(&self.state).api_key.clone()
    }

    /// All subscriptions, in id order.
    pub fn subscriptions(&self) -> Vec<Value> {
        lock(&self.state).subscriptions.values().cloned().collect()
    }

    pub fn subscription(&self, id: &str) -> Option<Value> {
        lock(&self.state).subscriptions.get(id).cloned()
    }

    pub fn invoice(&self, id: &str) -> Option<Value> {
        lock(&self.state).invoices.get(id).cloned()
    }

    pub fn customer(&self, id: &str) -> Option<Value> {
        lock(&self.state).customers.get(id).cloned()
    }

    /// Inserts or replaces a subscription (keyed by its `id`).
    pub fn put_subscription(&self, subscription: Value) {
        if let Some(id) = subscription.get("id").and_then(Value::as_str) {
            let id = id.to_owned();
            lock(&self.state).subscriptions.insert(id, subscription);
        }
    }

    pub fn put_invoice(&self, invoice: Value) {
        if let Some(id) = invoice.get("id").and_then(Value::as_str) {
            let id = id.to_owned();
            lock(&self.state).invoices.insert(id, invoice);
        }
    }

    pub fn put_customer(&self, customer: Value) {
        if let Some(id) = customer.get("id").and_then(Value::as_str) {
            let id = id.to_owned();
            lock(&self.state).customers.insert(id, customer);
        }
    }

    /// Changes a subscription's status (setting `canceled_at`/`ended_at` for `canceled`);
    /// returns the new object, to feed [`WebhookSender::event_with_object`].
    pub fn set_subscription_status(&self, id: &str, status: &str) -> Option<Value> {
        let mut s = lock(&self.state);
        let sub = s.subscriptions.get_mut(id)?;
        sub["status"] = json!(status);
        if status == "canceled" {
            let now = chrono::Utc::now().timestamp();
            sub["canceled_at"] = json!(now);
            sub["ended_at"] = json!(now);
        }
        Some(sub.clone())
    }

    /// Marks a customer deleted: it then answers as a `deleted_customer`.
    pub fn delete_customer(&self, id: &str) {
        let mut s = lock(&self.state);
        if s.customers.contains_key(id) {
            s.customers.insert(
                id.to_owned(),
                json!({"id": id, "object": "customer", "deleted": true}),
            );
        }
    }

    pub fn calls(&self) -> &CallLog {
        self.server.calls()
    }

    pub fn faults(&self) -> &Faults {
        self.server.faults()
    }

    pub fn server(&self) -> &SimServer {
        &self.server
    }
}

/// Customer `cus_sim_000i` with subscription `sub_sim_000i` and its latest invoice `in_sim_000i`.
fn seed_customer(s: &mut StripeState, config: &StripeConfig, i: usize) {
    let n = i as u64;
    let customer_id = format!("cus_sim_{i:04}");
    let subscription_id = format!("sub_sim_{i:04}");
    let invoice_id = format!("in_sim_{i:04}");
    // Seeded objects were created on distinct days in 2025, newest last.
    let created = 1_735_689_600 + (n as i64) * 86_400 + (mix(config.seed, &[n]) % 3600) as i64;
    let statuses = [
        "active", "trialing", "past_due", "active", "canceled", "unpaid",
    ];
    let status = statuses[(mix(config.seed, &[n, 7]) % statuses.len() as u64) as usize];

    let mut customer = fixture("customer").unwrap_or_else(|| json!({"object": "customer"}));
    customer["id"] = json!(customer_id);
    customer["created"] = json!(created);
    customer["email"] = json!(format!("customer{i}@example.com"));
    customer["name"] = json!(format!("Sim Customer {i}"));
    customer["metadata"] = json!({"baseaim_client": format!("client-{i}")});

    let mut subscription = sample_event("customer.subscription.updated")
        .and_then(|e| e.pointer("/data/object").cloned())
        .unwrap_or_else(|| json!({"object": "subscription"}));
    subscription["id"] = json!(subscription_id);
    subscription["customer"] = json!(customer_id);
    subscription["created"] = json!(created);
    subscription["start_date"] = json!(created);
    subscription["status"] = json!(status);
    subscription["latest_invoice"] = json!(invoice_id);
    if status == "canceled" {
        subscription["canceled_at"] = json!(created + 86_400);
        subscription["ended_at"] = json!(created + 86_400);
    }
    if let Some(items) = subscription
        .pointer_mut("/items/data")
        .and_then(Value::as_array_mut)
    {
        for item in items {
            item["subscription"] = json!(subscription_id);
            item["current_period_start"] = json!(created);
            item["current_period_end"] = json!(created + 30 * 86_400);
        }
    }
    if let Some(url) = subscription.pointer_mut("/items/url") {
        *url = json!(format!(
            "/v1/subscription_items?subscription={subscription_id}"
        ));
    }

    let mut invoice = sample_event("invoice.paid")
        .and_then(|e| e.pointer("/data/object").cloned())
        .unwrap_or_else(|| json!({"object": "invoice"}));
    invoice["id"] = json!(invoice_id);
    invoice["customer"] = json!(customer_id);
    invoice["created"] = json!(created);
    invoice["period_start"] = json!(created);
    invoice["period_end"] = json!(created);
    if let Some(sub) = invoice.pointer_mut("/parent/subscription_details/subscription") {
        *sub = json!(subscription_id);
    }

    s.customers.insert(customer_id, customer);
    s.subscriptions.insert(subscription_id, subscription);
    s.invoices.insert(invoice_id, invoice);
}

/// Stripe's error body.
fn stripe_error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Response {
    let mut error = json!({"type": kind, "message": message});
    if let Some(code) = code {
        error["code"] = json!(code);
        error["doc_url"] = json!(format!(
            "https://stripe.com/docs/error-codes/{}",
            code.replace('_', "-")
        ));
    }
    if let Some(param) = param {
        error["param"] = json!(param);
    }
    (status, axum::Json(json!({"error": error}))).into_response()
}

struct StripeFaults;

impl FaultResponder for StripeFaults {
    fn server_error(&self, status: StatusCode) -> Response {
        let mut r = stripe_error(
            status,
            "api_error",
            None,
            "An unknown error occurred while processing your request. Please try again.",
            None,
        );
        r.headers_mut()
            .insert("stripe-should-retry", HeaderValue::from_static("true"));
        r
    }

    fn too_many_requests(&self) -> Response {
        stripe_error(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            Some("rate_limit"),
            "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
            None,
        )
    }

    fn throttled(&self) -> Response {
        // Stripe's only throttling answer is the 429.
        self.too_many_requests()
    }
}

type Shared = State<Arc<Mutex<StripeState>>>;

/// Checks the key and returns the request id every answer carries.
fn authorize(s: &mut StripeState, headers: &HeaderMap) -> Result<String, Box<Response>> {
    s.requests += 1;
    let request_id = format!("req_sim{:010}", s.requests);
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            if let Some(token) = v.strip_prefix("Bearer ") {
                Some(token.trim().to_owned())
            } else {
                let basic = v.strip_prefix("Basic ")?;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(basic.trim())
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                Some(text.split(':').next().unwrap_or_default().to_owned())
            }
        });
    let refusal = match presented {
        None => stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.",
            None,
        ),
        Some(key) if key == s.api_key => return Ok(request_id),
        Some(key) => {
            // Stripe echoes only the key's last four characters.
            let tail: String = key
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            stripe_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("api_key_invalid"),
                &format!("Invalid API Key provided: sk_****{tail}"),
                None,
            )
        }
    };
    Err(Box::new(with_request_id(refusal, &request_id)))
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

fn not_found(kind: &str, id: &str) -> Response {
    stripe_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {kind}: '{id}'"),
        Some("id"),
    )
}

async fn list_subscriptions(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut s = lock(&state);
    let request_id = match authorize(&mut s, &headers) {
        Ok(id) => id,
        Err(refusal) => return *refusal,
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match param("limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            let r = stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_invalid_integer"),
                "Invalid integer: limit must be between 1 and 100",
                Some("limit"),
            );
            return with_request_id(r, &request_id);
        }
    };
    let status = param("status");
    let customer = param("customer");
    let mut all: Vec<&Value> = s
        .subscriptions
        .values()
        .filter(|sub| {
            let sub_status = sub.get("status").and_then(Value::as_str).unwrap_or("");
            let status_ok = match status {
                None => sub_status != "canceled",
                Some("all") => true,
                Some(wanted) => sub_status == wanted,
            };
            let customer_ok =
                customer.is_none_or(|c| sub.get("customer").and_then(Value::as_str) == Some(c));
            status_ok && customer_ok
        })
        .collect();
    // Newest first, as Stripe lists.
    all.sort_by(|a, b| {
        let created = |v: &Value| v.get("created").and_then(Value::as_i64).unwrap_or(0);
        let id = |v: &Value| v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        created(b).cmp(&created(a)).then_with(|| id(b).cmp(&id(a)))
    });
    let position = |cursor: &str| {
        all.iter()
            .position(|v| v.get("id").and_then(Value::as_str) == Some(cursor))
    };
    // The window [from, to) of `all` this page shows.
    let (from, to) = if let Some(cursor) = param("starting_after") {
        let Some(at) = position(cursor) else {
            return with_request_id(not_found("subscription", cursor), &request_id);
        };
        (at + 1, (at + 1 + limit).min(all.len()))
    } else if let Some(cursor) = param("ending_before") {
        let Some(at) = position(cursor) else {
            return with_request_id(not_found("subscription", cursor), &request_id);
        };
        (at.saturating_sub(limit), at)
    } else {
        (0, limit.min(all.len()))
    };
    let has_more = if param("ending_before").is_some() {
        from > 0
    } else {
        to < all.len()
    };
    let data: Vec<Value> = all[from..to].iter().map(|v| (*v).clone()).collect();
    let body =
        json!({"object": "list", "data": data, "has_more": has_more, "url": "/v1/subscriptions"});
    with_request_id(
        (StatusCode::OK, axum::Json(body)).into_response(),
        &request_id,
    )
}

async fn get_subscription(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    retrieve(&state, &headers, "subscription", &id, |s| &s.subscriptions)
}

async fn get_invoice(State(state): Shared, headers: HeaderMap, Path(id): Path<String>) -> Response {
    retrieve(&state, &headers, "invoice", &id, |s| &s.invoices)
}

async fn get_customer(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    retrieve(&state, &headers, "customer", &id, |s| &s.customers)
}

fn retrieve(
    state: &Mutex<StripeState>,
    headers: &HeaderMap,
    kind: &str,
    id: &str,
    table: impl Fn(&StripeState) -> &BTreeMap<String, Value>,
) -> Response {
    let mut s = lock(state);
    let request_id = match authorize(&mut s, headers) {
        Ok(id) => id,
        Err(refusal) => return *refusal,
    };
    let response = match table(&s).get(id) {
        Some(object) => (StatusCode::OK, axum::Json(object.clone())).into_response(),
        None => not_found(kind, id),
    };
    with_request_id(response, &request_id)
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// One event as it goes on the wire: the exact payload bytes are fixed at construction, so every
/// signature (and every resend) covers the same bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct StripeEvent {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    payload: String,
}

impl StripeEvent {
    /// The exact JSON body that is sent and signed.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    pub fn value(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }

    /// The same event under another id (ids are unique per sender; separate processes sending
    /// at the same second, like the demo's CLI, need their own).
    pub fn with_id(&self, id: &str) -> StripeEvent {
        let mut value = self.value();
        value["id"] = Value::String(id.to_owned());
        StripeEvent {
            id: id.to_owned(),
            event_type: self.event_type.clone(),
            created: self.created,
            payload: serde_json::to_string_pretty(&value).unwrap_or_default(),
        }
    }
}

/// How a delivery is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signing {
    /// `t=now,v1=<sig with the sender's secret>`.
    Valid,
    /// Signed with another secret (the client must reject it).
    WrongSecret(String),
    /// Signed correctly but with `t` this far in the past (beyond 300 s the client must reject).
    Stale(Duration),
    /// No `Stripe-Signature` header at all.
    Unsigned,
    /// `t=now,v1=<sig with a wrong secret>,v1=<valid sig>,v0=<junk>`, as during a secret roll;
    /// Stripe's libraries accept any matching `v1`.
    ExtraSignatures,
}

/// One delivery attempt, as the sender recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: String,
    pub event_type: String,
    pub signing: Signing,
    /// The HTTP status, or `None` when the request failed (connection refused, timeout, …).
    pub status: Option<u16>,
}

/// Builds, signs and sends Stripe webhook events.
#[derive(Debug)]
pub struct WebhookSender {
    secret: String,
    client: reqwest::Client,
    issued: Mutex<u64>,
    deliveries: Mutex<Vec<Delivery>>,
}

/// `hex(HMAC-SHA256(secret, "{t}.{payload}"))`, Stripe's `v1` scheme.
pub fn signature(secret: &str, timestamp: i64, payload: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{timestamp}.{payload}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl WebhookSender {
    /// A sender signing with `secret` (the endpoint's `whsec_...`).
    pub fn new(secret: impl Into<String>) -> Self {
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent("Stripe/1.0 (+https://stripe.com/docs/webhooks)")
            .build()
            .unwrap_or_default();
        Self {
            secret: secret.into(),
            client,
            issued: Mutex::new(0),
            deliveries: Mutex::new(Vec::new()),
        }
    }

    /// A fresh event of `event_type` (one of [`EVENT_TYPES`]) from the sample envelopes, with a
    /// unique id and `created = now`.
    pub fn event(&self, event_type: &str) -> Option<StripeEvent> {
        let sample = sample_event(event_type)?;
        let object = sample.pointer("/data/object")?.clone();
        let previous = sample.pointer("/data/previous_attributes").cloned();
        Some(self.event_with_object(event_type, object, previous))
    }

    /// A fresh event carrying `object` (e.g. a subscription from [`StripeSim`]).
    pub fn event_with_object(
        &self,
        event_type: &str,
        object: Value,
        previous_attributes: Option<Value>,
    ) -> StripeEvent {
        let n = {
            let mut issued = lock(&self.issued);
            *issued += 1;
            *issued
        };
        let created = chrono::Utc::now().timestamp();
        let id = format!(
            "evt_sim{:08}{:012x}",
            n,
            mix(created as u64, &[n]) & 0xffff_ffff_ffff
        );
        let mut data = json!({"object": object});
        if let Some(previous) = previous_attributes {
            data["previous_attributes"] = previous;
        }
        let envelope = json!({
            "id": id,
            "object": "event",
            "api_version": "2026-08-26.dahlia",
            "created": created,
            "data": data,
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": event_type,
        });
        StripeEvent {
            id,
            event_type: event_type.to_owned(),
            created,
            payload: serde_json::to_string_pretty(&envelope).unwrap_or_default(),
        }
    }

    /// The `Stripe-Signature` value for `payload` signed at `timestamp`.
    pub fn signature_header(&self, payload: &str, timestamp: i64) -> String {
        format!(
            "t={timestamp},v1={}",
            signature(&self.secret, timestamp, payload)
        )
    }

    /// The header for a delivery signed as `signing` (`None` for [`Signing::Unsigned`]).
    pub fn header_for(&self, payload: &str, signing: &Signing) -> Option<String> {
        let now = chrono::Utc::now().timestamp();
        match signing {
            Signing::Valid => Some(self.signature_header(payload, now)),
            Signing::WrongSecret(other) => {
                Some(format!("t={now},v1={}", signature(other, now, payload)))
            }
            Signing::Stale(age) => Some(self.signature_header(payload, now - age.as_secs() as i64)),
            Signing::Unsigned => None,
            Signing::ExtraSignatures => Some(format!(
                "t={now},v1={},v1={},v0={}",
                signature("whsec_rolled_out", now, payload),
                signature(&self.secret, now, payload),
                "6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
            )),
        }
    }

    /// Sends `event` to `url`, validly signed. Returns the status (or `None` on a failed request).
    pub async fn send(&self, url: &str, event: &StripeEvent) -> Option<u16> {
        self.send_with(url, event, Signing::Valid).await
    }

    pub async fn send_with(&self, url: &str, event: &StripeEvent, signing: Signing) -> Option<u16> {
        let mut request = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(event.payload.clone());
        if let Some(sig) = self.header_for(&event.payload, &signing) {
            request = request.header("stripe-signature", sig);
        }
        let status = request.send().await.ok().map(|r| r.status().as_u16());
        lock(&self.deliveries).push(Delivery {
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            signing,
            status,
        });
        status
    }

    /// Delivers like Stripe does, on a compressed schedule: retries any non-2xx (or failed)
    /// attempt up to `attempts` times in all, waiting `first_backoff`, then twice that, and so on.
    pub async fn send_with_retries(
        &self,
        url: &str,
        event: &StripeEvent,
        attempts: u32,
        first_backoff: Duration,
    ) -> Option<u16> {
        let mut wait = first_backoff;
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            last = self.send(url, event).await;
            if last.is_some_and(|s| (200..300).contains(&s)) {
                break;
            }
        }
        last
    }

    /// Sends `events` in an order shuffled under `seed` (Stripe does not guarantee order).
    /// Returns the statuses in the order sent, paired with the event ids.
    pub async fn send_shuffled(
        &self,
        url: &str,
        events: &[StripeEvent],
        seed: u64,
    ) -> Vec<(String, Option<u16>)> {
        let mut order: Vec<usize> = (0..events.len()).collect();
        // Fisher–Yates under the seed.
        for i in (1..order.len()).rev() {
            let j = (mix(seed, &[i as u64]) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut sent = Vec::new();
        for i in order {
            let status = self.send(url, &events[i]).await;
            sent.push((events[i].id.clone(), status));
        }
        sent
    }

    /// Every delivery attempt so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }
}
