//! `/v1/openapi.json` documents every route the router serves, and nothing it does not.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use baseaim_worker::http::api::ROUTES;

use crate::helpers::Api;

#[tokio::test]
async fn the_spec_documents_every_v1_route_with_its_scope() {
    let api = Api::new().await;
    let answer = api.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let spec = answer.body;
    // For people (and API clients' generators) to look at.
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/openapi.json");
    let _ = std::fs::write(&out, serde_json::to_string_pretty(&spec).unwrap());
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.insert((method.clone(), path.clone()));
            if path != "/v1/openapi.json" {
                let scopes = &operation["security"][0]["bearer"];
                assert!(
                    scopes.as_array().is_some_and(|s| s.len() == 1),
                    "{method} {path} names its scope: {operation}"
                );
                assert!(
                    operation["responses"]["401"].is_object(),
                    "{method} {path} documents 401"
                );
            }
        }
    }
    assert_eq!(routed, documented, "routes served vs documented");

    // Every documented route is served (a 404 or 405 here would mean it is not mounted).
    for (method, path) in &routed {
        let path = crate::helpers::concrete(path);
        let method: Method = method.to_uppercase().parse().unwrap();
        let answer = api.call(method.clone(), &path, None, None).await;
        assert!(
            matches!(answer.status, StatusCode::OK | StatusCode::UNAUTHORIZED),
            "{method} {path}: {}",
            answer.status
        );
    }
}
