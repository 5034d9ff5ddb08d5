//! Our typed Consul client against the dev Consul over real HTTP on 127.0.0.1: every call the
//! product makes, the errors it tells apart, and the blocking-query watcher.

use std::time::{Duration, Instant};

use devconsul::DevConsulHandle;
use simpleloggers::consul::{
    CheckDefinition, CheckStatus, ConsulClient, ConsulConfig, ConsulError, DeleteOptions, PutOptions,
    QueryOptions, ServiceCheckRef, ServiceRegistration, SessionRequest, TxnOp, TxnOutcome, Watcher,
};

async fn server() -> (DevConsulHandle, ConsulClient) {
    let handle = devconsul::spawn(devconsul::Config::ephemeral()).await.unwrap();
    let client = ConsulClient::from_addr(handle.url()).unwrap();
    (handle, client)
}

/// KV: put/get bytes, flags, cas, list, keys with a separator, delete (cas, recurse).
#[tokio::test]
async fn kv_round_trip() {
    let (_h, c) = server().await;
    let none = QueryOptions::default();
    assert!(c.kv_get("a/missing", &none).await.unwrap().0.is_none());
    assert!(c
        .kv_put(
            "a/b",
            vec![0, 1, 255],
            &PutOptions {
                flags: Some(42),
                ..Default::default()
            }
        )
        .await
        .unwrap());
    let (pair, meta) = c.kv_get("a/b", &none).await.unwrap();
    let pair = pair.unwrap();
    assert_eq!((pair.value.as_slice(), pair.flags), (&[0u8, 1, 255][..], 42));
    assert_eq!(
        meta.index, pair.modify_index,
        "a key's read index is its ModifyIndex"
    );
    assert!(meta.known_leader);
    let stale = pair.modify_index;
    assert!(!c
        .kv_put(
            "a/b",
            "x",
            &PutOptions {
                cas: Some(0),
                ..Default::default()
            }
        )
        .await
        .unwrap());
    assert!(c
        .kv_put(
            "a/b",
            "x",
            &PutOptions {
                cas: Some(stale),
                ..Default::default()
            }
        )
        .await
        .unwrap());
    assert!(!c
        .kv_put(
            "a/b",
            "y",
            &PutOptions {
                cas: Some(stale),
                ..Default::default()
            }
        )
        .await
        .unwrap());
    c.kv_put("a/c/d", "", &PutOptions::default()).await.unwrap();
    let (list, _) = c.kv_list("a/", &none).await.unwrap();
    assert_eq!(
        list.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["a/b", "a/c/d"]
    );
    let (keys, _) = c.kv_keys("a/", Some("/"), &none).await.unwrap();
    assert_eq!(keys, ["a/b", "a/c/"]);
    assert!(c.kv_list("zzz/", &none).await.unwrap().0.is_empty());
    assert!(!c
        .kv_delete(
            "a/b",
            &DeleteOptions {
                cas: Some(stale),
                ..Default::default()
            }
        )
        .await
        .unwrap());
    assert!(c
        .kv_delete(
            "a/",
            &DeleteOptions {
                recurse: true,
                ..Default::default()
            }
        )
        .await
        .unwrap());
    assert!(c.kv_list("a/", &none).await.unwrap().0.is_empty());
}

/// Sessions and locks: create, acquire (LockIndex 1), a second session is refused, release,
/// renew, info, list, destroy; renewing a destroyed session is NotFound.
#[tokio::test]
async fn sessions_and_locks() {
    let (_h, c) = server().await;
    let request = SessionRequest {
        name: "test".into(),
        ttl: Some(Duration::from_secs(15)),
        lock_delay: Some(Duration::ZERO),
        ..Default::default()
    };
    let s1 = c.session_create(&request).await.unwrap();
    let s2 = c.session_create(&request).await.unwrap();
    assert!(c.kv_acquire("lock", &s1, "one").await.unwrap());
    assert!(!c.kv_acquire("lock", &s2, "two").await.unwrap());
    let (pair, _) = c.kv_get("lock", &QueryOptions::default()).await.unwrap();
    let pair = pair.unwrap();
    assert_eq!((pair.lock_index, pair.session.as_deref()), (1, Some(s1.as_str())));
    let renewed = c.session_renew(&s1).await.unwrap();
    assert_eq!(renewed.id, s1);
    assert_eq!(renewed.node_checks, ["serfHealth"]);
    let (info, _) = c.session_info(&s1, &QueryOptions::default()).await.unwrap();
    assert_eq!(info.unwrap().name, "test");
    assert_eq!(c.session_list(&QueryOptions::default()).await.unwrap().0.len(), 2);
    assert!(c.kv_release("lock", &s1, "released").await.unwrap());
    assert!(
        c.kv_acquire("lock", &s2, "two").await.unwrap(),
        "no lock-delay after a release"
    );
    assert!(c.session_destroy(&s1).await.unwrap());
    assert!(c
        .session_info(&s1, &QueryOptions::default())
        .await
        .unwrap()
        .0
        .is_none());
    assert!(matches!(
        c.session_renew(&s1).await,
        Err(ConsulError::NotFound { .. })
    ));
    let err = c.kv_acquire("lock", "not-a-session", "x").await.unwrap_err();
    assert!(
        matches!(&err, ConsulError::Unavailable { status: Some(_), message, .. } if message.contains("invalid session")),
        "{err}"
    );
}

/// Agent and health: a service with a TTL check is critical at first, passes after `pass`,
/// shows in `?passing`, and a session bound to it dies when it fails.
#[tokio::test]
async fn agent_checks_health_and_bound_sessions() {
    let (_h, c) = server().await;
    let me = c.agent_self().await.unwrap();
    assert_eq!(me.datacenter, "dc1");
    let registration = ServiceRegistration {
        id: "svc-1".into(),
        name: "svc".into(),
        address: "127.0.0.1".into(),
        port: Some(9),
        checks: vec![CheckDefinition {
            check_id: "svc-1:ttl".into(),
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.agent_service_register(&registration).await.unwrap();
    let passing = |c: ConsulClient| async move {
        c.health_service("svc", true, &QueryOptions::default())
            .await
            .unwrap()
            .0
    };
    assert!(passing(c.clone()).await.is_empty(), "a new check starts critical");
    let bound = SessionRequest {
        service_checks: vec![ServiceCheckRef {
            id: "svc-1:ttl".into(),
            namespace: String::new(),
        }],
        ..Default::default()
    };
    assert!(
        c.session_create(&bound).await.is_err(),
        "sessions cannot bind to a critical check"
    );
    c.agent_check_set("svc-1:ttl", CheckStatus::Passing, "ok")
        .await
        .unwrap();
    let entries = passing(c.clone()).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].service.port, 9);
    assert_eq!(entries[0].aggregated_status(), CheckStatus::Passing);
    let session = c.session_create(&bound).await.unwrap();
    c.agent_check_update("svc-1:ttl", CheckStatus::Critical, "down")
        .await
        .unwrap();
    assert!(
        c.session_info(&session, &QueryOptions::default())
            .await
            .unwrap()
            .0
            .is_none(),
        "invalidated"
    );
    assert!(matches!(
        c.agent_check_set("nope", CheckStatus::Passing, "").await,
        Err(ConsulError::NotFound { .. })
    ));
    c.agent_service_deregister("svc-1").await.unwrap();
    assert!(c
        .health_service("svc", false, &QueryOptions::default())
        .await
        .unwrap()
        .0
        .is_empty());
}

/// Transactions: a check-and-lock commits atomically; a failed check rolls everything back.
#[tokio::test]
async fn transactions() {
    let (_h, c) = server().await;
    let s = c.session_create(&SessionRequest::default()).await.unwrap();
    let ops = [
        TxnOp::CheckNotExists { key: "t/lock".into() },
        TxnOp::Lock {
            key: "t/lock".into(),
            value: b"v".to_vec(),
            flags: 0,
            session: s.clone(),
        },
        TxnOp::Set {
            key: "t/data".into(),
            value: b"d".to_vec(),
            flags: 3,
        },
    ];
    let TxnOutcome::Committed(results) = c.txn(&ops).await.unwrap() else {
        panic!("should commit")
    };
    assert_eq!(results.len(), 2);
    assert_eq!(
        results[0].modify_index, results[1].modify_index,
        "one index for the whole transaction"
    );
    let again = c.txn(&ops).await.unwrap();
    let TxnOutcome::RolledBack(errors) = again else {
        panic!("should roll back")
    };
    assert_eq!(errors[0].op_index, 0);
    let ops = [
        TxnOp::CheckSession {
            key: "t/lock".into(),
            session: s.clone(),
        },
        TxnOp::Delete { key: "t/data".into() },
    ];
    assert!(matches!(c.txn(&ops).await.unwrap(), TxnOutcome::Committed(_)));
    assert!(c
        .kv_get("t/data", &QueryOptions::default())
        .await
        .unwrap()
        .0
        .is_none());
}

/// Errors are told apart: 403 with a wrong token, 400 from Consul, connection refused.
#[tokio::test]
async fn error_kinds() {
    let mut config = devconsul::Config::ephemeral();
    config.acl_token = Some("secret".into());
    let handle = devconsul::spawn(config).await.unwrap();
    let anonymous = ConsulClient::from_addr(handle.url()).unwrap();
    let err = anonymous.kv_get("k", &QueryOptions::default()).await.unwrap_err();
    assert!(matches!(err, ConsulError::PermissionDenied { .. }), "{err}");
    let mut with_token = ConsulConfig::new(handle.url());
    with_token.token = Some("secret".into());
    let c = ConsulClient::new(&with_token).unwrap();
    assert!(c.kv_get("k", &QueryOptions::default()).await.unwrap().0.is_none());
    let bad_ttl = SessionRequest {
        ttl: Some(Duration::from_secs(100_000)),
        ..Default::default()
    };
    assert!(matches!(
        c.session_create(&bad_ttl).await,
        Err(ConsulError::Unavailable { status: Some(_), .. })
    ));
    let too_big = c
        .kv_put("big", vec![0u8; 600 * 1024], &PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(too_big, ConsulError::BadRequest { .. }), "{too_big}");
    let addr = handle.addr();
    handle.stop().await.unwrap();
    let down = ConsulClient::from_addr(format!("{addr}")).unwrap();
    let err = down.kv_get("k", &QueryOptions::default()).await.unwrap_err();
    assert!(
        err.is_unavailable() && matches!(err, ConsulError::Unavailable { status: None, .. }),
        "{err}"
    );
}

/// A request that outlives the client's timeout is a Timeout error, not a hang.
#[tokio::test]
async fn timeouts_are_reported() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts connections and never answers.
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let c = ConsulClient::from_addr(addr.to_string())
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let err = c.kv_get("k", &QueryOptions::default()).await.unwrap_err();
    assert!(matches!(err, ConsulError::Timeout { .. }), "{err}");
}

/// The watcher's blocking query returns when the key changes, not after its wait.
#[tokio::test]
async fn watcher_returns_on_change() {
    let (_h, c) = server().await;
    c.kv_put("w", "1", &PutOptions::default()).await.unwrap();
    let mut watcher = Watcher::new(Duration::from_secs(30));
    let fetch = |c: ConsulClient| {
        move |opts: QueryOptions| {
            let c = c.clone();
            async move { c.kv_get("w", &opts).await }
        }
    };
    let first = watcher.next(fetch(c.clone())).await.unwrap().unwrap();
    assert_eq!(first.value, b"1");
    let writer = tokio::spawn({
        let c = c.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.kv_put("w", "2", &PutOptions::default()).await.unwrap();
        }
    });
    let started = Instant::now();
    let second = watcher.next(fetch(c.clone())).await.unwrap().unwrap();
    assert_eq!(second.value, b"2");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "woken by the write, not by the 30 s wait"
    );
    writer.await.unwrap();
}
