//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of every `/v1` route (utoipa), with the
//! bearer scheme and the scope each route needs. Served without authentication: it describes
//! the API and holds no data.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, emails, jobs};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "baseaim-worker",
        description = "Enqueue jobs and emails, and operate the job system. Every route takes \
            `Authorization: Bearer <token>` (`baseaim-worker tokens create --scope ...`); the \
            scope each needs is its security requirement. Errors are `{\"error\": \"...\"}`."
    ),
    paths(
        jobs::enqueue,
        emails::send,
        admin::list_jobs,
        admin::get_job,
        admin::retry_job,
        admin::cancel_job,
        admin::delete_job,
        admin::bulk,
        admin::list_bulk_actions,
        admin::get_bulk_action,
        admin::stop_bulk_action,
        admin::counts,
        admin::list_queues,
        admin::pause_queue,
        admin::resume_queue,
        admin::list_nodes,
        admin::list_schedules,
        admin::run_schedule,
        admin::replay_stripe_event,
        spec,
    ),
    components(schemas(super::ErrorBody)),
    modifiers(&BearerScheme),
    tags(
        (name = "jobs", description = "Enqueue any registered job kind"),
        (name = "emails", description = "Templated transactional emails through Resend"),
        (name = "admin", description = "Operators' operations: jobs, queues, schedules, Stripe replay"),
        (name = "meta", description = "This description"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme the routes' requirements name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `baseaim-worker tokens create`; scopes: jobs:write, \
                         jobs:write:<kind> (one kind), emails:send, uploads:write, admin:read, \
                         admin:write",
                    ))
                    .build(),
            ),
        );
    }
}

/// This API's OpenAPI description.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn spec() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
