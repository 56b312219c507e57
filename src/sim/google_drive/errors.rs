//! Drive's error bodies, and the fault responder that dresses injected faults in them (in the
//! token endpoint's OAuth shape on `/token`).

use super::*;

/// Drive's error body. `location` is `(locationType, location)`.
pub(super) fn drive_error(
    status: StatusCode,
    domain: &str,
    reason: &str,
    message: &str,
    location: Option<(&str, &str)>,
) -> Response {
    let mut item = json!({"domain": domain, "reason": reason, "message": message});
    if let Some((kind, at)) = location {
        item["locationType"] = json!(kind);
        item["location"] = json!(at);
    }
    let body = json!({"error": {"code": status.as_u16(), "message": message, "errors": [item]}});
    (status, axum::Json(body)).into_response()
}

pub(super) fn rate_limited(kind: DriveRateLimit) -> Response {
    match kind {
        DriveRateLimit::UserRateLimit403 => drive_error(
            StatusCode::FORBIDDEN,
            "usageLimits",
            "userRateLimitExceeded",
            "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota. You may consider re-evaluating expected per-user traffic to the API and adjust project quota limits accordingly.",
            None,
        ),
        DriveRateLimit::RateLimit403 => drive_error(
            StatusCode::FORBIDDEN,
            "usageLimits",
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            None,
        ),
        DriveRateLimit::TooMany429 => drive_error(
            StatusCode::TOO_MANY_REQUESTS,
            "usageLimits",
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            None,
        ),
    }
}

pub(super) fn bad_request(message: &str, location: Option<(&str, &str)>) -> Response {
    drive_error(
        StatusCode::BAD_REQUEST,
        "global",
        "badRequest",
        message,
        location,
    )
}

pub(super) fn invalid_param(name: &str) -> Response {
    drive_error(
        StatusCode::BAD_REQUEST,
        "global",
        "invalid",
        "Invalid Value",
        Some(("parameter", name)),
    )
}

pub(super) fn file_not_found(id: &str) -> Response {
    drive_error(
        StatusCode::NOT_FOUND,
        "global",
        "notFound",
        &format!("File not found: {id}."),
        Some(("parameter", "fileId")),
    )
}

pub(super) struct DriveFaults;

impl FaultResponder for DriveFaults {
    fn server_error(&self, status: StatusCode) -> Response {
        let reason = if status == StatusCode::SERVICE_UNAVAILABLE {
            "backendError"
        } else {
            "internalError"
        };
        drive_error(status, "global", reason, "Backend Error", None)
    }

    fn too_many_requests(&self) -> Response {
        rate_limited(DriveRateLimit::TooMany429)
    }

    fn throttled(&self) -> Response {
        rate_limited(DriveRateLimit::UserRateLimit403)
    }

    fn for_path(&self, path: &str) -> Option<&dyn FaultResponder> {
        (path == ROUTES[0].1).then_some(&TokenFaults as &dyn FaultResponder)
    }
}

/// Faults on the token endpoint (oauth2.googleapis.com, §D.1 \[I\]): OAuth error bodies
/// `{"error","error_description"}`, never Drive's; overload is a 429 or a 5xx.
struct TokenFaults;

impl FaultResponder for TokenFaults {
    fn server_error(&self, status: StatusCode) -> Response {
        let error = if status == StatusCode::SERVICE_UNAVAILABLE {
            "temporarily_unavailable"
        } else {
            "server_error"
        };
        oauth_error_status(status, error, "Backend Error")
    }

    fn too_many_requests(&self) -> Response {
        oauth_error_status(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Rate Limit Exceeded",
        )
    }

    /// The token endpoint has no throttling error of its own: a 429.
    fn throttled(&self) -> Response {
        self.too_many_requests()
    }
}
