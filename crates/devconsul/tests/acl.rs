//! Rule T with `--acl-config`: a token's policy decides each endpoint the way Consul's does —
//! denials are 403 `Permission denied: token with AccessorID '<id>' lacks permission
//! '<res>:<level>' on "<name>"`, an unknown secret 403 `ACL not found`, lists and health are
//! filtered, a denied txn op rolls the whole transaction back (409, its `What` the denial).

mod support;

use std::path::PathBuf;

use devconsul::{Config, DevConsulError};
use reqwest::{Method, Response};
use serde_json::{json, Value};
use support::{start_with, Dev};

/// Writes `acl` to a fresh file under the temp directory and returns its path.
fn acl_file(acl: &Value) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "devconsul-acl-{}-{}.json",
        std::process::id(),
        uuid_like()
    ));
    std::fs::write(&path, acl.to_string()).expect("write the ACL file");
    path
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A server whose token `app` may write `app/`, read `shared/`, write sessions on any node and
/// the `web` service, and read nodes; `root` is a management token.
async fn server() -> anyhow::Result<Dev> {
    let path = acl_file(&json!({
        "Tokens": [
            {"AccessorID": "acc-app", "SecretID": "app", "Rules": {
                "key_prefix": {"app/": {"policy": "write"}, "shared/": {"policy": "read"}},
                "session_prefix": {"": {"policy": "write"}},
                "service": {"web": {"policy": "write"}},
                "node_prefix": {"": {"policy": "read"}}
            }},
            {"AccessorID": "acc-root", "SecretID": "root", "Management": true}
        ]
    }));
    let dev = start_with(Config {
        acl_config: Some(path),
        ..Config::ephemeral()
    })
    .await?;
    Ok(dev)
}

async fn as_token(
    dev: &Dev,
    token: &str,
    method: Method,
    path: &str,
    body: &str,
) -> anyhow::Result<Response> {
    Ok(dev
        .http
        .request(method, dev.url(path))
        .header("X-Consul-Token", token)
        .body(body.to_string())
        .send()
        .await?)
}

/// KV: write inside the prefix, read-only elsewhere, Consul's denial text, an unknown secret,
/// and a recursive read that filters what the token cannot see.
#[tokio::test]
async fn kv_rules() -> anyhow::Result<()> {
    let dev = server().await?;
    assert_eq!(
        as_token(&dev, "app", Method::PUT, "/v1/kv/app/x", "1")
            .await?
            .status(),
        200
    );
    let denied = as_token(&dev, "app", Method::PUT, "/v1/kv/shared/x", "1").await?;
    assert_eq!(denied.status(), 403);
    assert_eq!(
        denied.text().await?,
        "Permission denied: token with AccessorID 'acc-app' lacks permission 'key:write' on \"shared/x\""
    );
    assert_eq!(
        as_token(&dev, "root", Method::PUT, "/v1/kv/shared/x", "2")
            .await?
            .status(),
        200
    );
    assert_eq!(
        as_token(&dev, "root", Method::PUT, "/v1/kv/other/x", "3")
            .await?
            .status(),
        200
    );
    assert_eq!(
        as_token(&dev, "app", Method::GET, "/v1/kv/shared/x", "")
            .await?
            .status(),
        200
    );
    let hidden = as_token(&dev, "app", Method::GET, "/v1/kv/other/x", "").await?;
    assert_eq!(hidden.status(), 403);
    assert!(hidden.text().await?.contains("'key:read' on \"other/x\""));
    let all: Value = as_token(&dev, "app", Method::GET, "/v1/kv/?recurse", "")
        .await?
        .json()
        .await?;
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/x", "shared/x"], "other/x is filtered out");
    let unknown = as_token(&dev, "nope", Method::GET, "/v1/kv/app/x", "").await?;
    assert_eq!(
        (unknown.status().as_u16(), unknown.text().await?),
        (403, "ACL not found".to_string())
    );
    let anonymous = dev.get("/v1/kv/app/x").await?;
    assert_eq!(anonymous.status(), 403);
    assert!(anonymous
        .text()
        .await?
        .starts_with("Permission denied: anonymous token lacks permission 'key:read'"));
    let tree = as_token(&dev, "app", Method::DELETE, "/v1/kv/?recurse", "").await?;
    assert_eq!(
        tree.status(),
        403,
        "a recursive delete needs write on the whole prefix"
    );
    Ok(())
}

/// Txn: one denied op rolls everything back with a 409 whose error is the denial.
#[tokio::test]
async fn txn_rules() -> anyhow::Result<()> {
    let dev = server().await?;
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "app/a", "Value": "dg=="}},
        {"KV": {"Verb": "set", "Key": "shared/b", "Value": "dg=="}}
    ]);
    let resp = as_token(&dev, "app", Method::PUT, "/v1/txn", &ops.to_string()).await?;
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await?;
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert!(body["Errors"][0]["What"].as_str().unwrap().starts_with(
        "Permission denied: token with AccessorID 'acc-app' lacks permission 'key:write' on \"shared/b\""
    ));
    let a = as_token(&dev, "root", Method::GET, "/v1/kv/app/a", "").await?;
    assert_eq!(a.status(), 404, "nothing applied");
    let ok = json!([{"KV": {"Verb": "set", "Key": "app/a", "Value": "dg=="}}]);
    assert_eq!(
        as_token(&dev, "app", Method::PUT, "/v1/txn", &ok.to_string())
            .await?
            .status(),
        200
    );
    Ok(())
}

/// Sessions, services and health: write needs the rule, lists and health filter.
#[tokio::test]
async fn session_service_and_health_rules() -> anyhow::Result<()> {
    let dev = server().await?;
    let created = as_token(&dev, "app", Method::PUT, "/v1/session/create", "{}").await?;
    assert_eq!(created.status(), 200);
    let id = created.json::<Value>().await?["ID"].as_str().unwrap().to_string();
    let renewed = as_token(&dev, "app", Method::PUT, &format!("/v1/session/renew/{id}"), "").await?;
    assert_eq!(renewed.status(), 200);
    let listed: Value = dev.get("/v1/session/list").await?.json().await?;
    assert_eq!(listed, json!([]), "the anonymous token sees no session");
    let anon = dev.put(&format!("/v1/session/renew/{id}"), "").await?;
    assert_eq!(anon.status(), 403);
    assert!(anon.text().await?.contains("'session:write' on \"dev-consul\""));

    let web = r#"{"Name": "web", "ID": "web-1", "Port": 80}"#;
    assert_eq!(
        as_token(&dev, "app", Method::PUT, "/v1/agent/service/register", web)
            .await?
            .status(),
        200
    );
    let db = r#"{"Name": "db", "ID": "db-1", "Port": 5432}"#;
    let denied = as_token(&dev, "app", Method::PUT, "/v1/agent/service/register", db).await?;
    assert_eq!(denied.status(), 403);
    assert!(denied.text().await?.contains("'service:write' on \"db\""));
    assert_eq!(
        as_token(&dev, "root", Method::PUT, "/v1/agent/service/register", db)
            .await?
            .status(),
        200
    );
    let health: Value = as_token(&dev, "app", Method::GET, "/v1/health/service/web", "")
        .await?
        .json()
        .await?;
    assert_eq!(health.as_array().unwrap().len(), 1);
    let hidden: Value = as_token(&dev, "app", Method::GET, "/v1/health/service/db", "")
        .await?
        .json()
        .await?;
    assert_eq!(hidden, json!([]), "no service:read on db: filtered, not refused");
    let dereg = as_token(&dev, "app", Method::PUT, "/v1/agent/service/deregister/db-1", "").await?;
    assert_eq!(dereg.status(), 403);
    let status = dev.get("/v1/status/leader").await?;
    assert_eq!(status.status(), 200, "status needs no token");
    Ok(())
}

/// A bad ACL file stops the server from starting, naming the file.
#[tokio::test]
async fn bad_file_is_refused() {
    let path =
        acl_file(&json!({"Tokens": [{"SecretID": "x", "Rules": {"key": {"k": {"policy": "owner"}}}}]}));
    let err = devconsul::spawn(Config {
        acl_config: Some(path.clone()),
        ..Config::ephemeral()
    })
    .await
    .expect_err("refused");
    assert!(matches!(err, DevConsulError::Acl(_)), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}
