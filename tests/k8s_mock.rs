//! The Kubernetes calls against kube's mock API server (`tower_test::mock::pair`): an
//! [`ApiServerVerifier`] checks each expected request's method, exact URI (query included) and
//! JSON body, and replies as the apiserver would; a timeout fails a test whose expected call
//! never arrives.

use std::time::{Duration, SystemTime};

use http::{Method, Request, Response};
use kube::{client::Body, Client};
use serde_json::{json, Value};
use simpleloggers::{
    discovery::LeaderRecord,
    election::{LeaderState, Role},
    k8s::{self, pod, rollout, status, K8sConfig, K8sError},
    shutdown::CancellationToken,
};
use tokio::sync::watch;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Wraps the mock's handle: each `expect` takes the next request, checks it and answers.
struct ApiServerVerifier(Handle);

impl ApiServerVerifier {
    /// Expects `method` on exactly `uri`; when `body` is given, the request's JSON must include
    /// it (every key of `body`, recursively, with equal values). Answers `code` with `reply`.
    /// Returns the request body.
    async fn expect(
        &mut self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        code: u16,
        reply: Value,
    ) -> Value {
        let (request, send) = self.0.next_request().await.expect("the service was not called");
        assert_eq!(request.method(), method, "method of {}", request.uri());
        assert_eq!(request.uri().to_string(), uri);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let actual: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        if let Some(expected) = body {
            assert_includes(&actual, &expected, "$");
        }
        send.send_response(
            Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        actual
    }
}

/// `actual` includes `expected`: objects key by key, everything else equal.
fn assert_includes(actual: &Value, expected: &Value, at: &str) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (k, ev) in e {
                let av = a.get(k).unwrap_or_else(|| panic!("{at}.{k} missing in {actual}"));
                assert_includes(av, ev, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(actual, expected, "at {at}"),
    }
}

fn mock() -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

/// Runs the verifier with a bound: a call that never comes fails the test instead of hanging.
async fn within(secs: u64, verifier: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(secs), verifier)
        .await
        .expect("an expected API call never came")
        .expect("the verifier failed");
}

/// An apiserver error answer (a `Status` object).
fn failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (test)"), "reason": reason, "code": code})
}

fn pod_json(name: &str, rev: &str, running: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "logs", "uid": format!("uid-{name}"),
                     "labels": {"app": "sl", "controller-revision-hash": rev}},
        "status": {"phase": if running { "Running" } else { "Pending" }, "containerStatuses": [{
            "name": "node", "image": "simpleloggers", "imageID": "", "ready": false, "restartCount": 0,
            "started": running, "state": if running { json!({"running": {}}) } else { json!({"waiting": {}}) }
        }]}
    })
}

fn sts_json(update_revision: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "sl", "namespace": "logs", "generation": 2},
        "spec": {"replicas": 3, "serviceName": "sl-peers", "selector": {"matchLabels": {"app": "sl"}},
                 "template": {"metadata": {}, "spec": {"containers": []}}},
        "status": {"replicas": 3, "observedGeneration": 2, "updateRevision": update_revision}
    })
}

fn leader_state(name: &str, term: u64) -> LeaderState {
    LeaderState {
        role: Role::Leader,
        case: simpleloggers::election::ElectionCase::Normal,
        term,
        leader: Some(LeaderRecord {
            name: name.into(),
            address: "10.1.0.7:3000".into(),
            since: "2026-11-25T12:00:00Z".into(),
            term: None,
        }),
        lease_until: None,
        session: Some("sess".into()),
        consul_reachable: true,
        consul_denied: None,
        reason: "holds the lock".into(),
        since: SystemTime::now(),
        transitions: 1,
    }
}

fn config() -> K8sConfig {
    K8sConfig {
        pod_name: "sl-0".into(),
        namespace: "logs".into(),
        statefulset: "sl".into(),
        logcluster: "sl".into(),
        period: Duration::from_secs(5),
        rollout: true,
    }
}

const POD_URI: &str = "/api/v1/namespaces/logs/pods/sl-0?";
const STS_URI: &str = "/apis/apps/v1/namespaces/logs/statefulsets/sl";
const PODS_URI: &str = "/api/v1/namespaces/logs/pods?&labelSelector=app%3Dsl";
const STATUS_URI: &str = "/apis/simpleloggers.io/v1alpha1/namespaces/logs/logclusters/sl/status?";
const EVENTS_URI: &str = "/apis/events.k8s.io/v1/namespaces/logs/events?";

/// Becoming leader patches the pod's role label to `leader` (merge patch, exact body).
#[tokio::test]
async fn role_label_patch_on_leader() {
    let (client, mut server) = mock();
    let verifier = tokio::spawn(async move {
        let body = server
            .expect(Method::PATCH, POD_URI, None, 200, pod_json("sl-0", "r1", true))
            .await;
        assert_eq!(
            body,
            json!({"metadata": {"labels": {"simpleloggers.io/role": "leader"}}})
        );
    });
    pod::patch_role(&client, "logs", "sl-0", Role::Leader)
        .await
        .unwrap();
    within(1, verifier).await;
}

/// The leader's status is a merge patch on the `status` subresource with leader, address, term,
/// since, offset, members and the LeaderElected condition.
#[tokio::test]
async fn status_patch() {
    let (client, mut server) = mock();
    let state = leader_state("sl-0", 4);
    let st = status::build_status("sl-0", &state, 99, None, None, SystemTime::now());
    let verifier = tokio::spawn(async move {
        server
            .expect(
                Method::PATCH,
                STATUS_URI,
                Some(json!({"status": {
                    "leader": "sl-0", "leaderAddress": "10.1.0.7:3000", "term": 4,
                    "since": "2026-11-25T12:00:00Z", "logEndOffset": 99,
                    "members": [{"name": "sl-0", "role": "leader", "ready": true, "logEndOffset": 99}],
                }})),
                200,
                json!({"apiVersion": "simpleloggers.io/v1alpha1", "kind": "LogCluster",
                       "metadata": {"name": "sl", "namespace": "logs"},
                       "spec": {"replicas": 3, "serviceName": "simpleloggers", "electionKey": "k"}}),
            )
            .await;
    });
    status::patch_status(&client, "logs", "sl", &st).await.unwrap();
    within(1, verifier).await;
}

/// A rollout step reads the StatefulSet and its pods by selector, and deletes the right pod (the
/// highest out-of-date follower, never the leader first) with a UID precondition.
#[tokio::test]
async fn rollout_deletes_the_right_pod() {
    let (client, mut server) = mock();
    let verifier = tokio::spawn(async move {
        server
            .expect(Method::GET, STS_URI, None, 200, sts_json("new"))
            .await;
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod_json("sl-0", "old", true), pod_json("sl-1", "old", true), pod_json("sl-2", "new", true)
        ]});
        server.expect(Method::GET, PODS_URI, None, 200, list).await;
        server
            .expect(
                Method::DELETE,
                "/api/v1/namespaces/logs/pods/sl-1?",
                Some(json!({"preconditions": {"uid": "uid-sl-1"}})),
                200,
                pod_json("sl-1", "old", true),
            )
            .await;
    });
    let (_, action) = rollout::step(&client, "logs", "sl", "sl-0").await.unwrap();
    assert!(
        matches!(action, rollout::Action::Delete(ref p) if p.name == "sl-1"),
        "{action:?}"
    );
    within(1, verifier).await;
}

/// A replacement that is not running yet: the step reads, waits, and deletes nothing.
#[tokio::test]
async fn rollout_waits_for_the_replacement() {
    let (client, mut server) = mock();
    let verifier = tokio::spawn(async move {
        server
            .expect(Method::GET, STS_URI, None, 200, sts_json("new"))
            .await;
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod_json("sl-0", "old", true), pod_json("sl-1", "old", true), pod_json("sl-2", "new", false)
        ]});
        server.expect(Method::GET, PODS_URI, None, 200, list).await;
        // No further call may come.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), server.0.next_request())
                .await
                .is_err(),
            "unexpected call after a Wait"
        );
    });
    let (_, action) = rollout::step(&client, "logs", "sl", "sl-0").await.unwrap();
    assert!(matches!(action, rollout::Action::Wait(_)), "{action:?}");
    within(2, verifier).await;
}

/// An apiserver 500 or 403 is an error the caller can log, not a panic.
#[tokio::test]
async fn api_errors_are_returned() {
    let (client, mut server) = mock();
    let verifier = tokio::spawn(async move {
        server
            .expect(Method::PATCH, POD_URI, None, 500, failure(500, "InternalError"))
            .await;
        server
            .expect(Method::PATCH, STATUS_URI, None, 403, failure(403, "Forbidden"))
            .await;
        server
            .expect(Method::GET, STS_URI, None, 404, failure(404, "NotFound"))
            .await;
    });
    let err = pod::patch_role(&client, "logs", "sl-0", Role::Follower)
        .await
        .unwrap_err();
    assert!(matches!(err, K8sError::Api(_)), "{err}");
    let st = status::build_status("sl-0", &leader_state("sl-0", 1), 0, None, None, SystemTime::now());
    let err = status::patch_status(&client, "logs", "sl", &st)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Forbidden"), "{err}");
    let err = rollout::step(&client, "logs", "sl", "sl-0").await.unwrap_err();
    assert!(matches!(err, K8sError::Api(_)), "{err}");
    within(1, verifier).await;
}

/// The whole loop for a node that becomes leader: role label, BecameLeader Event, StatefulSet
/// and pods, status; on shutdown the label goes back to follower and SteppedDown is recorded.
#[tokio::test]
async fn run_as_leader_then_shutdown() {
    let (client, mut server) = mock();
    let (_tx, rx) = watch::channel(leader_state("sl-0", 7));
    let (_log_tx, log_rx) = watch::channel(123u64);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let verifier = tokio::spawn(async move {
        server
            .expect(
                Method::PATCH,
                POD_URI,
                Some(json!({"metadata": {"labels": {"simpleloggers.io/role": "leader"}}})),
                200,
                pod_json("sl-0", "new", true),
            )
            .await;
        let event = server
            .expect(
                Method::POST,
                EVENTS_URI,
                Some(json!({"reason": "BecameLeader", "action": "Elected", "type": "Normal",
                            "note": "became leader for term 7", "reportingController": "simpleloggers",
                            "reportingInstance": "sl-0",
                            "regarding": {"kind": "Pod", "name": "sl-0", "namespace": "logs"},
                            "related": {"kind": "LogCluster", "name": "sl"}})),
                201,
                json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"}, "eventTime": null}),
            )
            .await;
        assert!(event["metadata"]["name"].as_str().unwrap().starts_with("sl-0."));
        server
            .expect(Method::GET, STS_URI, None, 200, sts_json("new"))
            .await;
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod_json("sl-0", "new", true), pod_json("sl-1", "new", true), pod_json("sl-2", "new", false)
        ]});
        server.expect(Method::GET, PODS_URI, None, 200, list).await;
        let body = server
            .expect(
                Method::PATCH,
                STATUS_URI,
                Some(json!({"status": {"leader": "sl-0", "term": 7, "logEndOffset": 123}})),
                200,
                json!({"apiVersion": "simpleloggers.io/v1alpha1", "kind": "LogCluster",
                       "metadata": {"name": "sl"}, "spec": {"replicas": 3, "serviceName": "s", "electionKey": "k"}}),
            )
            .await;
        let members = body["status"]["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(
            members[2],
            json!({"name": "sl-2", "role": "follower", "ready": false, "logEndOffset": null})
        );
        let conditions = body["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions[0]["type"], "LeaderElected");
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(conditions[1]["type"], "RolloutComplete");
        assert_eq!(conditions[1]["status"], "False", "sl-2 is not running yet");
        stop.cancel();
        server
            .expect(
                Method::PATCH,
                POD_URI,
                Some(json!({"metadata": {"labels": {"simpleloggers.io/role": "follower"}}})),
                200,
                pod_json("sl-0", "new", true),
            )
            .await;
        server
            .expect(
                Method::POST,
                EVENTS_URI,
                Some(json!({"reason": "SteppedDown", "note": "stepped down from term 7: the node is shutting down"})),
                201,
                json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e2"}, "eventTime": null}),
            )
            .await;
    });
    let task = tokio::spawn(k8s::run(config(), client, None, rx, log_rx, shutdown));
    within(5, verifier).await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run ends after shutdown")
        .unwrap();
}

/// Every call failing (500, 403) neither panics nor stops the loop, and each failure is logged
/// at warn: the status is still written (with this node alone as member) after the StatefulSet
/// read fails, and shutdown still ends it.
#[tokio::test]
async fn run_survives_api_errors() {
    let (client, mut server) = mock();
    let (_tx, rx) = watch::channel(leader_state("sl-0", 3));
    let (_log_tx, log_rx) = watch::channel(0u64);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let verifier = tokio::spawn(async move {
        server
            .expect(Method::PATCH, POD_URI, None, 500, failure(500, "InternalError"))
            .await;
        server
            .expect(Method::POST, EVENTS_URI, None, 403, failure(403, "Forbidden"))
            .await;
        server
            .expect(Method::GET, STS_URI, None, 500, failure(500, "InternalError"))
            .await;
        let body = server
            .expect(Method::PATCH, STATUS_URI, None, 403, failure(403, "Forbidden"))
            .await;
        assert_eq!(body["status"]["members"].as_array().unwrap().len(), 1);
        stop.cancel();
        // The label was never set, so shutdown tries once more; the event is best-effort.
        server
            .expect(Method::PATCH, POD_URI, None, 500, failure(500, "InternalError"))
            .await;
        server
            .expect(Method::POST, EVENTS_URI, None, 500, failure(500, "InternalError"))
            .await;
    });
    let logs = Logs::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    // Current-thread runtime: the spawned loop runs on this thread, under this subscriber.
    let task = tokio::spawn(k8s::run(config(), client, None, rx, log_rx, shutdown));
    within(5, verifier).await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run ends after shutdown")
        .unwrap();
    let text = logs.text();
    for expected in [
        "cannot set the pod role label",
        "cannot record the leadership Event",
        "cannot read the StatefulSet and its pods",
        "cannot update the LogCluster status or roll out",
        "cannot set the pod role label to follower on shutdown",
        "cannot record the SteppedDown Event",
    ] {
        assert!(
            text.lines().any(|l| l.contains(" WARN ") && l.contains(expected)),
            "no warning {expected:?} in:\n{text}"
        );
    }
}

/// Captured log output.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Leadership gained and lost while running: follower label first, then leader label,
/// BecameLeader, the leader's reads and status; on losing the lock the label goes back and
/// SteppedDown carries the reason; shutdown then needs no further call.
#[tokio::test]
async fn run_follows_role_changes() {
    let (client, mut server) = mock();
    let mut follower = leader_state("sl-1", 2);
    follower.role = Role::Follower;
    let (tx, rx) = watch::channel(follower.clone());
    let (_log_tx, log_rx) = watch::channel(5u64);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let label = |role: &str| Some(json!({"metadata": {"labels": {"simpleloggers.io/role": role}}}));
    let event_reply = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}});
    let verifier = tokio::spawn(async move {
        server
            .expect(
                Method::PATCH,
                POD_URI,
                label("follower"),
                200,
                pod_json("sl-0", "new", true),
            )
            .await;
        tx.send(leader_state("sl-0", 3)).unwrap();
        server
            .expect(
                Method::PATCH,
                POD_URI,
                label("leader"),
                200,
                pod_json("sl-0", "new", true),
            )
            .await;
        server
            .expect(
                Method::POST,
                EVENTS_URI,
                Some(json!({"reason": "BecameLeader"})),
                201,
                event_reply.clone(),
            )
            .await;
        server
            .expect(Method::GET, STS_URI, None, 200, sts_json("new"))
            .await;
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod_json("sl-0", "new", true), pod_json("sl-1", "new", true), pod_json("sl-2", "new", true)
        ]});
        server.expect(Method::GET, PODS_URI, None, 200, list).await;
        let body = server
            .expect(
                Method::PATCH,
                STATUS_URI,
                Some(json!({"status": {"leader": "sl-0", "term": 3}})),
                200,
                json!({"apiVersion": "simpleloggers.io/v1alpha1", "kind": "LogCluster",
                       "metadata": {"name": "sl"}, "spec": {"replicas": 3, "serviceName": "s", "electionKey": "k"}}),
            )
            .await;
        assert_eq!(
            body["status"]["conditions"][1]["status"], "True",
            "all pods up to date"
        );
        let mut lost = follower;
        lost.term = 4;
        lost.reason = "the lease lapsed".into();
        tx.send(lost).unwrap();
        server
            .expect(
                Method::PATCH,
                POD_URI,
                label("follower"),
                200,
                pod_json("sl-0", "new", true),
            )
            .await;
        server
            .expect(
                Method::POST,
                EVENTS_URI,
                Some(json!({"reason": "SteppedDown", "note": "stepped down from term 3: the lease lapsed"})),
                201,
                event_reply,
            )
            .await;
        stop.cancel();
        // Either nothing comes, or the loop ended and dropped the client (no request).
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(300), server.0.next_request()).await
        {
            panic!(
                "no call expected after shutdown of a labelled follower, got {}",
                request.uri()
            );
        }
    });
    let task = tokio::spawn(k8s::run(config(), client, None, rx, log_rx, shutdown));
    within(5, verifier).await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run ends after shutdown")
        .unwrap();
}

/// Leadership lost while the leader's rollout step is in flight: the step is abandoned, so no
/// pod is deleted by a former leader; the label and SteppedDown follow at once.
#[tokio::test]
async fn lost_leadership_abandons_the_rollout() {
    let (client, mut server) = mock();
    let (tx, rx) = watch::channel(leader_state("sl-0", 5));
    let (_log_tx, log_rx) = watch::channel(0u64);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let verifier = tokio::spawn(async move {
        server
            .expect(Method::PATCH, POD_URI, None, 200, pod_json("sl-0", "old", true))
            .await;
        server
            .expect(
                Method::POST,
                EVENTS_URI,
                None,
                201,
                json!({"metadata": {"name": "e"}}),
            )
            .await;
        server
            .expect(Method::GET, STS_URI, None, 200, sts_json("new"))
            .await;
        let (request, pending) = server.0.next_request().await.expect("the pod list");
        assert_eq!(request.uri().to_string(), PODS_URI);
        let mut follower = leader_state("sl-1", 6);
        follower.role = Role::Follower;
        follower.reason = "another node holds the lock".into();
        tx.send(follower).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The answer would have made sl-2 (out of date) the pod to delete.
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod_json("sl-0", "old", true), pod_json("sl-1", "new", true), pod_json("sl-2", "old", true)
        ]});
        pending.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&list).unwrap()))
                .unwrap(),
        );
        let label = json!({"metadata": {"labels": {"simpleloggers.io/role": "follower"}}});
        server
            .expect(
                Method::PATCH,
                POD_URI,
                Some(label),
                200,
                pod_json("sl-0", "old", true),
            )
            .await;
        server
            .expect(
                Method::POST,
                EVENTS_URI,
                Some(json!({"reason": "SteppedDown"})),
                201,
                json!({"metadata": {"name": "f"}}),
            )
            .await;
        stop.cancel();
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(300), server.0.next_request()).await
        {
            panic!("no call expected, got {} {}", request.method(), request.uri());
        }
    });
    let task = tokio::spawn(k8s::run(config(), client, None, rx, log_rx, shutdown));
    within(5, verifier).await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run ends after shutdown")
        .unwrap();
}

/// With Consul health (the real HTTP of the dev Consul): an up-to-date replacement that runs but
/// does not pass in Consul holds the rollout (no delete), and the status shows it not ready.
#[tokio::test]
async fn rollout_waits_for_consul_passing() {
    let dev = devconsul::spawn(devconsul::Config::ephemeral()).await.unwrap();
    let http = reqwest::Client::new();
    for (name, status) in [("sl-0", "passing"), ("sl-1", "critical"), ("sl-2", "passing")] {
        let body = json!({"ID": format!("simpleloggers-{name}"), "Name": "simpleloggers", "Port": 3000,
                          "Meta": {"node_name": name},
                          "Check": {"CheckID": format!("c-{name}"), "TTL": "60s", "Status": status}});
        let resp = http
            .put(format!("{}/v1/agent/service/register", dev.url()))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let consul = k8s::ConsulHealth {
        client: simpleloggers::consul::ConsulClient::from_addr(dev.url()).unwrap(),
        service: "simpleloggers".into(),
    };
    let (client, mut server) = mock();
    let (_tx, rx) = watch::channel(leader_state("sl-0", 9));
    let (_log_tx, log_rx) = watch::channel(0u64);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let verifier = tokio::spawn(async move {
        server
            .expect(Method::PATCH, POD_URI, None, 200, pod_json("sl-0", "old", true))
            .await;
        server
            .expect(
                Method::POST,
                EVENTS_URI,
                None,
                201,
                json!({"metadata": {"name": "e"}}),
            )
            .await;
        server
            .expect(Method::GET, STS_URI, None, 200, sts_json("new"))
            .await;
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            pod_json("sl-0", "old", true), pod_json("sl-1", "new", true), pod_json("sl-2", "old", true)
        ]});
        server.expect(Method::GET, PODS_URI, None, 200, list).await;
        // No DELETE: straight to the status.
        let body = server
            .expect(
                Method::PATCH,
                STATUS_URI,
                None,
                200,
                json!({"metadata": {"name": "sl"}}),
            )
            .await;
        let members = &body["status"]["members"];
        assert_eq!(members[1]["name"], "sl-1");
        assert_eq!(members[1]["ready"], false, "sl-1 runs but is critical in Consul");
        assert_eq!(members[2]["ready"], true);
        let rollout = &body["status"]["conditions"][1];
        assert_eq!(rollout["reason"], "Waiting");
        assert!(rollout["message"].as_str().unwrap().contains("sl-1"), "{rollout}");
        stop.cancel();
        server
            .expect(Method::PATCH, POD_URI, None, 200, pod_json("sl-0", "old", true))
            .await;
        server
            .expect(
                Method::POST,
                EVENTS_URI,
                None,
                201,
                json!({"metadata": {"name": "f"}}),
            )
            .await;
    });
    let task = tokio::spawn(k8s::run(config(), client, Some(consul), rx, log_rx, shutdown));
    within(5, verifier).await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run ends after shutdown")
        .unwrap();
}
