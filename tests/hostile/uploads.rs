//! `POST /v1/uploads` under hostile input: a multipart form is only accepted with an
//! `uploads:write` token, a known `client_id` and a non-empty file of an accepted media type
//! within `uploads.max_bytes`, so the generators produce every other combination: garbage and
//! truncated forms, forms missing a field or carrying a bad one, files too big, empty or of a
//! refused type, wrong content types, bad tokens.

use axum::body::Body;
use axum::http::{Method, Request};
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
