//! Where requester and overseer commands run: on the local home (opening
//! its ledger) or, with `--server URL`, through a Custos server's HTTP API.
//! Both give the same typed answers, so each command prints one way.

use std::path::Path;
use std::time::Duration;

use custos_broker::DatasetSummary;
use custos_broker::MatchJob;
use custos_broker::{
    Actor, AggregateAnswer, AgreementReport, AgreementStatus, Custos, ExtractFormat, ExtractReport,
    ExtractRequest, LookupDetails, LookupRequest, LookupTicket, MatchReport, MatchRequest,
    Released, SubjectReport,
};
use custos_broker::{AgreementState, AgreementVersion};
use custos_model::{Principal, Role};
use custos_policy::Agreement;
use custos_server::HttpPeer;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{open_custos, token_from_env};

/// A local home with its acting principal, or a server.
#[derive(Debug)]
pub enum Gateway {
    /// The home in `--home`, acting as `CUSTOS_TOKEN`'s principal.
    Local {
        /// The open home and ledger.
        custos: Box<Custos>,
        /// Who acts.
        actor: Actor,
    },
    /// A server at a URL, sent `CUSTOS_TOKEN` as a bearer token.
    Remote(Client),
}

impl Gateway {
    /// Opens the home, or prepares requests to `server` if given.
    pub async fn connect(home: &Path, server: Option<&str>) -> anyhow::Result<Self> {
        let token = token_from_env();
        if let Some(url) = server {
            return Ok(Self::Remote(Client::new(url, token)?));
        }
        let custos = open_custos(home).await?;
        match custos.actor(token.as_deref().map(String::as_str)).await {
            Ok(actor) => Ok(Self::Local {
                custos: Box::new(custos),
                actor,
            }),
            Err(e) => {
                custos.close()?;
                Err(e.into())
            }
        }
    }

    /// Closes the local ledger (nothing to do for a server, which detects
    /// on its own). Locally, the unusual-browsing rules first run on the
    /// entries this command (or any earlier one) added, after its answer
    /// was printed: detection never delays a release. A failed pass is
    /// reported and retried by the next command: its cursor did not move.
    pub async fn close(self) -> anyhow::Result<()> {
        if let Self::Local { custos, .. } = self {
            if let Err(e) = custos.detect_pending().await {
                eprintln!(
                    "warning: unusual-browsing detection did not run: {e}; the next command or `custos alerts scan` will catch up"
                );
            }
            (*custos).close()?;
        }
        Ok(())
    }

    /// `custos extract`: locally the broker moves the file to `out`; over
    /// HTTP the server answers the file, written here to `out` (never over
    /// an existing file).
    pub async fn extract(&self, req: ExtractRequest<'_>) -> anyhow::Result<ExtractReport> {
        match self {
            Self::Local { custos, actor } => Ok(custos.extract(actor, req).await?),
            Self::Remote(c) => {
                let format = match req.format {
                    ExtractFormat::Csv => "csv",
                    ExtractFormat::Parquet => "parquet",
                };
                if req.out.exists() {
                    anyhow::bail!("`{}` exists already; choose a new file", req.out.display());
                }
                let (bytes, report) = c
                    .post_file(
                        "/v1/extracts",
                        &json!({
                            "agreement": req.agreement,
                            "dataset": req.dataset,
                            "where": req.filter,
                            "format": format,
                        }),
                        "x-custos-extract",
                    )
                    .await?;
                let mut report: Value = serde_json::from_str(&report)
                    .map_err(|e| anyhow::anyhow!("the extract's report is unreadable: {e}"))?;
                report["path"] = json!(req.out);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(req.out)
                    .map_err(|e| anyhow::anyhow!("`{}`: {e}", req.out.display()))?;
                std::io::Write::write_all(&mut file, &bytes)?;
                file.sync_all()?;
                Ok(serde_json::from_value(report)?)
            }
        }
    }

    /// `custos query`.
    pub async fn query_aggregate(
        &self,
        agreement: &str,
        sql: &str,
        spend: Option<f64>,
    ) -> anyhow::Result<AggregateAnswer> {
        match self {
            Self::Local { custos, actor } => {
                Ok(custos.query_aggregate(actor, agreement, sql, spend).await?)
            }
            Self::Remote(c) => {
                c.post(
                    "/v1/queries",
                    &json!({ "agreement": agreement, "sql": sql, "spend": spend }),
                )
                .await
            }
        }
    }

    /// `custos lookup`.
    pub async fn request_lookup(&self, req: LookupRequest<'_>) -> anyhow::Result<LookupTicket> {
        match self {
            Self::Local { custos, actor } => Ok(custos.request_lookup(actor, req).await?),
            Self::Remote(c) => {
                c.post(
                    "/v1/lookups",
                    &json!({
                        "agreement": req.agreement,
                        "dataset": req.dataset,
                        "subject": req.subject,
                        "justification": req.justification,
                        "columns": req.columns,
                    }),
                )
                .await
            }
        }
    }

    /// `custos match`: runs the job here (local home) or has the server run
    /// it; either way the requesting side's Custos talks to the peer.
    pub async fn run_match(
        &self,
        req: MatchRequest<'_>,
        peer: &str,
        peer_token: Zeroizing<String>,
    ) -> anyhow::Result<MatchReport> {
        match self {
            Self::Local { custos, actor } => {
                let peer = HttpPeer::new(peer, peer_token).map_err(anyhow::Error::msg)?;
                Ok(custos.run_match(actor, req, &peer).await?)
            }
            Self::Remote(c) => {
                c.post_long(
                    "/v1/match-runs",
                    &json!({
                        "agreement": req.agreement,
                        "dataset": req.dataset,
                        "key": req.key,
                        "peer": peer,
                        "peer_token": peer_token.as_str(),
                    }),
                )
                .await
            }
        }
    }

    /// `custos match show`.
    pub async fn match_result(&self, job: &str) -> anyhow::Result<(MatchJob, Vec<String>)> {
        match self {
            Self::Local { custos, actor } => Ok(custos.match_result(actor, job).await?),
            Self::Remote(c) => {
                #[derive(Deserialize)]
                struct Answer {
                    job: MatchJob,
                    tokens: Vec<String>,
                }
                let a: Answer = c.get(&format!("/v1/matches/{}", segment(job)?)).await?;
                Ok((a.job, a.tokens))
            }
        }
    }

    /// `custos match confirm`.
    pub async fn confirm_match(&self, job: &str) -> anyhow::Result<MatchJob> {
        match self {
            Self::Local { custos, actor } => Ok(custos.confirm_match(actor, job).await?),
            Self::Remote(c) => {
                #[derive(Deserialize)]
                struct Answer {
                    job: MatchJob,
                }
                let a: Answer = c
                    .post(
                        &format!("/v1/matches/{}/confirm", segment(job)?),
                        &json!({}),
                    )
                    .await?;
                Ok(a.job)
            }
        }
    }

    /// `custos lookup show`.
    pub async fn lookup_details(&self, id: &str) -> anyhow::Result<LookupDetails> {
        match self {
            Self::Local { custos, actor } => Ok(custos.lookup_details(actor, id).await?),
            Self::Remote(c) => c.get(&format!("/v1/lookups/{}", segment(id)?)).await,
        }
    }

    /// `custos approve`.
    pub async fn approve_lookup(&self, id: &str) -> anyhow::Result<LookupTicket> {
        match self {
            Self::Local { custos, actor } => Ok(custos.approve_lookup(actor, id).await?),
            Self::Remote(c) => {
                c.post(
                    &format!("/v1/lookups/{}/approvals", segment(id)?),
                    &json!({}),
                )
                .await
            }
        }
    }

    /// `custos lookup decline`.
    pub async fn decline_lookup(&self, id: &str, reason: &str) -> anyhow::Result<LookupTicket> {
        match self {
            Self::Local { custos, actor } => Ok(custos.decline_lookup(actor, id, reason).await?),
            Self::Remote(c) => {
                c.post(
                    &format!("/v1/lookups/{}/decline", segment(id)?),
                    &json!({ "reason": reason }),
                )
                .await
            }
        }
    }

    /// `custos lookup queue`.
    pub async fn approval_queue(&self) -> anyhow::Result<Vec<custos_broker::QueueItem>> {
        match self {
            Self::Local { custos, actor } => Ok(custos.approval_queue(actor).await?),
            Self::Remote(c) => c.get("/v1/approvals/queue").await,
        }
    }

    /// `custos lookup fetch`.
    pub async fn fetch_lookup(&self, id: &str) -> anyhow::Result<Released> {
        match self {
            Self::Local { custos, actor } => Ok(custos.fetch_lookup(actor, id).await?),
            Self::Remote(c) => {
                c.post(&format!("/v1/lookups/{}/fetch", segment(id)?), &json!({}))
                    .await
            }
        }
    }

    /// `custos subject protect`.
    pub async fn protect_subject(&self, subject: &str) -> anyhow::Result<()> {
        match self {
            Self::Local { custos, actor } => Ok(custos.protect_subject(actor, subject).await?),
            Self::Remote(c) => {
                let _: Value = c
                    .post("/v1/subjects/protect", &json!({ "subject": subject }))
                    .await?;
                Ok(())
            }
        }
    }

    /// `custos report subject`.
    pub async fn subject_report(&self, subject: &str) -> anyhow::Result<SubjectReport> {
        match self {
            Self::Local { custos, actor } => Ok(custos.subject_report(actor, subject).await?),
            Self::Remote(c) => {
                c.post("/v1/reports/subject", &json!({ "subject": subject }))
                    .await
            }
        }
    }

    /// `custos report agreement`.
    pub async fn agreement_report(&self, id: &str) -> anyhow::Result<AgreementReport> {
        match self {
            Self::Local { custos, actor } => Ok(custos.agreement_report(actor, id).await?),
            Self::Remote(c) => {
                c.get(&format!("/v1/reports/agreements/{}", segment(id)?))
                    .await
            }
        }
    }
}

impl Gateway {
    /// `custos agreement apply`: the stored version and the parsed agreement.
    pub async fn apply_agreement(
        &self,
        text: &str,
    ) -> anyhow::Result<(AgreementVersion, Agreement)> {
        match self {
            Self::Local { custos, actor } => Ok(custos.apply_agreement(actor, text).await?),
            Self::Remote(c) => {
                #[derive(Deserialize)]
                struct Applied {
                    version: AgreementVersion,
                    agreement: Agreement,
                }
                let a: Applied = c.post("/v1/agreements", &json!({ "toml": text })).await?;
                Ok((a.version, a.agreement))
            }
        }
    }

    /// `custos dataset list`: the datasets this principal may see.
    pub async fn datasets(&self) -> anyhow::Result<Vec<DatasetSummary>> {
        match self {
            Self::Local { custos, actor } => Ok(custos.datasets(actor).await?),
            Self::Remote(c) => c.get("/v1/datasets").await,
        }
    }

    /// `custos dataset describe`: one dataset's schema (and, for admins and
    /// overseers, its size).
    pub async fn describe(&self, name: &str) -> anyhow::Result<DatasetSummary> {
        match self {
            Self::Local { custos, actor } => Ok(custos.describe(actor, name).await?),
            Self::Remote(c) => c.get(&format!("/v1/datasets/{}", segment(name)?)).await,
        }
    }

    /// `custos dataset verify`: every file against its ledgered digest.
    pub async fn verify_dataset(&self, name: &str) -> anyhow::Result<custos_broker::DatasetCheck> {
        match self {
            Self::Local { custos, actor } => Ok(custos.verify_dataset(actor, name).await?),
            Self::Remote(c) => {
                c.post_long(
                    &format!("/v1/datasets/{}/verify", segment(name)?),
                    &serde_json::json!({}),
                )
                .await
            }
        }
    }

    /// `custos agreement list`: each agreement's latest version and state.
    pub async fn agreements(&self) -> anyhow::Result<Vec<(AgreementVersion, AgreementState)>> {
        match self {
            Self::Local { custos, actor } => Ok(custos.agreements(actor).await?),
            Self::Remote(c) => {
                #[derive(Deserialize)]
                struct Listed {
                    agreement: AgreementVersion,
                    status: AgreementState,
                }
                let list: Vec<Listed> = c.get("/v1/agreements").await?;
                Ok(list.into_iter().map(|l| (l.agreement, l.status)).collect())
            }
        }
    }

    /// `custos agreement show`: every version of one agreement and its state.
    pub async fn agreement(
        &self,
        id: &str,
    ) -> anyhow::Result<(Vec<AgreementVersion>, AgreementState)> {
        match self {
            Self::Local { custos, actor } => Ok(custos.agreement(actor, id).await?),
            Self::Remote(c) => {
                #[derive(Deserialize)]
                struct Shown {
                    versions: Vec<AgreementVersion>,
                    status: AgreementState,
                }
                let s: Shown = c.get(&format!("/v1/agreements/{}", segment(id)?)).await?;
                Ok((s.versions, s.status))
            }
        }
    }

    /// `custos agreement suspend|resume|revoke`.
    pub async fn set_agreement_status(
        &self,
        id: &str,
        to: AgreementStatus,
        reason: Option<&str>,
    ) -> anyhow::Result<AgreementState> {
        match self {
            Self::Local { custos, actor } => {
                Ok(custos.set_agreement_status(actor, id, to, reason).await?)
            }
            Self::Remote(c) => {
                let verb = match to {
                    AgreementStatus::Active => "resume",
                    AgreementStatus::Suspended => "suspend",
                    AgreementStatus::Revoked => "revoke",
                };
                c.post(
                    &format!("/v1/agreements/{}/{verb}", segment(id)?),
                    &json!({ "reason": reason }),
                )
                .await
            }
        }
    }

    /// `custos principal list`.
    pub async fn principals(&self) -> anyhow::Result<Vec<Principal>> {
        match self {
            Self::Local { custos, actor } => Ok(custos.principals(actor).await?),
            Self::Remote(c) => c.get("/v1/principals").await,
        }
    }

    /// `custos principal add`: the new principal and its token (shown once).
    pub async fn add_principal(
        &self,
        name: &str,
        org: &str,
        roles: &[Role],
    ) -> anyhow::Result<(Principal, Zeroizing<String>)> {
        match self {
            Self::Local { custos, actor } => {
                let (p, token) = custos.add_principal(actor, name, org, roles).await?;
                Ok((p, Zeroizing::new(token.reveal().to_owned())))
            }
            Self::Remote(c) => {
                #[derive(Deserialize)]
                struct Added {
                    principal: Principal,
                    token: String,
                }
                let a: Added = c
                    .post(
                        "/v1/principals",
                        &json!({ "name": name, "org": org, "roles": roles }),
                    )
                    .await?;
                Ok((a.principal, Zeroizing::new(a.token)))
            }
        }
    }

    /// `custos principal update --facts`: sets a principal's own facts.
    pub async fn set_principal_facts(
        &self,
        name: &str,
        facts: &custos_broker::PrincipalFacts,
    ) -> anyhow::Result<custos_broker::FactsSet> {
        match self {
            Self::Local { custos, actor } => {
                Ok(custos.set_principal_facts(actor, name, facts).await?)
            }
            Self::Remote(c) => {
                c.put(
                    &format!("/v1/principals/{}/facts", segment(name)?),
                    &serde_json::to_value(facts)?,
                )
                .await
            }
        }
    }

    /// `custos alerts list`: a page from `offset`.
    pub async fn alerts(
        &self,
        state: Option<custos_broker::AlertState>,
        offset: u64,
    ) -> anyhow::Result<custos_broker::AlertPage> {
        match self {
            Self::Local { custos, actor } => {
                // Locally, detection catches up first, so the list is current.
                if offset == 0 {
                    custos.detect_pending().await?;
                }
                Ok(custos.alerts(actor, state, offset).await?)
            }
            Self::Remote(c) => {
                let state = match state {
                    Some(s) => s.as_str(),
                    None => "all",
                };
                c.get(&format!("/v1/alerts?state={state}&offset={offset}"))
                    .await
            }
        }
    }

    /// `custos alerts show`.
    pub async fn alert(&self, id: &str) -> anyhow::Result<custos_broker::Alert> {
        match self {
            Self::Local { custos, actor } => Ok(custos.alert(actor, id).await?),
            Self::Remote(c) => c.get(&format!("/v1/alerts/{}", segment(id)?)).await,
        }
    }

    /// `custos alerts resolve`.
    pub async fn resolve_alert(
        &self,
        id: &str,
        reason: &str,
    ) -> anyhow::Result<custos_broker::Alert> {
        match self {
            Self::Local { custos, actor } => Ok(custos.resolve_alert(actor, id, reason).await?),
            Self::Remote(c) => {
                c.post(
                    &format!("/v1/alerts/{}/resolve", segment(id)?),
                    &json!({ "reason": reason }),
                )
                .await
            }
        }
    }

    /// `custos alerts scan`.
    pub async fn run_detection(&self) -> anyhow::Result<custos_broker::DetectionRun> {
        match self {
            Self::Local { custos, actor } => Ok(custos.run_detection(actor).await?),
            Self::Remote(c) => c.post("/v1/alerts/scan", &json!({})).await,
        }
    }

    /// `custos principal revoke`.
    pub async fn revoke_principal(&self, name: &str) -> anyhow::Result<Principal> {
        match self {
            Self::Local { custos, actor } => Ok(custos.revoke_principal(actor, name).await?),
            Self::Remote(c) => {
                c.post(
                    &format!("/v1/principals/{}/revoke", segment(name)?),
                    &json!({}),
                )
                .await
            }
        }
    }
}

/// An id as one URL path segment: ids are plain (letters, digits, `-`,
/// `_`, `.`), so anything else is refused rather than escaped.
pub fn segment(id: &str) -> anyhow::Result<&str> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id != "."
        && id != ".."
    {
        Ok(id)
    } else {
        anyhow::bail!("`{id}` is not a valid id")
    }
}

/// An HTTP client of a Custos server.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<Zeroizing<String>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.base)
    }
}

impl Client {
    /// A client of the server at `url` (http:// or https://), sending `token`.
    pub fn new(url: &str, token: Option<Zeroizing<String>>) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--server must be an http:// or https:// URL, not `{base}`");
        }
        let parsed =
            reqwest::Url::parse(&base).map_err(|e| anyhow::anyhow!("--server `{base}`: {e}"))?;
        // A bearer token is the principal: it never crosses a network in
        // the clear. (Public ledger paths need no token and are verified
        // against the overseer's key, so they may use plain http.)
        if token.is_some() && parsed.scheme() == "http" && !custos_server::is_loopback(&parsed) {
            anyhow::bail!(
                "--server `{base}`: refusing to send CUSTOS_TOKEN over plain http:// to another machine; use https://"
            );
        }
        let http = reqwest::Client::builder()
            // A redirect could carry the token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self { base, token, http })
    }

    /// GETs `path` and decodes its JSON answer (a problem's detail is the error).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// GETs one of the public ledger paths (`/checkpoint`, `/tile/…`)
    /// without the token; `None` if the server has no such file. Answers
    /// larger than any tile or bundle can be are refused.
    pub async fn get_public(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        /// A full entry bundle: 256 entries of at most 64 KiB each.
        const LARGEST: usize = 256 * (2 + 65_535);
        let mut response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.base))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            anyhow::bail!("the server answered {} for {path}", response.status());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > LARGEST {
                anyhow::bail!("the server's answer for {path} is larger than any ledger file");
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    /// POSTs an action that answers a file (an extract): its bytes and the
    /// value of `report_header`. May run for minutes.
    async fn post_file(
        &self,
        path: &str,
        body: &Value,
        report_header: &str,
    ) -> anyhow::Result<(Vec<u8>, String)> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60 * 60))
            .json(body);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t.as_str());
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.base))?;
        let status = response.status();
        let report = response
            .headers()
            .get(report_header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await?;
        if status.is_success() {
            let report = report.ok_or_else(|| anyhow::anyhow!("the server sent no report"))?;
            return Ok((bytes.to_vec(), report));
        }
        let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match problem["detail"].as_str() {
            Some(detail) => anyhow::bail!("{detail}"),
            None => anyhow::bail!("the server answered {status}"),
        }
    }

    /// POSTs an action that may run for minutes (a match job).
    async fn post_long<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .timeout(Duration::from_secs(60 * 60))
                .json(body),
        )
        .await
    }

    async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t.as_str()),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("the server's answer is not what this client expects: {e}")
            });
        }
        // problem+json: the detail is the same message the local command gives.
        let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match problem["detail"].as_str() {
            Some(detail) => anyhow::bail!("{detail}"),
            None => anyhow::bail!("the server answered {status}"),
        }
    }
}
