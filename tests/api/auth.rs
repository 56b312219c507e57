//! Every `/v1` route (and `/metrics`) wants a valid bearer token with the right scope.

use axum::http::{Method, StatusCode, header};
use baseaim_worker::http::api::ROUTES;

use crate::helpers::{Api, concrete};

/// The routes that need a token, with the method parsed, plus `/metrics`.
fn protected() -> Vec<(Method, String, &'static str)> {
    let mut routes: Vec<(Method, String, &'static str)> = ROUTES
        .iter()
        .filter(|(_, path)| *path != "/v1/openapi.json")
        .map(|(method, path)| {
            let method: Method = method.to_uppercase().parse().unwrap();
            let scope = match *path {
                "/v1/jobs" => "jobs:write",
                "/v1/emails" => "emails:send",
                _ if method == Method::GET => "admin:read",
                _ => "admin:write",
            };
            (method, concrete(path), scope)
        })
        .collect();
    routes.push((Method::GET, "/metrics".into(), "admin:read"));
    routes
}

#[tokio::test]
async fn every_route_answers_a_bare_401_without_a_valid_token() {
    let api = Api::new().await;
    let revoked = api.token(&["admin:read", "admin:write"]).await;
    let id = baseaim_worker::auth::tokens::list(&api.db.pool)
        .await
        .unwrap()[0]
        .id;
    assert!(
        baseaim_worker::auth::tokens::revoke(&api.db.pool, id)
            .await
            .unwrap()
    );
    let wrong = format!("{}x", &revoked[..revoked.len() - 1]);
    assert!(protected().len() >= 16);
    for (method, path, _) in protected() {
        for token in [
            None,
            Some("baw_nope"),
            Some(wrong.as_str()),
            Some(revoked.as_str()),
        ] {
            let answer = api
                .call(method.clone(), &path, token, Some(serde_json::json!({})))
                .await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}: {}",
                answer.text
            );
            assert_eq!(answer.text, r#"{"error":"authentication required"}"#);
            assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
    assert_eq!(api.job_count().await, 0);
}

#[tokio::test]
async fn a_token_without_the_scope_is_403_naming_it_before_the_body_is_read() {
    let api = Api::new().await;
    let uploads_only = api.token(&["uploads:write"]).await;
    let reader = api.token(&["admin:read"]).await;
    for (method, path, scope) in protected() {
        // A body that would be refused (422) if it were read: the scope comes first.
        let answer = api
            .call(
                method.clone(),
                &path,
                Some(&uploads_only),
                Some(serde_json::json!({"nonsense": true})),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            answer.text
        );
        assert_eq!(
            answer.body["error"],
            format!("this token lacks the `{scope}` scope"),
            "{method} {path}"
        );
        if scope == "admin:write" {
            let answer = api.call(method.clone(), &path, Some(&reader), None).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path}");
            assert!(answer.text.contains("admin:write"), "{}", answer.text);
        }
    }
    assert_eq!(api.job_count().await, 0);
    let paused: i64 = sqlx::query_scalar("select count(*) from queues")
        .fetch_one(&api.db.pool)
        .await
        .unwrap();
    assert_eq!(paused, 0, "a refused pause changed nothing");
}
