//! The HTTP API in process (the router over a real home): every JSON
//! answer a caller gets is valid against the response schema the server's
//! own `/openapi.json` declares for that operation and status, and the
//! statuses of the error kinds are the documented ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use custos_broker::{Custos, MasterKeySource, NoProgress};
use custos_model::Role;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Api {
    router: Router,
    doc: Value,
    admin: String,
    gina: String,
    olga: String,
    _home: tempfile::TempDir,
}

/// The aggregate example, in force until 2099.
fn aggregate_agreement() -> String {
    include_str!("../../../docs/examples/agreement-aggregate.toml")
        .lines()
        .map(|l| {
            if l.starts_with("valid_from =") {
                "valid_from = 2026-01-01".to_owned()
            } else if l.starts_with("valid_until =") {
                "valid_until = 2099-12-31".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Api {
    async fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("synthetic");
        let generated = custos_synth::generate(
            &data,
            custos_synth::SynthOptions {
                tax_rows: 600,
                seed: 7,
            },
            &|_| {},
        )
        .unwrap();
        let (custos, _) = Custos::init(
            &home.path().join("home"),
            MasterKeySource::GenerateFile,
            None,
        )
        .await
        .unwrap();
        let bootstrap = custos.actor(None).await.unwrap();
        let (_, admin) = custos
            .add_principal(&bootstrap, "alice", "IRS", &[Role::Admin])
            .await
            .unwrap();
        let alice = custos.authenticate(admin.reveal()).await.unwrap();
        let tax = &generated.datasets[0];
        custos
            .ingest(
                &alice,
                "tax_returns",
                &tax.schema,
                &tax.csv,
                Arc::new(NoProgress),
            )
            .await
            .unwrap();
        custos
            .apply_agreement(&alice, &aggregate_agreement())
            .await
            .unwrap();
        let (_, gina) = custos
            .add_principal(&alice, "gina", "GAO", &[Role::Requester])
            .await
            .unwrap();
        let (_, olga) = custos
            .add_principal(&alice, "olga", "IRS", &[Role::Overseer])
            .await
            .unwrap();
        let config = custos_server::ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        let router = custos_server::router(Arc::new(custos), &config);
        let mut api = Self {
            router,
            doc: Value::Null,
            admin: admin.reveal().to_owned(),
            gina: gina.reveal().to_owned(),
            olga: olga.reveal().to_owned(),
            _home: home,
        };
        let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
        assert_eq!(status, StatusCode::OK);
        api.doc = doc;
        api
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let request = match body {
            Some(b) => request
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Calls `template` (with `path` filled in) and checks the answer
    /// against the declared schema of that operation and status.
    async fn checked(
        &self,
        method: &str,
        template: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, answer) = self.call(method, path, Some(token), body).await;
        let operation = &self.doc["paths"][template][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let declared = &operation["responses"][status.as_str()];
        assert!(
            declared.is_object(),
            "{method} {path} answered {status}, which its documentation does not list: {answer}"
        );
        let content = &declared["content"];
        let schema = content
            .get("application/json")
            .or_else(|| content.get("application/problem+json"))
            .map(|c| c["schema"].clone())
            .unwrap_or_else(|| panic!("{method} {template} {status}: no JSON schema declared"));
        let mut rooted = schema;
        rooted["components"] = self.doc["components"].clone();
        if let Err(e) = jsonschema::validate(&rooted, &answer) {
            panic!(
                "{method} {path} ({status}): the answer does not match its schema: {e}\n{answer:#}"
            );
        }
        // The control: the schema says something (a bare number, or the
        // answer with a field of the wrong type, does not pass).
        assert!(
            jsonschema::validate(&rooted, &json!(42)).is_err(),
            "{method} {template} {status}: the declared schema accepts anything"
        );
        if let Some(object) = answer.as_object()
            && let Some((key, _)) = object.iter().find(|(_, v)| v.is_string())
        {
            let mut wrong = answer.clone();
            wrong[key] = json!({ "not": "a string" });
            assert!(
                jsonschema::validate(&rooted, &wrong).is_err(),
                "{method} {template} {status}: field `{key}` is not typed in the schema"
            );
        }
        (status, answer)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_answer_matches_its_declared_schema() {
    let api = Api::new().await;
    let (admin, gina, olga) = (api.admin.clone(), api.gina.clone(), api.olga.clone());
    let (status, health) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let id = "gao-refund-statistics";
    for (method, template, path, token, body) in [
        (
            "GET",
            "/v1/datasets",
            "/v1/datasets".to_owned(),
            &olga,
            None,
        ),
        (
            "GET",
            "/v1/datasets",
            "/v1/datasets".to_owned(),
            &gina,
            None,
        ),
        (
            "GET",
            "/v1/datasets/{name}",
            "/v1/datasets/tax_returns".to_owned(),
            &gina,
            None,
        ),
        (
            "GET",
            "/v1/agreements",
            "/v1/agreements".to_owned(),
            &gina,
            None,
        ),
        (
            "GET",
            "/v1/agreements/{id}",
            format!("/v1/agreements/{id}"),
            &olga,
            None,
        ),
        (
            "GET",
            "/v1/principals",
            "/v1/principals".to_owned(),
            &admin,
            None,
        ),
        (
            "POST",
            "/v1/queries",
            "/v1/queries".to_owned(),
            &gina,
            Some(json!({
                "agreement": id,
                "sql": "SELECT state, COUNT(*), AVG(refund), MEDIAN(wages) FROM tax_returns GROUP BY state"
            })),
        ),
        (
            "GET",
            "/v1/reports/agreements/{id}",
            format!("/v1/reports/agreements/{id}"),
            &olga,
            None,
        ),
        (
            "POST",
            "/v1/reports/subject",
            "/v1/reports/subject".to_owned(),
            &olga,
            Some(json!({ "subject": "666-01-0001" })),
        ),
        (
            "POST",
            "/v1/principals",
            "/v1/principals".to_owned(),
            &admin,
            Some(json!({ "name": "adam", "org": "IRS", "roles": ["approver"] })),
        ),
        (
            "POST",
            "/v1/principals/{name}/revoke",
            "/v1/principals/adam/revoke".to_owned(),
            &admin,
            None,
        ),
        (
            "POST",
            "/v1/agreements/{id}/suspend",
            format!("/v1/agreements/{id}/suspend"),
            &admin,
            Some(json!({ "reason": "audit" })),
        ),
        (
            "POST",
            "/v1/agreements/{id}/resume",
            format!("/v1/agreements/{id}/resume"),
            &admin,
            Some(json!({})),
        ),
    ] {
        let (status, _) = api.checked(method, template, &path, token, body).await;
        assert!(status.is_success(), "{method} {path}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_their_documented_status_and_shape() {
    let api = Api::new().await;
    let (admin, gina) = (api.admin.clone(), api.gina.clone());
    // Not found: an unknown dataset, an unknown agreement for an admin.
    let (status, problem) = api
        .checked(
            "GET",
            "/v1/datasets/{name}",
            "/v1/datasets/nope",
            &gina,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["type"], "urn:custos:problem:not-found");
    let (status, problem) = api
        .call("POST", "/v1/principals/nobody/revoke", Some(&admin), None)
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("urn:custos:problem:not-found"))
    );
    // Conflict: a principal that exists, a state change that is not allowed.
    let body = json!({ "name": "gina", "org": "GAO", "roles": ["requester"] });
    let (status, problem) = api
        .call("POST", "/v1/principals", Some(&admin), Some(body))
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::CONFLICT, Some("urn:custos:problem:conflict"))
    );
    let (status, problem) = api
        .call(
            "POST",
            "/v1/agreements/gao-refund-statistics/resume",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::CONFLICT, Some("urn:custos:problem:conflict"))
    );
    // Invalid SQL is the caller's (400), a denial is 403, no token is 401.
    let (status, _) = api
        .call(
            "POST",
            "/v1/queries",
            Some(&gina),
            Some(
                json!({ "agreement": "gao-refund-statistics", "sql": "SELECT * FROM tax_returns" }),
            ),
        )
        .await;
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::FORBIDDEN,
        "{status}"
    );
    let (status, _) = api.call("GET", "/v1/principals", Some(&gina), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call("GET", "/v1/datasets", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The problem+json bodies of the common refusals, as a client sees them
/// (a snapshot: a changed type, title, status or wording shows in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_bodies_are_stable() {
    let api = Api::new().await;
    let (admin, gina) = (api.admin.clone(), api.gina.clone());
    let mut bodies = Vec::new();
    for (method, path, token, body) in [
        ("GET", "/v1/datasets", None, None),
        (
            "GET",
            "/v1/datasets",
            Some(&"custos_nonsense".to_owned()),
            None,
        ),
        ("GET", "/v1/datasets/nope", Some(&gina), None),
        ("GET", "/v1/principals", Some(&gina), None),
        (
            "POST",
            "/v1/principals",
            Some(&admin),
            Some(json!({ "name": "gina", "org": "GAO", "roles": ["requester"] })),
        ),
        (
            "POST",
            "/v1/agreements/gao-refund-statistics/resume",
            Some(&admin),
            Some(json!({})),
        ),
        (
            "POST",
            "/v1/queries",
            Some(&gina),
            Some(
                json!({ "agreement": "gao-refund-statistics", "sql": "SELECT name FROM tax_returns" }),
            ),
        ),
        (
            "POST",
            "/v1/queries",
            Some(&gina),
            Some(json!({ "agreement": "gao-refund-statistics", "sql": 7 })),
        ),
        ("GET", "/v1/no-such-route", Some(&gina), None),
    ] {
        let (status, problem) = api
            .call(method, path, token.map(String::as_str), body)
            .await;
        bodies.push(json!({ "request": format!("{method} {path}"), "status": status.as_u16(), "problem": problem }));
    }
    insta::assert_json_snapshot!(bodies);
}

/// The public checkpoint's size (line 2 of the signed note).
async fn ledger_size(api: &Api) -> u64 {
    let request = Request::builder()
        .uri("/checkpoint")
        .body(Body::empty())
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    String::from_utf8_lossy(&bytes)
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// A refused read of a match result is a denial like any other: it is in
/// the public ledger (a requester probing job ids leaves a trace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_match_read_is_ledgered() {
    let api = Api::new().await;
    // Checkpoints are published at least once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let before = ledger_size(&api).await;
    let (status, _) = api
        .call(
            "GET",
            "/v1/matches/m_0123456789abcdef0123456789abcdef",
            Some(&api.gina),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(ledger_size(&api).await, before + 1);
}
