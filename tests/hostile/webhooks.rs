//! `POST /webhooks/stripe` under hostile input. A delivery is only accepted when it is validly
//! signed AND an event envelope, so the generators below produce every other combination:
//! garbage under a valid signature, valid events under forged, stale, replayed or malformed
//! signatures, and bodies past the limit under anything.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use baseaim_worker::integrations::stripe::Verifier;
use baseaim_worker::integrations::stripe::types::EventEnvelope;
use baseaim_worker::sim::stripe::WebhookSender;
use proptest::collection::vec;
use proptest::prelude::*;
use secrecy::SecretString;

use crate::{App, BODY_LIMIT, Case, WEBHOOK_SECRET, cases, refuse_all, request, runtime};

/// One hostile request.
#[derive(Debug, Clone)]
struct Hostile {
    what: &'static str,
    method: Method,
    path: String,
    content_type: Option<Vec<u8>>,
    /// Every `Stripe-Signature` header, in order (none, one, or several).
    signatures: Vec<Vec<u8>>,
    body: Vec<u8>,
}

impl Case for Hostile {
    fn what(&self) -> &'static str {
        self.what
    }

    fn request(&self) -> Request<Body> {
        let content_type = self.content_type.iter().map(|ct| ("content-type", &ct[..]));
        let signatures = self.signatures.iter().map(|s| ("stripe-signature", &s[..]));
        request(
            self.method.clone(),
            &self.path,
            content_type.chain(signatures),
            &self.body,
        )
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `hex(HMAC-SHA256(secret, "{t}.{body}"))` over raw bytes (the body need not be UTF-8).
fn hmac_hex(secret: &str, t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    ring::hmac::sign(&key, &signed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn valid_signature(body: &[u8]) -> Vec<u8> {
    let t = now();
    format!("t={t},v1={}", hmac_hex(WEBHOOK_SECRET, t, body)).into_bytes()
}

/// A genuine event payload (what a valid delivery carries); built once, a sender is costly.
fn genuine_event() -> String {
    static EVENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        WebhookSender::new(WEBHOOK_SECRET)
            .event("invoice.paid")
            .expect("sample")
            .payload()
            .to_owned()
    });
    EVENT.clone()
}

fn is_envelope(body: &[u8]) -> bool {
    serde_json::from_slice::<EventEnvelope>(body).is_ok()
}

fn content_type() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        Just(Some(b"application/json".to_vec())),
        Just(Some(b"text/plain".to_vec())),
        Just(Some(b"application/x-www-form-urlencoded".to_vec())),
        Just(Some(b"multipart/form-data; boundary=----x".to_vec())),
        Just(Some(b"application/json; charset=utf-16".to_vec())),
        vec(any::<u8>(), 0..64).prop_map(Some),
    ]
}

/// Every way a signature header can be wrong for `body` (never a valid, fresh signature).
fn bad_signatures(body: Vec<u8>) -> impl Strategy<Value = Vec<Vec<u8>>> {
    let b = body.clone();
    let forged = "[a-z_]{1,40}".prop_map(move |secret| {
        let t = now();
        vec![format!("t={t},v1={}", hmac_hex(&format!("whsec_{secret}"), t, &b)).into_bytes()]
    });
    let b = body.clone();
    let stale = (301i64..1_000_000_000).prop_map(move |age| {
        let t = now() - age;
        vec![format!("t={t},v1={}", hmac_hex(WEBHOOK_SECRET, t, &b)).into_bytes()]
    });
    // A genuine signature lifted from another delivery: valid secret, other bytes.
    let b = body.clone();
    let replayed = vec(any::<u8>(), 0..64).prop_map(move |other| {
        let t = now();
        let mut lifted = genuine_event().into_bytes();
        lifted.extend_from_slice(&other);
        if lifted == b {
            lifted.push(b' ');
        }
        vec![format!("t={t},v1={}", hmac_hex(WEBHOOK_SECRET, t, &lifted)).into_bytes()]
    });
    // The right signature for this body, but under a timestamp it was not made for.
    let b = body.clone();
    let retimed = (1i64..100_000).prop_map(move |shift| {
        let t = now();
        vec![format!("t={},v1={}", t + shift, hmac_hex(WEBHOOK_SECRET, t, &b)).into_bytes()]
    });
    let random_hex = (1usize..300, any::<u64>()).prop_map(|(n, seed)| {
        let mut header = format!("t={}", now());
        for i in 0..n as u64 {
            header.push_str(&format!(
                ",v1={:064x}",
                (seed ^ i.wrapping_mul(0x9E37_79B9)) as u128
            ));
        }
        vec![header.into_bytes()]
    });
    let b = body.clone();
    let malformed = prop_oneof![
        Just("".to_owned()),
        Just("t=".to_owned()),
        Just("v1=".to_owned()),
        Just("t=abc,v1=00".to_owned()),
        Just("t=99999999999999999999999,v1=00".to_owned()),
        Just("t=-1,v1=00".to_owned()),
        Just("t=1,v1=0".to_owned()),
        Just("t=1=2,v1=00".to_owned()),
        vec(0x20u8..0x7f, 0..300).prop_map(|b| String::from_utf8(b).unwrap()),
    ]
    .prop_map(|h| vec![h.into_bytes()]);
    // Bytes no header parser should trust: obs-text, tabs, a NUL-like mix (HeaderValue refuses
    // CR, LF and NUL, so header splitting itself cannot be expressed; these are what gets through).
    let odd_bytes = vec(
        prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')],
        0..200,
    )
    .prop_map(|h| vec![h]);
    // The valid signature's v1 under a wrong key name, or split over two headers.
    let split = Just(()).prop_map(move |_| {
        let valid = String::from_utf8(valid_signature(&b)).unwrap();
        let (t, v1) = valid.split_once(',').unwrap();
        vec![t.as_bytes().to_vec(), v1.as_bytes().to_vec()]
    });
    let b = body.clone();
    let v0_only = Just(()).prop_map(move |_| {
        let t = now();
        vec![format!("t={t},v0={}", hmac_hex(WEBHOOK_SECRET, t, &b)).into_bytes()]
    });
    prop_oneof![
        Just(Vec::new()),
        forged,
        stale,
        replayed,
        retimed,
        random_hex,
        malformed,
        odd_bytes,
        split,
        v0_only,
    ]
}

/// JSON that is not an event envelope (wrong types, missing fields, other shapes).
fn not_an_envelope() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            vec(
                (
                    prop_oneof![
                        Just("id".to_owned()),
                        Just("type".to_owned()),
                        Just("created".to_owned()),
                        Just("data".to_owned()),
                        "[a-z]{1,8}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    });
    value
        .prop_map(|v| serde_json::to_vec(&v).unwrap())
        .prop_filter("an envelope would be accepted", |b| !is_envelope(b))
}

/// A genuine event broken: truncated, a byte changed, or bytes spliced in.
fn broken_event() -> impl Strategy<Value = Vec<u8>> {
    let event = genuine_event().into_bytes();
    let n = event.len();
    (0..n, any::<u8>(), vec(any::<u8>(), 1..16), 0..3u8)
        .prop_map(move |(at, byte, splice, how)| {
            let mut body = event.clone();
            match how {
                0 => body.truncate(at),
                1 => body[at] = byte,
                _ => {
                    body.splice(at..at, splice);
                }
            }
            body
        })
        .prop_filter("still an envelope", |b| !is_envelope(b))
}

/// Nesting past any parser's recursion limit: bare (`how` 0, 1), or inside an otherwise fine
/// envelope (2; the intake does not parse the object, so that one is stored when genuinely
/// signed: it is only hostile under a bad signature).
fn deeply_nested(hows: std::ops::Range<u8>) -> impl Strategy<Value = Vec<u8>> {
    (129usize..20_000, hows).prop_map(|(depth, how)| {
        let (open, close) = match how {
            0 => ("[".repeat(depth), "]".repeat(depth)),
            1 => ("{\"a\":".repeat(depth), "}".repeat(depth)),
            _ => (
                format!(
                    "{{\"id\":\"evt_nested\",\"type\":\"invoice.paid\",\"created\":1,\"data\":{{\"object\":{}",
                    "[".repeat(depth)
                ),
                format!("{}}}}}", "]".repeat(depth)),
            ),
        };
        format!("{open}{close}").into_bytes()
    })
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let post = |what: &'static str, body: BoxedStrategy<Vec<u8>>, signed: bool| {
        body.prop_flat_map(move |body| {
            let signatures = if signed {
                Just(vec![valid_signature(&body)]).boxed()
            } else {
                bad_signatures(body.clone()).boxed()
            };
            (Just(body), signatures, content_type())
        })
        .prop_map(move |(body, signatures, content_type)| Hostile {
            what,
            method: Method::POST,
            path: "/webhooks/stripe".into(),
            content_type,
            signatures,
            body,
        })
    };
    let huge = (BODY_LIMIT + 1..4 * BODY_LIMIT, any::<u8>(), any::<bool>()).prop_map(
        |(len, byte, signed)| {
            let body = vec![byte; len];
            Hostile {
                what: "body past the limit",
                method: Method::POST,
                path: "/webhooks/stripe".into(),
                content_type: Some(b"application/json".to_vec()),
                signatures: if signed {
                    vec![valid_signature(&body)]
                } else {
                    Vec::new()
                },
                body,
            }
        },
    );
    let genuine = Just(genuine_event().into_bytes()).boxed();
    let wrong_route = (
        prop_oneof![
            Just(Method::GET),
            Just(Method::PUT),
            Just(Method::DELETE),
            Just(Method::PATCH),
            Just(Method::OPTIONS),
        ],
        prop_oneof![
            Just("/webhooks/stripe".to_owned()),
            Just("/webhooks/stripe/".to_owned()),
            Just("/webhooks/Stripe".to_owned()),
            "/webhooks/[a-z%0-9]{0,20}",
        ],
    )
        .prop_map(|(method, path)| {
            let body = genuine_event().into_bytes();
            Hostile {
                what: "wrong method or path",
                method,
                path,
                content_type: Some(b"application/json".to_vec()),
                signatures: vec![valid_signature(&body)],
                body,
            }
        });
    prop_oneof![
        3 => post("arbitrary bytes, any signature", vec(any::<u8>(), 0..4096).boxed(), false),
        3 => post("arbitrary bytes, valid signature", vec(any::<u8>(), 0..4096).boxed(), true),
        3 => post("JSON that is not an event, valid signature", not_an_envelope().boxed(), true),
        3 => post("a broken event, valid signature", broken_event().boxed(), true),
        2 => post("deeply nested JSON, valid signature", deeply_nested(0..2).boxed(), true),
        1 => post("deeply nested event, bad signature", deeply_nested(2..3).boxed(), false),
        6 => post("a genuine event, bad signature", genuine, false),
        1 => huge,
        1 => wrong_route,
    ]
}

#[test]
fn the_webhook_endpoint_refuses_hostile_input_and_stores_nothing() {
    let rt = runtime();
    let app = rt.block_on(App::start());
    refuse_all(&rt, &app, "webhook", hostile(), cases(9000));
    let stored = rt.block_on(app.stored());
    assert_eq!(stored, 0, "hostile deliveries stored rows");
}

/// The control: the same router, database and count accept and store a genuine delivery, so
/// "nothing stored" above can fail.
#[test]
fn a_genuine_delivery_through_the_same_path_is_stored() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let app = App::start().await;
        let body = genuine_event().into_bytes();
        let request = Hostile {
            what: "genuine",
            method: Method::POST,
            path: "/webhooks/stripe".into(),
            content_type: Some(b"application/json".to_vec()),
            signatures: vec![valid_signature(&body)],
            body,
        }
        .request();
        let (status, _) = app.send(request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(app.stored().await >= 2, "the event and its job");
    });
}

/// A header with thousands of `v1` values must not cost thousands of HMACs over the body: one
/// delivery of 1 MiB (the default limit) with ~5,000 signatures used to take a CPU for seconds.
#[test]
fn many_signatures_cost_one_hmac_per_secret() {
    let verifier = Verifier::new(
        &SecretString::from(format!("whsec_old,{WEBHOOK_SECRET}")),
        Duration::from_secs(300),
    )
    .unwrap();
    let body = vec![b'x'; 1024 * 1024];
    let t = now();
    let mut header = format!("t={t}");
    for i in 0..5000u32 {
        header.push_str(&format!(",v1={:064x}", i));
    }
    let started = Instant::now();
    assert!(verifier.verify(Some(&header), &body, t).is_err());
    let forged = started.elapsed();
    header.push_str(&format!(",v1={}", hmac_hex(WEBHOOK_SECRET, t, &body)));
    assert!(verifier.verify(Some(&header), &body, t).is_ok());
    assert!(
        forged < Duration::from_millis(1500),
        "5,000 signatures over 1 MiB took {forged:?}"
    );
}
