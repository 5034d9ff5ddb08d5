//! Kubernetes Events (events.k8s.io/v1, through kube's `Recorder`) on leadership changes:
//! `BecameLeader` with the term, `SteppedDown` with the reason. They regard the node's own pod
//! and name the LogCluster as related object, so both `kubectl describe` views show them.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};

use crate::election::{LeaderState, Role};

/// Reason of the event recorded when this node becomes leader.
pub const BECAME_LEADER: &str = "BecameLeader";
/// Reason of the event recorded when this node stops being leader.
pub const STEPPED_DOWN: &str = "SteppedDown";

/// The event for a change from `leading` (our term while we led, `None` when not leading) to
/// `now`; `None` when leadership did not change.
pub fn leadership_event(leading: Option<u64>, now: &LeaderState) -> Option<Event> {
    match (leading, now.role) {
        (Some(term), Role::Leader) if term == now.term => None,
        (_, Role::Leader) => Some(Event {
            type_: EventType::Normal,
            reason: BECAME_LEADER.into(),
            note: Some(format!("became leader for term {}", now.term)),
            action: "Elected".into(),
            secondary: None,
        }),
        (Some(term), _) => Some(stepped_down(term, &now.reason)),
        (None, _) => None,
    }
}

/// The `SteppedDown` event for `term`, with why.
pub fn stepped_down(term: u64, reason: &str) -> Event {
    Event {
        type_: EventType::Normal,
        reason: STEPPED_DOWN.into(),
        note: Some(truncate(&format!("stepped down from term {term}: {reason}"))),
        action: "Resigned".into(),
        secondary: None,
    }
}

/// The Event API caps `note` at 1 kB.
fn truncate(note: &str) -> String {
    let mut end = note.len().min(1000);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_string()
}

/// A reference to pod `name` in `namespace`.
pub fn pod_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..ObjectReference::default()
    }
}

/// A reference to LogCluster `name` in `namespace`.
pub fn logcluster_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("simpleloggers.io/v1alpha1".into()),
        kind: Some("LogCluster".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn state(role: Role, term: u64, reason: &str) -> LeaderState {
        LeaderState {
            role,
            case: crate::election::ElectionCase::Normal,
            term,
            leader: None,
            lease_until: None,
            session: None,
            consul_reachable: true,
            consul_denied: None,
            reason: reason.into(),
            since: SystemTime::now(),
            transitions: 1,
        }
    }

    /// Becoming leader, a new term while leading, and stepping down each give one event; no
    /// change gives none.
    #[test]
    fn transitions() {
        let e = leadership_event(None, &state(Role::Leader, 7, "")).unwrap();
        assert_eq!(e.reason, BECAME_LEADER);
        assert!(e.note.unwrap().contains("term 7"));
        assert!(leadership_event(Some(7), &state(Role::Leader, 7, "")).is_none());
        assert_eq!(
            leadership_event(Some(7), &state(Role::Leader, 9, ""))
                .unwrap()
                .reason,
            BECAME_LEADER
        );
        let e = leadership_event(Some(7), &state(Role::Follower, 8, "lease lapsed")).unwrap();
        assert_eq!(e.reason, STEPPED_DOWN);
        assert!(e.note.unwrap().contains("lease lapsed"));
        assert!(leadership_event(None, &state(Role::Follower, 8, "")).is_none());
        assert!(leadership_event(None, &state(Role::Stopping, 0, "")).is_none());
    }

    /// Long reasons are cut to the API's limit without splitting a character.
    #[test]
    fn long_notes_are_truncated() {
        let e = stepped_down(1, &"é".repeat(2000));
        assert!(e.note.unwrap().len() <= 1000);
    }
}
