//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::alerts;
use crate::extracts;
use crate::matches;
use crate::problem::Problem;
use crate::routes;
use crate::tiles;

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custos",
        description = "A guarded gateway to sensitive records: every access under a data-sharing agreement, ledgered. Errors are RFC 9457 problem+json with a stable `type`.",
    ),
    paths(
        routes::healthz,
        tiles::checkpoint,
        tiles::witnessed_checkpoint,
        tiles::tile,
        routes::datasets,
        routes::dataset,
        routes::verify_dataset,
        routes::agreements,
        routes::agreement,
        routes::apply_agreement,
        routes::suspend_agreement,
        routes::resume_agreement,
        routes::revoke_agreement,
        routes::principals,
        routes::add_principal,
        routes::revoke_principal,
        alerts::set_facts,
        alerts::list,
        alerts::show,
        alerts::resolve,
        alerts::scan,
        routes::request_lookup,
        routes::lookup,
        routes::approve_lookup,
        routes::decline_lookup,
        routes::approval_queue,
        routes::fetch_lookup,
        routes::protect_subject,
        routes::query,
        extracts::extract,
        routes::subject_report,
        routes::agreement_report,
        matches::open,
        matches::exchange,
        matches::finish,
        matches::result,
        matches::confirm,
        matches::run,
    ),
    components(schemas(
        Problem,
        routes::ApplyAgreement,
        routes::StatusChange,
        routes::NewPrincipal,
        routes::NewLookup,
        routes::SubjectBody,
        routes::DeclineBody,
        alerts::Resolution,
        routes::NewQuery,
        extracts::NewExtract,
        matches::NewMatch,
        matches::NewMatchRun,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme the `/v1` paths use.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("custos token")
                    .build(),
            ),
        );
    }
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
