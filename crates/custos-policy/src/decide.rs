//! Decisions through Cedar: active agreements compile into Cedar policies,
//! custodians add guard rules (e.g. `forbid` on protected subjects), and
//! every request is decided with its reasons (which agreement, which rule).
//!
//! Deny by default: only an active agreement's grant permits, and only for
//! a requester of the agreement's requesting organisation, the grant's
//! dataset and mode, columns within the grant, and a day inside the
//! validity window. Each agreement's grants are kept in their own policy set
//! (plus the guards), so a decision evaluates one agreement's policies, not
//! every agreement's.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode,
    Validator,
};
use chrono::{Datelike, NaiveDate};
use custos_model::{Principal, Role};

use crate::agreement::{Agreement, Mode};

/// The Cedar schema every policy (compiled or guard) is validated against.
pub const CEDAR_SCHEMA: &str = r#"
entity Org;
entity Principal in [Org] { roles: Set<String> };
entity Dataset;
action "aggregate", "pseudonymous", "identified", "match" appliesTo {
    principal: [Principal],
    resource: [Dataset],
    context: {
        agreement: String,
        day: Long,
        columns: Set<String>,
        subject_protected: Bool,
    }
};
"#;

/// Errors building the engine or deciding. Never carries request values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The guard rules do not parse.
    #[error("guard rules do not parse: {0}")]
    GuardSyntax(String),
    /// A policy fails validation against the Cedar schema.
    #[error("policy `{policy}` is invalid: {message}")]
    Invalid {
        /// The policy's id.
        policy: String,
        /// What the validator said.
        message: String,
    },
    /// Cedar could not build the request or entities.
    #[error("cannot evaluate the request: {0}")]
    Request(String),
}

/// An agreement version in force, as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct ActiveAgreement<'a> {
    /// The agreement.
    pub agreement: &'a Agreement,
    /// Its version.
    pub version: u32,
}

/// What a principal asks to do.
#[derive(Debug, Clone)]
pub struct AccessRequest<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// Under which agreement.
    pub agreement: &'a str,
    /// On which dataset.
    pub dataset: &'a str,
    /// In which mode.
    pub mode: Mode,
    /// Which columns.
    pub columns: &'a [String],
    /// On which day (the validity window is checked against it).
    pub day: NaiveDate,
    /// Whether the subject (if any) is flagged as protected by the custodian.
    pub subject_protected: bool,
}

/// A decision with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allowed: bool,
    /// Which policies decided: `agreement ID vN grant K` or `guard NAME`,
    /// or why nothing did.
    pub reasons: Vec<String>,
}

/// Entity type names, parsed once (parsing runs Cedar's parser).
#[derive(Debug)]
struct TypeNames {
    org: EntityTypeName,
    principal: EntityTypeName,
    dataset: EntityTypeName,
    action: EntityTypeName,
}

impl TypeNames {
    fn new() -> Result<Self, PolicyError> {
        let parse =
            |t: &str| EntityTypeName::from_str(t).map_err(|e| PolicyError::Request(e.to_string()));
        Ok(Self {
            org: parse("Org")?,
            principal: parse("Principal")?,
            dataset: parse("Dataset")?,
            action: parse("Action")?,
        })
    }
}

/// The Cedar schema, parsed once per process.
fn schema() -> Result<Schema, PolicyError> {
    static SCHEMA: OnceLock<Result<Schema, PolicyError>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Schema::from_cedarschema_str(CEDAR_SCHEMA)
                .map(|(schema, _)| schema)
                .map_err(|e| PolicyError::Invalid {
                    policy: "schema".into(),
                    message: e.to_string(),
                })
        })
        .clone()
}

/// A principal as Cedar sees it: its entity and organisation, built once.
#[derive(Debug, Clone)]
pub struct CedarPrincipal {
    id: String,
    uid: EntityUid,
    entities: Entities,
}

/// The compiled policies: one set per active agreement, guards in each.
#[derive(Debug)]
pub struct PolicyEngine {
    schema: Schema,
    types: TypeNames,
    by_agreement: HashMap<String, PolicySet>,
    authorizer: Authorizer,
}

/// Escapes text for a Cedar string literal.
fn esc(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn day_number(day: NaiveDate) -> i64 {
    i64::from(day.year()) * 10_000 + i64::from(day.month()) * 100 + i64::from(day.day())
}

fn grant_policy(a: &Agreement, version: u32, index: usize) -> String {
    let g = &a.grants[index];
    let columns: Vec<String> = g
        .columns
        .iter()
        .map(|c| format!("\"{}\"", esc(c)))
        .collect();
    format!(
        "permit (principal in Org::\"{org}\", action == Action::\"{mode}\", resource == Dataset::\"{dataset}\")\n\
         when {{\n  principal.roles.contains(\"requester\") &&\n  context.agreement == \"{id}\" &&\n  \
         context.day >= {from} && context.day <= {until} &&\n  [{columns}].containsAll(context.columns)\n}};",
        org = esc(&a.parties.requester),
        mode = g.mode.as_str(),
        dataset = esc(&g.dataset),
        id = esc(&a.id),
        from = day_number(a.valid_from),
        until = day_number(a.valid_until),
        columns = columns.join(", "),
    ) + &format!("\n// agreement {} v{version} grant {}\n", a.id, index + 1)
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

impl PolicyEngine {
    /// Compiles `agreements` (only those in force: suspended and revoked
    /// ones must not be passed) and the custodian's `guards` (Cedar text,
    /// typically `forbid` rules), validating everything against
    /// [`CEDAR_SCHEMA`].
    pub fn compile(
        agreements: &[ActiveAgreement<'_>],
        guards: Option<&str>,
    ) -> Result<Self, PolicyError> {
        let schema = schema()?;
        let validator = Validator::new(schema.clone());
        let guard_set = match guards {
            Some(text) => {
                let parsed = PolicySet::from_str(text)
                    .map_err(|e| PolicyError::GuardSyntax(e.to_string()))?;
                let mut renamed = PolicySet::new();
                for (i, p) in parsed.policies().enumerate() {
                    let name = p
                        .annotation("id")
                        .map_or_else(|| format!("guard {}", i + 1), |n| format!("guard {n}"));
                    renamed
                        .add(p.new_id(PolicyId::new(name)))
                        .map_err(|e| PolicyError::GuardSyntax(e.to_string()))?;
                }
                check(&validator, &renamed)?;
                renamed
            }
            None => PolicySet::new(),
        };
        let mut by_agreement = HashMap::new();
        for active in agreements {
            let a = active.agreement;
            let mut set = guard_set.clone();
            for index in 0..a.grants.len() {
                let id = PolicyId::new(format!(
                    "agreement {} v{} grant {}",
                    a.id,
                    active.version,
                    index + 1
                ));
                let policy =
                    Policy::parse(Some(id.clone()), grant_policy(a, active.version, index))
                        .map_err(|e| PolicyError::Invalid {
                            policy: id.to_string(),
                            message: e.to_string(),
                        })?;
                set.add(policy).map_err(|e| PolicyError::Invalid {
                    policy: id.to_string(),
                    message: e.to_string(),
                })?;
            }
            check(&validator, &set)?;
            by_agreement.insert(a.id.clone(), set);
        }
        Ok(Self {
            schema,
            types: TypeNames::new()?,
            by_agreement,
            authorizer: Authorizer::new(),
        })
    }

    /// Number of agreements compiled.
    pub fn agreements(&self) -> usize {
        self.by_agreement.len()
    }

    /// Decides a request. Denied when no agreement grant permits it or a
    /// guard forbids it; the reasons say which.
    pub fn decide(&self, req: &AccessRequest<'_>) -> Result<Decision, PolicyError> {
        let principal = self.principal(req.principal)?;
        self.decide_as(&principal, req)
    }

    /// The principal as Cedar sees it (entity with roles, in its org).
    /// Build it once per principal and pass it to [`PolicyEngine::decide_as`]
    /// for every decision about that principal.
    pub fn principal(&self, p: &Principal) -> Result<CedarPrincipal, PolicyError> {
        let org = uid(&self.types.org, &p.org);
        let principal_uid = uid(&self.types.principal, &p.id);
        // A revoked principal keeps no role, so no grant can match it.
        let roles: Vec<RestrictedExpression> = p
            .roles
            .iter()
            .filter(|_| p.revoked_at.is_none())
            .map(|r: &Role| RestrictedExpression::new_string(r.as_str().to_owned()))
            .collect();
        let entity = Entity::new(
            principal_uid.clone(),
            HashMap::from([("roles".to_owned(), RestrictedExpression::new_set(roles))]),
            HashSet::from([org.clone()]),
        )
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let entities = Entities::from_entities([entity, Entity::with_uid(org)], Some(&self.schema))
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        Ok(CedarPrincipal {
            id: p.id.clone(),
            uid: principal_uid,
            entities,
        })
    }

    /// Decides a request for a principal prepared with
    /// [`PolicyEngine::principal`] (which must be `req.principal`).
    pub fn decide_as(
        &self,
        principal: &CedarPrincipal,
        req: &AccessRequest<'_>,
    ) -> Result<Decision, PolicyError> {
        if principal.id != req.principal.id {
            return Err(PolicyError::Request(
                "the prepared principal is not the requester".into(),
            ));
        }
        let Some(policies) = self.by_agreement.get(req.agreement) else {
            return Ok(Decision {
                allowed: false,
                reasons: vec!["no agreement in force with that id (deny by default)".into()],
            });
        };
        let resource = uid(&self.types.dataset, req.dataset);
        let columns = req
            .columns
            .iter()
            .map(|c| RestrictedExpression::new_string(c.clone()));
        let context = Context::from_pairs([
            (
                "agreement".to_owned(),
                RestrictedExpression::new_string(req.agreement.to_owned()),
            ),
            (
                "day".to_owned(),
                RestrictedExpression::new_long(day_number(req.day)),
            ),
            ("columns".to_owned(), RestrictedExpression::new_set(columns)),
            (
                "subject_protected".to_owned(),
                RestrictedExpression::new_bool(req.subject_protected),
            ),
        ])
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let action = uid(&self.types.action, req.mode.as_str());
        let request = Request::new(
            principal.uid.clone(),
            action,
            resource,
            context,
            Some(&self.schema),
        )
        .map_err(|e| PolicyError::Request(e.to_string()))?;
        let response = self
            .authorizer
            .is_authorized(&request, policies, &principal.entities);
        let mut reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        reasons.sort();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let allowed = response.decision() == CedarDecision::Allow && errors.is_empty();
        if !allowed && reasons.is_empty() {
            reasons.push(if errors.is_empty() {
                "no grant of the agreement permits this request (deny by default)".into()
            } else {
                format!("policy evaluation failed: {}", errors.join("; "))
            });
        }
        Ok(Decision { allowed, reasons })
    }
}

fn check(validator: &Validator, set: &PolicySet) -> Result<(), PolicyError> {
    let result = validator.validate(set, ValidationMode::Strict);
    if let Some(e) = result.validation_errors().next() {
        return Err(PolicyError::Invalid {
            policy: e.policy_id().to_string(),
            message: e.to_string(),
        });
    }
    Ok(())
}
