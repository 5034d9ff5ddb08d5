//! Shared harness for the dev-consul black-box tests: start a server on 127.0.0.1:0, talk to it
//! with raw reqwest, and poll with a deadline.
#![allow(dead_code)]

use std::{future::Future, time::Duration};

use devconsul::{Config, DevConsulHandle};
use reqwest::{Method, Response};
use serde_json::Value;

/// A running dev server plus an HTTP client pointed at it.
pub struct Dev {
    /// Keeps the server alive; stops it on drop.
    pub handle: DevConsulHandle,
    /// Plain client (no default headers).
    pub http: reqwest::Client,
}

/// Starts a dev server with default settings on an ephemeral port.
pub async fn start() -> anyhow::Result<Dev> {
    start_with(Config::ephemeral()).await
}

/// Starts a dev server with `config` (its `listen` should have port 0).
pub async fn start_with(config: Config) -> anyhow::Result<Dev> {
    let handle = devconsul::spawn(config).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    Ok(Dev { handle, http })
}

impl Dev {
    /// Absolute URL of `path` (which starts with `/v1/...`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.url())
    }

    /// Sends a request with an optional body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<Response> {
        Ok(self
            .http
            .request(method, self.url(path))
            .body(body)
            .send()
            .await?)
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        Ok(self.http.get(self.url(path)).send().await?)
    }

    /// PUT with a body.
    pub async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> anyhow::Result<Response> {
        self.send(Method::PUT, path, body).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Response> {
        self.send(Method::DELETE, path, "").await
    }

    /// GET and parse JSON, asserting 200.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.get(path).await?;
        anyhow::ensure!(resp.status() == 200, "GET {path}: {}", resp.status());
        Ok(resp.json().await?)
    }

    /// PUT and parse JSON, asserting 200.
    pub async fn put_json(&self, path: &str, body: impl Into<reqwest::Body>) -> anyhow::Result<Value> {
        let resp = self.put(path, body).await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status == 200, "PUT {path}: {status} {text}");
        Ok(serde_json::from_str(&text)?)
    }

    /// Creates a session from a JSON body and returns its ID.
    pub async fn session(&self, body: &str) -> anyhow::Result<String> {
        let v = self.put_json("/v1/session/create", body.to_string()).await?;
        v["ID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no ID in {v}"))
    }

    /// Number of sessions `session/info` reports for `id` (0 or 1).
    pub async fn session_exists(&self, id: &str) -> anyhow::Result<bool> {
        let v = self.get_json(&format!("/v1/session/info/{id}")).await?;
        Ok(v.as_array().is_some_and(|a| !a.is_empty()))
    }

    /// The single KV entry for `key`, or `None` on 404.
    pub async fn kv(&self, key: &str) -> anyhow::Result<Option<Value>> {
        let resp = self.get(&format!("/v1/kv/{key}")).await?;
        if resp.status() == 404 {
            return Ok(None);
        }
        let v: Value = resp.json().await?;
        Ok(Some(v[0].clone()))
    }
}

/// A response header as a string (`""` when absent).
pub fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `X-Consul-Index` as a number (0 when absent).
pub fn index(resp: &Response) -> u64 {
    header(resp, "X-Consul-Index").parse().unwrap_or(0)
}

/// Polls `check` every 50 ms until it returns true; fails after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > until {
            anyhow::bail!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
