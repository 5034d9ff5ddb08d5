//! Leader-driven rolling update. The StatefulSet uses `updateStrategy: OnDelete`, so Kubernetes
//! never replaces a pod by itself; the leader replaces out-of-date pods one at a time, followers
//! first and itself last, so a `helm upgrade` costs exactly one leadership handover. The decision
//! is the pure [`plan`]; [`step`] gathers its inputs from the API and carries it out.

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    api::{DeleteParams, ListParams, Preconditions},
    Api, Client,
};

use super::K8sError;

/// The pod label the StatefulSet controller sets to the revision a pod was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What [`plan`] needs to know about the StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsView {
    /// `status.updateRevision`: the revision every pod should run. Empty when unknown.
    pub update_revision: String,
    /// `spec.replicas`: how many pods there should be.
    pub replicas: usize,
    /// Whether the controller has observed the latest spec (`status.observedGeneration >=
    /// metadata.generation`); until then `update_revision` may be stale.
    pub observed: bool,
}

/// What [`plan`] needs to know about one node pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// UID, so a delete cannot hit a replacement that reuses the name.
    pub uid: Option<String>,
    /// Its `controller-revision-hash` label.
    pub revision: Option<String>,
    /// Phase `Running` and every container running and started (its startup probe passed).
    /// Followers are never Ready by design, so Ready is not used.
    pub running: bool,
    /// Has a `deletionTimestamp`.
    pub terminating: bool,
    /// Whether its Consul service instance passes every check: `None` when Consul could not
    /// be asked (then `running` alone decides).
    pub consul_passing: Option<bool>,
}

impl PodView {
    /// The view of an API pod.
    pub fn from_pod(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let status = pod.status.as_ref();
        let phase_running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
        let containers = status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or(&[]);
        let all_started = !containers.is_empty()
            && containers
                .iter()
                .all(|c| c.started == Some(true) && c.state.as_ref().is_some_and(|st| st.running.is_some()));
        Self {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            revision: meta.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).cloned(),
            running: phase_running && all_started,
            terminating: meta.deletion_timestamp.is_some(),
            consul_passing: None,
        }
    }

    /// Running, and passing in Consul unless Consul could not be asked: a replacement in this
    /// state has joined the cluster and may take over.
    pub fn settled(&self) -> bool {
        self.running && self.consul_passing != Some(false)
    }

    fn up_to_date(&self, revision: &str) -> bool {
        self.revision.as_deref() == Some(revision)
    }
}

/// What the leader should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do yet; the reason says what is awaited.
    Wait(String),
    /// Delete this pod (the StatefulSet controller recreates it at the update revision).
    Delete(PodView),
    /// Every pod runs the update revision.
    Done,
}

/// Decides the next rollout step. Rules, in order:
/// 1. Wait until the StatefulSet's update revision is known and observed.
/// 2. Wait while any pod is terminating or missing (fewer pods than replicas): a replacement is in
///    progress, and there is never more than one at a time.
/// 3. Wait while any up-to-date pod is not yet [settled](PodView::settled) (running and passing
///    in Consul): the previous replacement must have joined before the next goes.
/// 4. Delete one out-of-date follower: unsettled ones first (they serve nothing), then the
///    highest name, as the StatefulSet controller would.
/// 5. Only this (leader) pod out of date: delete it only when an up-to-date follower is settled
///    to take over; its graceful stop hands leadership to that follower.
/// 6. Otherwise done.
pub fn plan(sts: &StsView, pods: &[PodView], self_name: &str) -> Action {
    let rev = sts.update_revision.as_str();
    if rev.is_empty() {
        return Action::Wait("the StatefulSet has no update revision yet".into());
    }
    if !sts.observed {
        return Action::Wait("the StatefulSet controller has not observed the latest spec".into());
    }
    if let Some(p) = pods.iter().find(|p| p.terminating) {
        return Action::Wait(format!("pod {} is terminating", p.name));
    }
    if pods.len() < sts.replicas {
        return Action::Wait(format!(
            "{} of {} pods exist; waiting for the StatefulSet to create the rest",
            pods.len(),
            sts.replicas
        ));
    }
    if let Some(p) = pods.iter().find(|p| p.up_to_date(rev) && !p.settled()) {
        let what = if p.running {
            "not passing in Consul"
        } else {
            "not running"
        };
        return Action::Wait(format!("pod {} (up to date) is {what} yet", p.name));
    }
    let mut stale: Vec<&PodView> = pods
        .iter()
        .filter(|p| !p.up_to_date(rev) && p.name != self_name)
        .collect();
    // Unsettled first, then by name descending (ordinal order within a StatefulSet, for
    // names of the same length).
    stale.sort_by(|a, b| {
        a.settled()
            .cmp(&b.settled())
            .then_with(|| b.name.len().cmp(&a.name.len()))
            .then_with(|| b.name.cmp(&a.name))
    });
    if let Some(p) = stale.first() {
        return Action::Delete((*p).clone());
    }
    match pods.iter().find(|p| p.name == self_name) {
        Some(me) if !me.up_to_date(rev) => {
            let successor = pods
                .iter()
                .any(|p| p.name != self_name && p.up_to_date(rev) && p.settled());
            if successor {
                Action::Delete(me.clone())
            } else {
                Action::Wait("only this leader is out of date, but no up-to-date follower is running".into())
            }
        }
        _ => Action::Done,
    }
}

/// The StatefulSet and its pods as last read.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The StatefulSet.
    pub sts: StsView,
    /// Its pods (by its `matchLabels` selector).
    pub pods: Vec<PodView>,
}

/// Reads StatefulSet `sts_name` and its pods (needs `get` on statefulsets, `list` on pods).
///
/// # Errors
/// Any API failure, or a StatefulSet without a `matchLabels` selector.
pub async fn observe(client: &Client, namespace: &str, sts_name: &str) -> Result<Observed, K8sError> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let sts = sets.get(sts_name).await?;
    let status = sts.status.as_ref();
    let view = StsView {
        update_revision: status.and_then(|s| s.update_revision.clone()).unwrap_or_default(),
        replicas: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize,
        observed: status.and_then(|s| s.observed_generation).unwrap_or(0)
            >= sts.metadata.generation.unwrap_or(0),
    };
    let selector = sts
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .filter(|labels| !labels.is_empty())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .ok_or_else(|| K8sError::Invalid(format!("StatefulSet {sts_name} has no matchLabels selector")))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(Observed {
        sts: view,
        pods: listed.items.iter().map(PodView::from_pod).collect(),
    })
}

/// Carries out `action`: deletes the pod of a [`Action::Delete`] (with a UID precondition, so a
/// replacement that reuses the name is never hit; needs `delete` on pods); nothing otherwise.
///
/// # Errors
/// Any API failure.
pub async fn execute(client: &Client, namespace: &str, action: &Action) -> Result<(), K8sError> {
    if let Action::Delete(pod) = action {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        tracing::info!(pod = %pod.name, "rollout: deleting an out-of-date pod");
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        pods.delete(&pod.name, &params).await?;
    }
    Ok(())
}

/// One rollout step: [`observe`], [`plan`], [`execute`]. Returns what was seen and decided.
///
/// # Errors
/// Any API failure (the caller logs it and retries later; the election is never affected).
pub async fn step(
    client: &Client,
    namespace: &str,
    sts_name: &str,
    self_name: &str,
) -> Result<(Observed, Action), K8sError> {
    let observed = observe(client, namespace, sts_name).await?;
    let action = plan(&observed.sts, &observed.pods, self_name);
    execute(client, namespace, &action).await?;
    Ok((observed, action))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "sts-new";
    const OLD: &str = "sts-old";

    fn sts(replicas: usize) -> StsView {
        StsView {
            update_revision: NEW.into(),
            replicas,
            observed: true,
        }
    }

    fn pod(name: &str, rev: &str) -> PodView {
        PodView {
            name: name.into(),
            uid: Some(format!("uid-{name}")),
            revision: Some(rev.into()),
            running: true,
            terminating: false,
            consul_passing: Some(true),
        }
    }

    fn deleted(action: &Action) -> Option<&str> {
        match action {
            Action::Delete(p) => Some(p.name.as_str()),
            _ => None,
        }
    }

    /// Every pod at the update revision: nothing to do.
    #[test]
    fn all_up_to_date_is_done() {
        let pods = [pod("sl-0", NEW), pod("sl-1", NEW), pod("sl-2", NEW)];
        assert_eq!(plan(&sts(3), &pods, "sl-0"), Action::Done);
    }

    /// An out-of-date follower is deleted, never the leader first.
    #[test]
    fn stale_follower_is_deleted_before_the_leader() {
        let pods = [pod("sl-0", OLD), pod("sl-1", NEW), pod("sl-2", OLD)];
        assert_eq!(deleted(&plan(&sts(3), &pods, "sl-0")), Some("sl-2"));
    }

    /// Followers are replaced in descending ordinal order (numerically, sl-10 after sl-9 first).
    #[test]
    fn followers_go_highest_ordinal_first() {
        let pods: Vec<_> = (0..11).map(|i| pod(&format!("sl-{i}"), OLD)).collect();
        assert_eq!(deleted(&plan(&sts(11), &pods, "sl-0")), Some("sl-10"));
    }

    /// A follower that is not running (crash-looping on the old revision) goes first: it serves
    /// nothing.
    #[test]
    fn broken_stale_follower_goes_first() {
        let mut broken = pod("sl-1", OLD);
        broken.running = false;
        let pods = [pod("sl-0", OLD), broken, pod("sl-2", OLD)];
        assert_eq!(deleted(&plan(&sts(3), &pods, "sl-0")), Some("sl-1"));
    }

    /// A replacement not yet running holds the rollout: never two pods down at once.
    #[test]
    fn replacement_not_running_waits() {
        let mut fresh = pod("sl-2", NEW);
        fresh.running = false;
        let pods = [pod("sl-0", OLD), pod("sl-1", OLD), fresh];
        assert!(matches!(plan(&sts(3), &pods, "sl-0"), Action::Wait(r) if r.contains("sl-2")));
    }

    /// A replacement running but not (yet) passing in Consul holds the rollout, and is no
    /// successor for the leader; unknown Consul health falls back to running.
    #[test]
    fn replacement_not_passing_in_consul_waits() {
        let mut fresh = pod("sl-2", NEW);
        fresh.consul_passing = Some(false);
        let pods = [pod("sl-0", OLD), pod("sl-1", OLD), fresh.clone()];
        assert!(matches!(plan(&sts(3), &pods, "sl-0"), Action::Wait(r) if r.contains("Consul")));
        let pods = [pod("sl-0", OLD), fresh.clone()];
        assert!(matches!(plan(&sts(2), &pods, "sl-0"), Action::Wait(_)));
        fresh.consul_passing = None;
        let pods = [pod("sl-0", OLD), fresh];
        assert_eq!(deleted(&plan(&sts(2), &pods, "sl-0")), Some("sl-0"));
    }

    /// A terminating pod holds the rollout.
    #[test]
    fn terminating_pod_waits() {
        let mut going = pod("sl-2", OLD);
        going.terminating = true;
        let pods = [pod("sl-0", OLD), pod("sl-1", OLD), going];
        assert!(matches!(plan(&sts(3), &pods, "sl-0"), Action::Wait(r) if r.contains("terminating")));
    }

    /// A deleted pod not yet recreated (fewer pods than replicas) holds the rollout.
    #[test]
    fn missing_pod_waits() {
        let pods = [pod("sl-0", OLD), pod("sl-1", OLD)];
        assert!(matches!(plan(&sts(3), &pods, "sl-0"), Action::Wait(r) if r.contains("2 of 3")));
    }

    /// Only the leader is out of date and an up-to-date follower runs: the leader deletes itself.
    #[test]
    fn leader_last_with_successor() {
        let pods = [pod("sl-0", OLD), pod("sl-1", NEW), pod("sl-2", NEW)];
        assert_eq!(deleted(&plan(&sts(3), &pods, "sl-0")), Some("sl-0"));
    }

    /// Only the leader is out of date and no up-to-date follower runs: wait, never delete self.
    #[test]
    fn leader_waits_without_successor() {
        let pods = [pod("sl-0", OLD)];
        assert!(
            matches!(plan(&sts(1), &pods, "sl-0"), Action::Wait(r) if r.contains("no up-to-date follower"))
        );
    }

    /// A follower with no revision label counts as out of date.
    #[test]
    fn missing_revision_label_is_stale() {
        let mut unlabelled = pod("sl-1", NEW);
        unlabelled.revision = None;
        let pods = [pod("sl-0", NEW), unlabelled];
        assert_eq!(deleted(&plan(&sts(2), &pods, "sl-0")), Some("sl-1"));
    }

    /// Unknown or unobserved update revision: wait.
    #[test]
    fn unknown_revision_waits() {
        let pods = [pod("sl-0", OLD), pod("sl-1", OLD)];
        let mut view = sts(2);
        view.observed = false;
        assert!(matches!(plan(&view, &pods, "sl-0"), Action::Wait(_)));
        view.observed = true;
        view.update_revision.clear();
        assert!(matches!(plan(&view, &pods, "sl-0"), Action::Wait(_)));
    }

    /// Walking a 3-pod rollout step by step deletes exactly one pod per step, followers first,
    /// the leader last, and ends Done.
    #[test]
    fn full_rollout_sequence() {
        let mut pods = vec![pod("sl-0", OLD), pod("sl-1", OLD), pod("sl-2", OLD)];
        let mut order = Vec::new();
        for _ in 0..10 {
            match plan(&sts(3), &pods, "sl-0") {
                Action::Done => break,
                Action::Wait(r) => panic!("unexpected wait: {r}"),
                Action::Delete(p) => {
                    order.push(p.name.clone());
                    // The StatefulSet recreates it at the new revision, running.
                    let slot = pods.iter_mut().find(|x| x.name == p.name).unwrap();
                    *slot = pod(&p.name, NEW);
                }
            }
        }
        assert_eq!(order, ["sl-2", "sl-1", "sl-0"]);
    }

    /// The view of an API pod reads the revision label, running + started containers and the
    /// deletion timestamp.
    #[test]
    fn pod_view_from_api_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sl-1", "uid": "u1", "labels": {"controller-revision-hash": NEW}},
            "status": {"phase": "Running", "containerStatuses": [{
                "name": "node", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            }]}
        }))
        .unwrap();
        let view = PodView::from_pod(&pod);
        assert_eq!(view.revision.as_deref(), Some(NEW));
        assert!(view.running && !view.terminating);
        let pending: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sl-2", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        let view = PodView::from_pod(&pending);
        assert!(!view.running && view.terminating && view.revision.is_none());
    }
}
