//! Decisions through Cedar: grants permit exactly what they say, guards
//! forbid, and everything else is denied with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::NaiveDate;
use custos_model::{Principal, Role};
use custos_policy::decide::{AccessRequest, ActiveAgreement, PolicyEngine, PolicyError};
use custos_policy::{Agreement, Mode};

fn example(name: &str) -> Agreement {
    let text = std::fs::read_to_string(format!(
        "{}/../../docs/examples/agreement-{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    Agreement::from_toml(&text).unwrap()
}

fn principal(org: &str, roles: &[Role]) -> Principal {
    Principal {
        id: "p00000000000000aa".into(),
        name: "bob".into(),
        org: org.into(),
        roles: roles.to_vec(),
        created_at: "t".into(),
        created_by: "local-admin".into(),
        revoked_at: None,
    }
}

const GUARD: &str = r#"
@id("protected-subjects")
forbid (principal, action, resource) when { context.subject_protected };
"#;

fn engine() -> PolicyEngine {
    let identified = example("identified");
    let aggregate = example("aggregate");
    PolicyEngine::compile(
        &[
            ActiveAgreement {
                agreement: &identified,
                version: 2,
            },
            ActiveAgreement {
                agreement: &aggregate,
                version: 1,
            },
        ],
        Some(GUARD),
    )
    .unwrap()
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn cols(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn a_grant_permits_exactly_its_request_and_says_which() {
    let engine = engine();
    let bob = principal("TIGTA", &[Role::Requester]);
    let columns = cols(&["tin", "refund"]);
    let request = AccessRequest {
        principal: &bob,
        agreement: "tigta-refund-fraud-2026",
        dataset: "tax_returns",
        mode: Mode::Identified,
        columns: &columns,
        day: day("2026-06-01"),
        subject_protected: false,
    };
    let d = engine.decide(&request).unwrap();
    assert!(d.allowed, "{:?}", d.reasons);
    assert_eq!(d.reasons, ["agreement tigta-refund-fraud-2026 v2 grant 1"]);

    let deny = |r: AccessRequest<'_>| {
        let d = engine.decide(&r).unwrap();
        assert!(!d.allowed, "should be denied: {r:?}");
        d.reasons
    };
    let gao = principal("GAO", &[Role::Requester]);
    deny(AccessRequest {
        principal: &gao,
        ..request.clone()
    });
    let approver = principal("TIGTA", &[Role::Approver]);
    deny(AccessRequest {
        principal: &approver,
        ..request.clone()
    });
    let mut revoked = bob.clone();
    revoked.revoked_at = Some("t".into());
    deny(AccessRequest {
        principal: &revoked,
        ..request.clone()
    });
    let wider = cols(&["tin", "agi"]);
    deny(AccessRequest {
        columns: &wider,
        ..request.clone()
    });
    deny(AccessRequest {
        day: day("2031-01-01"),
        ..request.clone()
    });
    deny(AccessRequest {
        mode: Mode::Aggregate,
        ..request.clone()
    });
    deny(AccessRequest {
        dataset: "benefits",
        ..request.clone()
    });
    let reasons = deny(AccessRequest {
        agreement: "no-such-agreement",
        ..request.clone()
    });
    assert!(reasons[0].contains("deny by default"), "{reasons:?}");
    let reasons = deny(AccessRequest {
        subject_protected: true,
        ..request.clone()
    });
    assert_eq!(reasons, ["guard protected-subjects"]);
}

#[test]
fn guards_are_parsed_and_validated() {
    let a = example("aggregate");
    let active = [ActiveAgreement {
        agreement: &a,
        version: 1,
    }];
    assert!(matches!(
        PolicyEngine::compile(&active, Some("forbid (")),
        Err(PolicyError::GuardSyntax(_))
    ));
    let unknown_attribute =
        "@id(\"typo\") forbid (principal, action, resource) when { context.subjectprotected };";
    match PolicyEngine::compile(&active, Some(unknown_attribute)) {
        Err(PolicyError::Invalid { policy, .. }) => assert_eq!(policy, "guard typo"),
        other => panic!("unexpected: {other:?}"),
    }
}

#[test]
fn organisation_names_cannot_inject_policy_text() {
    let mut a = example("aggregate");
    a.parties.requester = "GAO\" || true || \"".into();
    let engine = PolicyEngine::compile(
        &[ActiveAgreement {
            agreement: &a,
            version: 1,
        }],
        None,
    )
    .unwrap();
    let other = principal("Someone Else", &[Role::Requester]);
    let columns = cols(&["state"]);
    let d = engine
        .decide(&AccessRequest {
            principal: &other,
            agreement: &a.id,
            dataset: "tax_returns",
            mode: Mode::Aggregate,
            columns: &columns,
            day: day("2026-06-01"),
            subject_protected: false,
        })
        .unwrap();
    assert!(!d.allowed);
}

#[test]
fn a_prepared_principal_decides_alike_and_only_for_itself() {
    let engine = engine();
    let bob = principal("TIGTA", &[Role::Requester]);
    let prepared = engine.principal(&bob).unwrap();
    let columns = cols(&["tin", "refund"]);
    for (mode, protected, d) in [
        (Mode::Identified, false, "2026-06-01"),
        (Mode::Identified, true, "2026-06-01"),
        (Mode::Identified, false, "2027-06-01"),
        (Mode::Aggregate, false, "2026-06-01"),
    ] {
        let request = AccessRequest {
            principal: &bob,
            agreement: "tigta-refund-fraud-2026",
            dataset: "tax_returns",
            mode,
            columns: &columns,
            day: day(d),
            subject_protected: protected,
        };
        assert_eq!(
            engine.decide(&request).unwrap(),
            engine.decide_as(&prepared, &request).unwrap()
        );
    }
    let mut eve = principal("TIGTA", &[Role::Requester]);
    eve.id = "p00000000000000ee".into();
    let request = AccessRequest {
        principal: &eve,
        agreement: "tigta-refund-fraud-2026",
        dataset: "tax_returns",
        mode: Mode::Identified,
        columns: &columns,
        day: day("2026-06-01"),
        subject_protected: false,
    };
    assert!(matches!(
        engine.decide_as(&prepared, &request),
        Err(PolicyError::Request(_))
    ));
}
