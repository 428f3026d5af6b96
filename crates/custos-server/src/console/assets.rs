//! The console's static files, embedded in the binary and served under
//! names that carry their content hash, so a browser may cache them for
//! ever and a new binary's files are fetched fresh.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
struct Asset {
    /// The name pages use (`console.css`).
    logical: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        logical: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/console.css"),
    },
    // htmx 2.0.11 (BSD Zero-Clause, see assets/htmx-LICENSE), unmodified.
    Asset {
        logical: "htmx.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/htmx-2.0.11.min.js"),
    },
];

/// `name.HASH.ext` for every asset, computed once.
fn hashed_names() -> &'static Vec<String> {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = hex::encode(&Sha256::digest(a.bytes)[..8]);
                match a.logical.rsplit_once('.') {
                    Some((stem, ext)) => format!("{stem}.{digest}.{ext}"),
                    None => format!("{}.{digest}", a.logical),
                }
            })
            .collect()
    })
}

/// The URL path of asset `logical` (e.g. `/console/assets/console.1a2b….css`).
pub(crate) fn url(logical: &str) -> String {
    let name = ASSETS
        .iter()
        .position(|a| a.logical == logical)
        .and_then(|i| hashed_names().get(i))
        .map_or(logical, String::as_str);
    format!("/console/assets/{name}")
}

/// Serves an asset by its hashed name; anything else is 404.
pub(crate) async fn serve(Path(name): Path<String>) -> Response {
    let Some(i) = hashed_names().iter().position(|n| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let asset = &ASSETS[i];
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}
