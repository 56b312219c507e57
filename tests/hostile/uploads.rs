//! `POST /v1/uploads` under hostile input: a multipart form is only accepted with an
//! `uploads:write` token, a known `client_id` and a non-empty file of an accepted media type
//! within `uploads.max_bytes`, so the generators produce every other combination: garbage and
//! truncated forms, forms missing a field or carrying a bad one, files too big, empty or of a
//! refused type, wrong content types, bad tokens.

use axum::body::Body;
use axum::http::{Method, Request};
use futures::StreamExt;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::{App, BODY_LIMIT, Case, cases, refuse_all, request, runtime};

const CLIENT: &str = "hostile-client";
const BOUNDARY: &str = "----hostileboundary7MA4YWxkTrZu0gW";

#[derive(Debug, Clone)]
struct Hostile {
    what: &'static str,
    content_type: Option<Vec<u8>>,
    authorization: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl Case for Hostile {
    fn what(&self) -> &'static str {
        self.what
    }

    fn request(&self) -> Request<Body> {
        let content_type = self.content_type.iter().map(|ct| ("content-type", &ct[..]));
        let authorization = self.authorization.iter().map(|a| ("authorization", &a[..]));
        request(
            Method::POST,
            "/v1/uploads",
            content_type.chain(authorization),
            &self.body,
        )
    }

    fn shown(&self) -> String {
        let shown = &self.body[..self.body.len().min(400)];
        format!("; form: {:?}", String::from_utf8_lossy(shown))
    }
}

/// One form part: (field name, file name, part content type, bytes).
type Part = (String, Option<String>, Option<String>, Vec<u8>);

fn form(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file_name, content_type, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(file_name) = file_name {
            disposition.push_str(&format!("; filename=\"{file_name}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(ct) = content_type {
            body.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn client_part(id: &str) -> Part {
    ("client_id".into(), None, None, id.as_bytes().to_vec())
}

fn file_part(content_type: &str, bytes: Vec<u8>) -> Part {
    (
        "file".into(),
        Some("report.txt".into()),
        Some(content_type.into()),
        bytes,
    )
}

fn good_form() -> Vec<u8> {
    form(&[
        client_part(CLIENT),
        file_part("text/plain", b"quarterly numbers\n".to_vec()),
    ])
}

fn form_ct() -> Option<Vec<u8>> {
    Some(format!("multipart/form-data; boundary={BOUNDARY}").into_bytes())
}

fn bearer(token: &str) -> Option<Vec<u8>> {
    Some(format!("Bearer {token}").into_bytes())
}

/// Forms that parse (or nearly) but must not be stored.
fn misfit_form() -> impl Strategy<Value = Vec<u8>> {
    let file = vec(any::<u8>(), 1..512);
    prop_oneof![
        // No file.
        "[a-z]{0,8}".prop_map(|t| form(&[
            client_part(CLIENT),
            ("title".into(), None, None, t.into_bytes())
        ])),
        // No client.
        file.clone()
            .prop_map(|f| form(&[file_part("text/plain", f)])),
        // A client nobody knows.
        ("[a-z0-9\\-]{1,40}", file.clone())
            .prop_filter("the known client", |(c, _)| c != CLIENT)
            .prop_map(|(c, f)| form(&[client_part(&c), file_part("text/plain", f)])),
        // A client id too long or with control characters (NUL has its own test below).
        prop_oneof!["[a-z]{1025,1100}", "[a-z]{0,4}[\u{1}-\u{1f}][a-z]{0,4}"]
            .prop_map(|c| form(&[client_part(&c), file_part("text/plain", b"x".to_vec())])),
        // An empty file.
        Just(form(&[
            client_part(CLIENT),
            file_part("text/plain", Vec::new())
        ])),
        // A media type not accepted.
        ("[a-z]{1,10}/[a-z\\-]{1,12}", file.clone())
            .prop_filter("an accepted type", |(t, _)| {
                !baseaim_worker::config::Config::load_from(None, Vec::<(String, String)>::new())
                    .unwrap()
                    .uploads
                    .allowed_mime_types
                    .iter()
                    .any(|a| a == t)
            })
            .prop_map(|(t, f)| form(&[client_part(CLIENT), file_part(&t, f)])),
        // A file past `uploads.max_bytes`.
        (BODY_LIMIT + 1..3 * BODY_LIMIT, any::<u8>())
            .prop_map(|(n, b)| form(&[client_part(CLIENT), file_part("text/plain", vec![b; n])])),
    ]
}

fn hostile(upload_token: String, other_token: String) -> impl Strategy<Value = Hostile> {
    let good = good_form();
    let authed = {
        let token = upload_token.clone();
        move |what: &'static str, body: BoxedStrategy<Vec<u8>>| {
            let token = token.clone();
            body.prop_map(move |body| Hostile {
                what,
                content_type: form_ct(),
                authorization: bearer(&token),
                body,
            })
        }
    };
    // Cut before its closing boundary: the form never ends.
    let closing = format!("--{BOUNDARY}--\r\n").len();
    let truncated = (0..good.len() - closing).prop_map({
        let good = good.clone();
        move |at| good[..at].to_vec()
    });
    let wrong_type = prop_oneof![
        Just(None),
        Just(Some(b"multipart/form-data".to_vec())),
        Just(Some(b"multipart/form-data; boundary=".to_vec())),
        Just(Some(
            b"multipart/form-data; boundary=somethingelse".to_vec()
        )),
        Just(Some(
            b"multipart/mixed; boundary=----hostileboundary7MA4YWxkTrZu0gW".to_vec()
        )),
        Just(Some(b"application/json".to_vec())),
        Just(Some(b"text/plain".to_vec())),
        vec(0x20u8..0x7f, 0..60).prop_map(Some),
    ]
    .prop_filter("the right type", |ct| ct.as_deref() != form_ct().as_deref())
    .prop_map({
        let (good, token) = (good.clone(), upload_token.clone());
        move |content_type| Hostile {
            what: "a good form under a wrong content type",
            content_type,
            authorization: bearer(&token),
            body: good.clone(),
        }
    });
    let bad_auth = prop_oneof![
        Just(None),
        Just(bearer(&other_token)),
        "[A-Za-z0-9_\\-]{0,60}".prop_map(|t| bearer(&format!("baw_{t}"))),
        vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..100).prop_map(Some),
        Just(Some(format!("Basic {upload_token}").into_bytes())),
    ]
    .prop_map(move |authorization| Hostile {
        what: "a good form under a bad token",
        content_type: form_ct(),
        authorization,
        body: good.clone(),
    });
    prop_oneof![
        2 => authed("arbitrary bytes", vec(any::<u8>(), 0..2048).boxed()),
        2 => authed("a truncated form", truncated.boxed()),
        5 => authed("a form that does not fit", misfit_form().boxed()),
        1 => wrong_type,
        2 => bad_auth,
    ]
}

#[test]
fn the_upload_endpoint_refuses_hostile_input_and_stores_nothing() {
    let rt = runtime();
    let app = rt.block_on(App::start());
    let (upload_token, other_token) = rt.block_on(async {
        sqlx::query(
            "insert into clients (id, name, email) values ($1, 'Hostile', 'h@example.com')",
        )
        .bind(CLIENT)
        .execute(&app.db.pool)
        .await
        .unwrap();
        let pool = &app.db.pool;
        (
            baseaim_worker::auth::tokens::create(pool, "up", &["uploads:write"])
                .await
                .unwrap(),
            baseaim_worker::auth::tokens::create(pool, "other", &["jobs:write"])
                .await
                .unwrap(),
        )
    });
    let stored = |app: &App| {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select (select count(*) from documents) + (select count(*) from document_chunks)
                      + (select count(*) from jobs)",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // The control: a fitting form under the right token is accepted on this very router.
    rt.block_on(async {
        let control = Hostile {
            what: "control",
            content_type: form_ct(),
            authorization: bearer(&upload_token),
            body: good_form(),
        };
        let (status, body) = app.send(control.request()).await;
        assert!(status.is_success(), "control upload: {status} {body}");
        assert!(stored(&app).await >= 3, "the control stored its document");
        sqlx::query("truncate jobs, document_chunks, documents cascade")
            .execute(&app.db.pool)
            .await
            .unwrap();
    });
    refuse_all(
        &rt,
        &app,
        "/v1/uploads",
        hostile(upload_token, other_token),
        cases(1500),
    );
    assert_eq!(rt.block_on(stored(&app)), 0, "hostile uploads stored rows");
}

/// A NUL byte in `client_id` (or `title`) must be refused like any other bad value, not reach
/// PostgreSQL (which refuses NUL in text: a 500). Regression test for a defect this suite found.
#[test]
fn a_nul_byte_in_a_text_field_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let app = App::start().await;
        let token = baseaim_worker::auth::tokens::create(&app.db.pool, "up", &["uploads:write"])
            .await
            .unwrap();
        for parts in [
            vec![client_part("\0"), file_part("text/plain", b"x".to_vec())],
            vec![client_part("a\0b"), file_part("text/plain", b"x".to_vec())],
        ] {
            let case = Hostile {
                what: "NUL",
                content_type: form_ct(),
                authorization: bearer(&token),
                body: form(&parts),
            };
            let (status, body) = app.send(case.request()).await;
            assert!(status.is_client_error(), "{status} {body}");
        }
    });
}

/// An app for one upload test: the known client and an `uploads:write` token.
async fn upload_app(env: Vec<(String, String)>) -> (App, String) {
    let app = App::start_with(env).await;
    sqlx::query("insert into clients (id, name, email) values ($1, 'Hostile', 'h@example.com')")
        .bind(CLIENT)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let token = baseaim_worker::auth::tokens::create(&app.db.pool, "up", &["uploads:write"])
        .await
        .unwrap();
    (app, token)
}

async fn upload_rows(app: &App) -> i64 {
    sqlx::query_scalar(
        "select (select count(*) from documents) + (select count(*) from document_chunks)
              + (select count(*) from jobs)",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

fn upload(token: &str, body: Body) -> Request<Body> {
    Request::post("/v1/uploads")
        .header("content-type", form_ct().unwrap())
        .header("authorization", bearer(token).unwrap())
        .body(body)
        .unwrap()
}

/// Without a `Content-Length` only the file's bytes were counted: a form of endless small text
/// fields (each under the 1 KiB a field may hold) held an upload slot for as long as it came.
/// The parts other than the file, headers included, now count against the same 64 KiB a
/// declared length may add: past it 413, nothing stored; a form with a few fields still goes in.
#[tokio::test]
async fn endless_small_fields_are_413_and_store_nothing() {
    let (app, token) = upload_app(Vec::new()).await;
    let title = |text: &str| -> Part { ("title".into(), None, None, text.as_bytes().to_vec()) };
    let file = file_part("text/plain", b"quarterly numbers\n".to_vec());
    let empty_titles: Vec<Part> = std::iter::once(client_part(CLIENT))
        .chain(std::iter::repeat_n(title(""), 3000))
        .chain([file.clone()])
        .collect();
    let full_titles: Vec<Part> = std::iter::once(client_part(CLIENT))
        .chain(std::iter::repeat_n(title(&"t".repeat(1000)), 100))
        .chain([file.clone()])
        .collect();
    for (what, parts) in [
        ("3,000 empty fields", empty_titles),
        ("100 KB of titles", full_titles),
    ] {
        let (status, body) = app.send(upload(&token, Body::from(form(&parts)))).await;
        assert_eq!(status.as_u16(), 413, "{what}: {body}");
        assert_eq!(upload_rows(&app).await, 0, "{what}: stored rows");
    }
    let few: Vec<Part> = vec![
        client_part(CLIENT),
        title("first"),
        title(&"t".repeat(1000)),
        title("last"),
        file,
    ];
    let (status, body) = app.send(upload(&token, Body::from(form(&few)))).await;
    assert_eq!(status.as_u16(), 202, "{body}");
}

/// A body that never stalls long enough for `uploads.read_timeout` but never ends either (a
/// byte every 100 ms) held its upload slot until it chose to stop. `uploads.request_timeout`
/// ends it: 408, nothing stored, and the slot serves the next upload.
#[tokio::test]
async fn an_upload_trickling_past_the_request_timeout_is_408_and_frees_its_slot() {
    let (app, token) = upload_app(vec![
        ("BAW__UPLOADS__REQUEST_TIMEOUT".into(), "1s".into()),
        ("BAW__UPLOADS__MAX_CONCURRENT".into(), "1".into()),
    ])
    .await;
    let whole = form(&[client_part(CLIENT), file_part("text/plain", vec![b'x'; 40])]);
    // Everything up to the file's bytes at once, then the rest a byte every 100 ms (4 s or more).
    let head = whole.len() - 40 - format!("\r\n--{BOUNDARY}--\r\n").len();
    let mut pieces: Vec<Vec<u8>> = vec![whole[..head].to_vec()];
    pieces.extend(whole[head..].chunks(1).map(<[u8]>::to_vec));
    let trickle =
        futures::stream::iter(pieces.into_iter().enumerate()).then(|(i, piece)| async move {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok::<_, std::io::Error>(axum::body::Bytes::from(piece))
        });
    let (status, body) = app.send(upload(&token, Body::from_stream(trickle))).await;
    assert_eq!(status.as_u16(), 408, "{body}");
    assert!(body.contains("took longer than 1 s"), "{body}");
    assert_eq!(
        upload_rows(&app).await,
        0,
        "the trickled upload stored rows"
    );
    let (status, body) = app.send(upload(&token, Body::from(good_form()))).await;
    assert_eq!(status.as_u16(), 202, "the slot is free again: {body}");
}

/// The connection lost while the job is enqueued (the last statement before the commit): the
/// database is unavailable, so 503 like any other database outage (it was a 500), and nothing
/// of the upload is stored.
#[tokio::test]
async fn a_connection_lost_at_enqueue_is_503_and_stores_nothing() {
    let (app, token) = upload_app(Vec::new()).await;
    sqlx::raw_sql(
        "create function cut_at_enqueue() returns trigger language plpgsql as $$
         begin perform pg_terminate_backend(pg_backend_pid()); return new; end $$;
         create trigger cut_at_enqueue before insert on jobs
             for each row execute function cut_at_enqueue();",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let (status, body) = app.send(upload(&token, Body::from(good_form()))).await;
    assert_eq!(status.as_u16(), 503, "{body}");
    assert_eq!(upload_rows(&app).await, 0, "nothing of the upload stored");
}
