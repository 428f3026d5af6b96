//! The requesting side's client of another Custos's `/v1/matches` routes:
//! [`HttpPeer`] implements the broker's [`MatchPeer`]. The peer's token is
//! held zeroized and sent only as a bearer header; replies are read no
//! further than the protocol allows.

use std::time::Duration;

use custos_broker::{MatchOffer, MatchOpened, MatchPeer, PeerError};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::matches::POINTS;

/// Longest one step of a match may take (1M points take tens of seconds).
const STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Another Custos server, reached with a token it issued to this side.
pub struct HttpPeer {
    base: String,
    token: Zeroizing<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for HttpPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpPeer({})", self.base)
    }
}

/// Whether `url` names this machine (`localhost` or a loopback address),
/// the only place plain `http://` may carry a token or PSI points.
pub fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl HttpPeer {
    /// A peer at `url`: `https://`, or `http://` on a loopback address
    /// only (points and tokens never cross a network in the clear).
    pub fn new(url: &str, token: Zeroizing<String>) -> Result<Self, String> {
        let base = url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|e| format!("--peer `{base}`: {e}"))?;
        let loopback = is_loopback(&parsed);
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(format!(
                    "--peer `{base}`: use https:// for a peer that is not on this machine"
                ));
            }
            other => return Err(format!("--peer `{base}`: `{other}` is not http(s)")),
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(STEP_TIMEOUT)
            // A redirect would resend points elsewhere, perhaps in the clear.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { base, token, http })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token.as_str())
    }

    /// Sends, and reads a successful answer of at most `limit` bytes; a
    /// problem's detail becomes the refusal.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Vec<u8>, PeerError> {
        let mut response = request.send().await.map_err(|e| {
            // The connection error's text (addresses, TLS detail) is
            // for the custodian's log, not for the caller.
            tracing::warn!(error = %e, "the match peer could not be reached");
            PeerError::Failed(format!("cannot reach {} (see the server's log)", self.base))
        })?;
        let status = response.status();
        let cap = if status.is_success() {
            limit
        } else {
            64 * 1024
        };
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| PeerError::Failed(format!("reading the answer: {e}")))?
        {
            if body.len() + chunk.len() > cap {
                return Err(PeerError::Failed(format!(
                    "the answer is longer than the {cap} bytes the protocol allows"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        let problem: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // The peer's "denied: …" is said once, by this side's own error.
        let detail = problem["detail"].as_str().map_or_else(
            || format!("it answered {status}"),
            |d| d.strip_prefix("denied: ").unwrap_or(d).to_owned(),
        );
        Err(if status.is_client_error() {
            PeerError::Refused(detail)
        } else {
            PeerError::Failed(detail)
        })
    }

    fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PeerError> {
        serde_json::from_slice(bytes)
            .map_err(|e| PeerError::Failed(format!("its answer is not what Custos expects: {e}")))
    }
}

impl MatchPeer for HttpPeer {
    fn name(&self) -> String {
        self.base.clone()
    }

    async fn open(&self, offer: &MatchOffer) -> Result<MatchOpened, PeerError> {
        let bytes = self
            .send(self.post("/v1/matches").json(offer), 4096)
            .await?;
        Self::json(&bytes)
    }

    async fn exchange(
        &self,
        job_id: &str,
        points: Vec<u8>,
        reply_bytes: usize,
    ) -> Result<Vec<u8>, PeerError> {
        let request = self
            .post(&format!("/v1/matches/{job_id}/points"))
            .header(reqwest::header::CONTENT_TYPE, POINTS)
            .body(points);
        self.send(request, reply_bytes).await
    }

    async fn finish(&self, job_id: &str, points: Vec<u8>) -> Result<u64, PeerError> {
        let request = self
            .post(&format!("/v1/matches/{job_id}/finish"))
            .header(reqwest::header::CONTENT_TYPE, POINTS)
            .body(points);
        let answer: Value = Self::json(&self.send(request, 4096).await?)?;
        answer["matches"]
            .as_u64()
            .ok_or_else(|| PeerError::Failed("its answer has no count".into()))
    }
}
