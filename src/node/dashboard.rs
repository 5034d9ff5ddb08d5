//! The dashboard every node serves at `/` (static HTML, CSS and JS embedded in the binary: no
//! CDN, no build step) and the `/api/v1/cluster` JSON it polls, which is the same member list
//! `simpleloggers status` prints (replication reports included, so a follower's page shows the
//! HW, ISR, lag and refusals too), cached briefly so that many open dashboards fan out to Consul
//! and the peers at most twice a second.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    Json,
};
use serde::Serialize;
use serde_json::json;

use super::{ApiError, Node};
use crate::cli::{cluster, ClusterView};

/// How long a cluster view is reused.
const CACHE_FOR: Duration = Duration::from_millis(500);
/// How long each peer's `/api/v1/status` may take before it shows as unreachable.
const PEER_TIMEOUT: Duration = Duration::from_millis(800);

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");

/// The last cluster view and when it was taken. The async mutex also makes concurrent requests
/// wait for one fan-out instead of starting their own.
#[derive(Clone, Default)]
pub struct ClusterCache(Arc<tokio::sync::Mutex<Option<Snapshot>>>);

/// A cluster view and when it was taken.
type Snapshot = (Instant, Arc<ClusterView>);

/// The body of `/api/v1/cluster`: the view plus which node answered.
#[derive(Serialize)]
struct ClusterAnswer<'a> {
    /// The node that served this answer (the dashboard's "viewing through").
    observed_by: &'a str,
    #[serde(flatten)]
    view: &'a ClusterView,
}

/// `GET /`: the dashboard page.
pub async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML)).into_response()
}

/// `GET /assets/{file}`: the page's script and style sheet.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (body, content_type) = match file.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return Err(ApiError::NotFound(format!("/assets/{file}"))),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// `GET /api/v1/cluster`: members, roles, checks and log ends, as `simpleloggers status -o json`
/// sees them; 503 with a JSON error when Consul cannot be reached.
pub async fn cluster(State(node): State<Node>) -> Response {
    let mut cached = node.cluster.0.lock().await;
    let fresh = cached
        .as_ref()
        .filter(|(at, _)| at.elapsed() < CACHE_FOR)
        .map(|(_, view)| view.clone());
    let view = match fresh {
        Some(view) => view,
        None => {
            let collected = cluster::collect(
                &node.consul,
                &node.http,
                &node.config.service_name,
                &node.config.election_key,
                PEER_TIMEOUT,
            )
            .await;
            match collected {
                Ok(view) => {
                    let view = Arc::new(view);
                    *cached = Some((Instant::now(), view.clone()));
                    view
                }
                Err(err) => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "1")],
                        Json(json!({
                            "error": format!("cannot build the cluster view: {err}"),
                            "observed_by": node.config.name,
                        })),
                    )
                        .into_response()
                }
            }
        }
    };
    drop(cached);
    Json(ClusterAnswer {
        observed_by: &node.config.name,
        view: &view,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads its assets and APIs through relative URLs only: it works behind a
    /// port-forward or a path prefix, and offline (no CDN).
    #[test]
    fn assets_are_relative_and_embedded() {
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "absolute URL in an asset"
            );
            assert!(
                !text.contains("src=\"/") && !text.contains("href=\"/"),
                "root-relative URL"
            );
        }
        assert!(INDEX_HTML.contains("assets/app.js") && INDEX_HTML.contains("assets/style.css"));
        assert!(APP_JS.contains("api/v1/cluster") && APP_JS.contains("api/v1/log/stream"));
    }

    /// Every element the script looks up by id (`$("...")` or `setText("...")`, the replication
    /// card's included) exists in the page, so no panel silently stays empty.
    #[test]
    fn script_ids_exist_in_the_page() {
        let mut ids: Vec<&str> = Vec::new();
        for call in ["$(\"", "setText(\""] {
            ids.extend(
                APP_JS
                    .split(call)
                    .skip(1)
                    .filter_map(|rest| rest.split('"').next()),
            );
        }
        assert!(ids.contains(&"members-body"), "{ids:?}");
        for id in [
            "repl-hw",
            "repl-case",
            "repl-writes",
            "repl-isr",
            "repl-alerts",
            "repl-source",
            "repl-replicas",
            "repl-min-insync",
            "repl-acks",
        ] {
            assert!(ids.contains(&id), "the script never fills #{id}");
        }
        for id in ids {
            assert!(
                INDEX_HTML.contains(&format!("id=\"{id}\"")),
                "the script uses #{id}, which the page lacks"
            );
        }
    }
}
