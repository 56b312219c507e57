//! Google Drive: paths against the discovery document, the JWT token endpoint, uploads
//! (multipart, resumable with 308/Range and resume after an interruption), list by
//! appProperties, permissions, delete, errors and the quota.

use std::time::Duration;

use baseaim_worker::sim::google_drive::{
    CHUNK_GRANULARITY, DriveRateLimit, GOOGLE_TOKEN_URL, GoogleDriveConfig, GoogleDriveSim, ROUTES,
};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{client, fixture};

const SCOPE: &str = "https://www.googleapis.com/auth/drive.file";

async fn start(config: GoogleDriveConfig) -> GoogleDriveSim {
    GoogleDriveSim::start(config)
        .await
        .expect("start drive sim")
}

async fn token_response(sim: &GoogleDriveSim, assertion: &str) -> reqwest::Response {
    client()
        .post(sim.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ]))
        .send()
        .await
        .expect("send")
}

async fn access_token(sim: &GoogleDriveSim) -> String {
    let account = sim.service_account();
    let assertion = account
        .sign_assertion(&account.claims(SCOPE, GOOGLE_TOKEN_URL))
        .expect("sign");
    let body: Value = token_response(sim, &assertion)
        .await
        .json()
        .await
        .expect("json");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

fn multipart(metadata: &Value, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "foo_bar_baz";
    let mut body = format!(
        "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n--{boundary}\r\nContent-Type: application/pdf\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
    (format!("multipart/related; boundary={boundary}"), body)
}

#[test]
fn every_route_matches_the_discovery_document() {
    let discovery = fixture("drive.v3.discovery.json");
    let service_path = format!(
        "/{}",
        discovery["servicePath"].as_str().expect("servicePath")
    );
    let methods: Vec<&Value> = ["files", "permissions"]
        .iter()
        .flat_map(|r| {
            discovery["resources"][r]["methods"]
                .as_object()
                .expect("methods")
                .values()
        })
        .collect();
    for (http_method, path, id) in ROUTES {
        let Some(id) = id else { continue };
        let method = methods
            .iter()
            .find(|m| m["id"] == *id)
            .unwrap_or_else(|| panic!("{id} is not in the discovery document"));
        assert_eq!(method["httpMethod"], *http_method, "{id}");
        assert_eq!(
            format!("{service_path}{}", method["path"].as_str().expect("path")),
            *path,
            "{id}"
        );
    }
    let create = &discovery["resources"]["files"]["methods"]["create"];
    let protocols = &create["mediaUpload"]["protocols"];
    for protocol in ["simple", "resumable"] {
        let path = protocols[protocol]["path"].as_str().expect("upload path");
        assert!(
            ROUTES.iter().any(|(m, p, _)| *m == "POST" && *p == path),
            "{path} is not served"
        );
    }
    // The parameters the simulator reads exist, per method or as global parameters.
    let global = &discovery["parameters"];
    let declared = |method: &str, name: &str| {
        discovery["resources"]["files"]["methods"][method]["parameters"][name].is_object()
            || global[name].is_object()
    };
    for name in ["q", "pageSize", "pageToken", "fields", "supportsAllDrives"] {
        assert!(declared("list", name), "files.list {name}");
    }
    for name in ["uploadType", "fields"] {
        assert!(declared("create", name), "files.create {name}");
    }
    assert!(declared("get", "alt"));
    assert!(declared("generateIds", "count"));
}

#[tokio::test]
async fn a_signed_assertion_buys_a_token_and_a_tampered_one_does_not() {
    let sim = start(GoogleDriveConfig::default()).await;
    let account = sim.service_account();
    let assertion = account
        .sign_assertion(&account.claims(SCOPE, &sim.token_uri()))
        .expect("sign");
    let ok = token_response(&sim, &assertion).await;
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert!(
        body["access_token"]
            .as_str()
            .expect("token")
            .starts_with("ya29.")
    );

    // Claims swapped after signing: the signature no longer matches.
    let mut parts: Vec<String> = assertion.split('.').map(str::to_owned).collect();
    let mut claims = account.claims(SCOPE, GOOGLE_TOKEN_URL);
    claims["sub"] = json!("someone@else.test");
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    let tampered = token_response(&sim, &parts.join(".")).await;
    assert_eq!(tampered.status(), 400);
    let body: Value = tampered.json().await.expect("json");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "Invalid JWT Signature.");
}

#[tokio::test]
async fn assertions_with_bad_claims_are_refused() {
    let sim = start(GoogleDriveConfig::default()).await;
    let account = sim.service_account();
    let now = chrono::Utc::now().timestamp();
    let cases = [
        json!({"iss": account.client_email, "scope": SCOPE, "aud": "https://elsewhere.test/token", "iat": now, "exp": now + 3600}),
        json!({"iss": account.client_email, "scope": SCOPE, "aud": GOOGLE_TOKEN_URL, "iat": now, "exp": now + 7200}),
        json!({"iss": account.client_email, "scope": SCOPE, "aud": GOOGLE_TOKEN_URL, "iat": now - 7200, "exp": now - 3600}),
        json!({"iss": "stranger@other.iam.gserviceaccount.com", "scope": SCOPE, "aud": GOOGLE_TOKEN_URL, "iat": now, "exp": now + 3600}),
    ];
    for claims in cases {
        let assertion = account.sign_assertion(&claims).expect("sign");
        let response = token_response(&sim, &assertion).await;
        assert_eq!(response.status(), 400, "{claims}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "invalid_grant", "{claims}");
    }
    let wrong_grant = client()
        .post(sim.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::form(&[("grant_type", "client_credentials")]))
        .send()
        .await
        .expect("send");
    assert_eq!(wrong_grant.status(), 400);
    assert_eq!(sim.tokens_issued(), 0);
}

#[tokio::test]
async fn multipart_upload_then_find_by_app_property_share_and_delete() {
    let sim = start(GoogleDriveConfig::default()).await;
    let token = access_token(&sim).await;
    let base = sim.base_url().to_owned();
    let http = client();

    let metadata = json!({"name": "report.pdf", "parents": ["folder-1"], "appProperties": {"idem": "upload-7"}});
    let (content_type, body) = multipart(&metadata, b"%PDF-1.4 sim");
    let created = http
        .post(format!("{base}/upload/drive/v3/files?uploadType=multipart&fields=id,name,webViewLink,appProperties"))
        .bearer_auth(&token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(created.status(), 200);
    let file: Value = created.json().await.expect("json");
    let id = file["id"].as_str().expect("id").to_owned();
    assert_eq!(file["appProperties"]["idem"], "upload-7");
    assert!(file["webViewLink"].as_str().expect("link").contains(&id));
    assert!(file.get("mimeType").is_none(), "fields limits the answer");
    assert_eq!(sim.file(&id).expect("stored").content, b"%PDF-1.4 sim");

    let q = "appProperties has { key='idem' and value='upload-7' } and trashed = false";
    let found: Value = http
        .get(crate::with_query(
            &format!("{base}/drive/v3/files"),
            &[
                ("q", q),
                ("fields", "nextPageToken,files(id,name,appProperties)"),
            ],
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(found["files"].as_array().map(Vec::len), Some(1));
    assert_eq!(found["files"][0]["id"], id.as_str());
    let none: Value = http
        .get(crate::with_query(
            &format!("{base}/drive/v3/files"),
            &[("q", "appProperties has { key='idem' and value='other' }")],
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(none["files"], json!([]));
    assert_eq!(none["kind"], "drive#fileList");

    let permission = http
        .post(format!(
            "{base}/drive/v3/files/{id}/permissions?supportsAllDrives=true"
        ))
        .bearer_auth(&token)
        .json(&json!({"role": "reader", "type": "anyone"}))
        .send()
        .await
        .expect("send");
    assert_eq!(permission.status(), 200);
    let permission: Value = permission.json().await.expect("json");
    assert_eq!(permission["kind"], "drive#permission");
    assert_eq!(permission["type"], "anyone");
    assert_eq!(sim.file(&id).expect("file").permissions.len(), 1);

    let deleted = http
        .delete(format!("{base}/drive/v3/files/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(deleted.status(), 204);
    let gone = http
        .get(format!("{base}/drive/v3/files/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(gone.status(), 404);
    let error: Value = gone.json().await.expect("json");
    assert_eq!(error["error"]["errors"][0]["reason"], "notFound");
}

async fn initiate(sim: &GoogleDriveSim, token: &str, total: usize) -> String {
    let response = client()
        .post(format!(
            "{}/upload/drive/v3/files?uploadType=resumable&fields=id,size,name",
            sim.base_url()
        ))
        .bearer_auth(token)
        .header("x-upload-content-type", "application/pdf")
        .header("x-upload-content-length", total.to_string())
        .json(&json!({"name": "big.pdf", "appProperties": {"idem": "big-1"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(0));
    response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned()
}

async fn put_chunk(session: &str, token: &str, range: &str, bytes: Vec<u8>) -> reqwest::Response {
    client()
        .put(session)
        .bearer_auth(token)
        .header("content-range", range)
        .body(bytes)
        .send()
        .await
        .expect("send")
}

fn range_header(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn content(total: usize) -> Vec<u8> {
    (0..total).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn resumable_upload_in_chunks_answers_308_with_range_then_the_file() {
    let sim = start(GoogleDriveConfig::default()).await;
    let token = access_token(&sim).await;
    let chunk = CHUNK_GRANULARITY as usize;
    let total = 2 * chunk + 1000;
    let data = content(total);
    let session = initiate(&sim, &token, total).await;
    assert!(session.starts_with(&format!(
        "{}/upload/drive/v3/files?uploadType=resumable&upload_id=",
        sim.base_url()
    )));

    let first = put_chunk(
        &session,
        &token,
        &format!("bytes 0-{}/{total}", chunk - 1),
        data[..chunk].to_vec(),
    )
    .await;
    assert_eq!(first.status(), 308);
    assert_eq!(range_header(&first).as_deref(), Some("bytes=0-262143"));

    // A non-final chunk that is not a multiple of 256 KiB: only the whole blocks are kept.
    let odd_end = chunk + chunk / 2;
    let odd = put_chunk(
        &session,
        &token,
        &format!("bytes {chunk}-{}/{total}", odd_end - 1),
        data[chunk..odd_end].to_vec(),
    )
    .await;
    assert_eq!(odd.status(), 308);
    assert_eq!(range_header(&odd).as_deref(), Some("bytes=0-262143"));

    let second = put_chunk(
        &session,
        &token,
        &format!("bytes {chunk}-{}/{total}", 2 * chunk - 1),
        data[chunk..2 * chunk].to_vec(),
    )
    .await;
    assert_eq!(range_header(&second).as_deref(), Some("bytes=0-524287"));

    let last = put_chunk(
        &session,
        &token,
        &format!("bytes {}-{}/{total}", 2 * chunk, total - 1),
        data[2 * chunk..].to_vec(),
    )
    .await;
    assert_eq!(last.status(), 200);
    let file: Value = last.json().await.expect("json");
    assert_eq!(file["size"], total.to_string());
    let id = file["id"].as_str().expect("id");
    assert_eq!(sim.file(id).expect("stored").content, data);

    // A status query after completion answers with the file.
    let query = put_chunk(&session, &token, &format!("bytes */{total}"), Vec::new()).await;
    assert_eq!(query.status(), 200);

    // The session counts every body byte it received: the odd chunk's half block was dropped
    // and sent again.
    let sessions = sim.upload_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].received, (total + chunk / 2) as u64);
}

#[tokio::test]
async fn without_keeping_content_a_file_keeps_its_size_and_sha256() {
    let sim = start(GoogleDriveConfig {
        keep_content: false,
        ..GoogleDriveConfig::default()
    })
    .await;
    let token = access_token(&sim).await;
    let chunk = CHUNK_GRANULARITY as usize;
    let total = chunk + 10;
    let data = content(total);
    let session = initiate(&sim, &token, total).await;
    let first = put_chunk(
        &session,
        &token,
        &format!("bytes 0-{}/{total}", chunk - 1),
        data[..chunk].to_vec(),
    )
    .await;
    assert_eq!(first.status(), 308);
    let last = put_chunk(
        &session,
        &token,
        &format!("bytes {chunk}-{}/{total}", total - 1),
        data[chunk..].to_vec(),
    )
    .await;
    assert_eq!(last.status(), 200);
    let file = sim.files().pop().expect("stored");
    assert!(file.content.is_empty());
    assert_eq!(file.size, total as u64);
    let sha: String = ring::digest::digest(&ring::digest::SHA256, &data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(file.sha256, sha);
    let listed: Value = client()
        .get(crate::with_query(
            &format!("{}/drive/v3/files/{}", sim.base_url(), file.id),
            &[("fields", "size,sha256Checksum")],
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["size"], total.to_string());
    assert_eq!(listed["sha256Checksum"], sha);
}

#[tokio::test]
async fn an_interrupted_chunk_can_be_resumed_after_a_status_query() {
    let sim = start(GoogleDriveConfig::default()).await;
    let token = access_token(&sim).await;
    let chunk = CHUNK_GRANULARITY as usize;
    let total = 3 * chunk;
    let data = content(total);
    let session = initiate(&sim, &token, total).await;

    // The whole file in one PUT, but the body breaks off after 1.5 chunks.
    let sent = data[..chunk + chunk / 2].to_vec();
    // The error comes a little later, so the first bytes are on the wire before the cut.
    let cut = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err(std::io::Error::other("cable pulled"))
    };
    let stream = futures::stream::iter([Ok::<Vec<u8>, std::io::Error>(sent)])
        .chain(futures::stream::once(cut));
    let broken = client()
        .put(&session)
        .bearer_auth(&token)
        .header("content-range", format!("bytes 0-{}/{total}", total - 1))
        .header("content-length", total.to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    assert!(broken.is_err() || broken.is_ok_and(|r| r.status() != 200));

    // Give the server a moment to record the partial chunk, then ask where to resume.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = put_chunk(&session, &token, &format!("bytes */{total}"), Vec::new()).await;
    assert_eq!(status.status(), 308);
    let range = range_header(&status).expect("a Range header");
    assert_eq!(range, "bytes=0-262143");
    let resume_at: usize = range
        .rsplit('-')
        .next()
        .expect("end")
        .parse::<usize>()
        .expect("n")
        + 1;

    let rest = put_chunk(
        &session,
        &token,
        &format!("bytes {resume_at}-{}/{total}", total - 1),
        data[resume_at..].to_vec(),
    )
    .await;
    assert_eq!(rest.status(), 200);
    let id = rest.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(sim.file(&id).expect("stored").content, data);
    assert_eq!(sim.files().len(), 1);
}

#[tokio::test]
async fn a_status_query_before_any_bytes_answers_308_without_range_and_expired_sessions_404() {
    let sim = start(GoogleDriveConfig::default()).await;
    let token = access_token(&sim).await;
    let session = initiate(&sim, &token, 1000).await;
    let query = put_chunk(&session, &token, "bytes */1000", Vec::new()).await;
    assert_eq!(query.status(), 308);
    assert_eq!(range_header(&query), None);

    sim.expire_upload_sessions();
    let expired = put_chunk(&session, &token, "bytes 0-999/1000", vec![0; 1000]).await;
    assert_eq!(expired.status(), 404);
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_auth_errors() {
    let sim = start(GoogleDriveConfig::default()).await;
    let response = client()
        .get(format!("{}/drive/v3/files", sim.base_url()))
        .bearer_auth("ya29.forged")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], 401);
    assert_eq!(body["error"]["errors"][0]["reason"], "authError");

    let token = access_token(&sim).await;
    sim.expire_tokens();
    let expired = client()
        .get(format!("{}/drive/v3/files", sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    assert_eq!(expired.status(), 401);
}

#[tokio::test]
async fn over_quota_answers_user_rate_limit_exceeded() {
    let sim = start(GoogleDriveConfig {
        quota_units_per_minute: 250,
        ..GoogleDriveConfig::default()
    })
    .await;
    let token = access_token(&sim).await;
    let list = || {
        client()
            .get(format!("{}/drive/v3/files", sim.base_url()))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(list().await.expect("send").status(), 200);
    assert_eq!(list().await.expect("send").status(), 200);
    let refused = list().await.expect("send");
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(
        body["error"]["errors"][0]["reason"],
        "userRateLimitExceeded"
    );
    assert_eq!(body["error"]["errors"][0]["domain"], "usageLimits");
    assert_eq!(sim.rate_limit_hits(), 1);
}

#[tokio::test]
async fn the_quota_error_can_be_a_429() {
    let sim = start(GoogleDriveConfig {
        quota_units_per_minute: 5,
        rate_limit: DriveRateLimit::TooMany429,
        ..GoogleDriveConfig::default()
    })
    .await;
    let token = access_token(&sim).await;
    let response = client()
        .get(format!("{}/drive/v3/files", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["errors"][0]["reason"], "rateLimitExceeded");
}

#[tokio::test]
async fn a_misspelt_field_and_an_unsupported_query_are_400s() {
    let sim = start(GoogleDriveConfig::default()).await;
    let token = access_token(&sim).await;
    let bad_fields = client()
        .get(format!(
            "{}/drive/v3/files?fields=files(id,webviewLink)",
            sim.base_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(bad_fields.status(), 400);
    let bad_q = client()
        .get(crate::with_query(
            &format!("{}/drive/v3/files", sim.base_url()),
            &[("q", "fullText contains 'x'")],
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(bad_q.status(), 400);
    let body: Value = bad_q.json().await.expect("json");
    assert_eq!(body["error"]["errors"][0]["location"], "q");
}

#[tokio::test]
async fn a_new_file_can_be_invisible_to_search_for_a_while() {
    let sim = start(GoogleDriveConfig {
        list_visibility_delay: Duration::from_millis(300),
        ..GoogleDriveConfig::default()
    })
    .await;
    let token = access_token(&sim).await;
    let (content_type, body) = multipart(
        &json!({"name": "a.pdf", "appProperties": {"idem": "x"}}),
        b"x",
    );
    let id = client()
        .post(format!(
            "{}/upload/drive/v3/files?uploadType=multipart",
            sim.base_url()
        ))
        .bearer_auth(&token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("send")
        .json::<Value>()
        .await
        .expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let search = || async {
        client()
            .get(crate::with_query(
                &format!("{}/drive/v3/files", sim.base_url()),
                &[("q", "appProperties has { key='idem' and value='x' }")],
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("send")
            .json::<Value>()
            .await
            .expect("json")["files"]
            .as_array()
            .map(Vec::len)
    };
    assert_eq!(search().await, Some(0));
    let get = client()
        .get(format!("{}/drive/v3/files/{id}", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(get.status(), 200, "files.get sees it at once");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(search().await, Some(1));
}
