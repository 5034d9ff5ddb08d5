//! TLS to an external Consul: a TLS-terminating proxy (rustls, certificates made by rcgen at
//! test time, client certificates required) in front of the dev Consul. With the right CA
//! (`CONSUL_CACERT`), a client certificate (`CONSUL_CLIENT_CERT`/`CONSUL_CLIENT_KEY`) and the
//! certificate's name (`CONSUL_TLS_SERVER_NAME`), the client and a whole node work; a wrong CA,
//! no client certificate or the wrong name fail with an error that says so.

use std::{path::Path, sync::Arc, time::Duration};

use clap::Parser;
use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use simpleloggers::{
    consul::{ConsulClient, ConsulConfig, ConsulError, PutOptions},
    local_cluster::eventually,
    node::NodeConfig,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    rustls::{
        crypto::ring::default_provider,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    TlsAcceptor,
};
use tokio_util::sync::CancellationToken;

/// The name in the server certificate (and nothing else: not 127.0.0.1).
const SERVER_NAME: &str = "consul.test";

/// A CA and a certificate it signed.
struct Pki {
    ca: Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    fn issue(&self, name: &str) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        (cert, key)
    }
}

/// Serves TLS on 127.0.0.1:0 (client certificates signed by `pki` required) and pipes every
/// connection to `upstream`; answers its address.
async fn tls_proxy(pki: &Pki, upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let (cert, key) = pki.issue(SERVER_NAME);
    let provider = Arc::new(default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

/// Writes the PEM files a client needs into `dir`: the CA, and a client certificate and key.
fn client_files(dir: &Path, pki: &Pki, ca_of_server: &Pki) -> (String, String, String) {
    let (cert, key) = pki.issue("simpleloggers-node");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    (
        write("ca.pem", ca_of_server.ca.pem()),
        write("client.pem", cert.pem()),
        write("client-key.pem", key.serialize_pem()),
    )
}

fn config(
    proxy: std::net::SocketAddr,
    ca: &str,
    cert: Option<(&str, &str)>,
    name: Option<&str>,
) -> ConsulConfig {
    let mut c = ConsulConfig::new(format!("https://{proxy}"));
    c.cacert = Some(ca.into());
    if let Some((cert, key)) = cert {
        c.client_cert = Some(cert.into());
        c.client_key = Some(key.into());
    }
    c.tls_server_name = name.map(String::from);
    c
}

/// The client through the proxy: served with everything right; refused, with the reason in the
/// error, with a wrong CA, without a client certificate, or without the server name.
#[tokio::test]
async fn client_needs_the_right_ca_certificate_and_name() {
    let consul = devconsul::spawn(devconsul::Config::ephemeral()).await.unwrap();
    let pki = Pki::new();
    let proxy = tls_proxy(&pki, consul.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = client_files(dir.path(), &pki, &pki);

    let good = ConsulClient::new(&config(proxy, &ca, Some((&cert, &key)), Some(SERVER_NAME))).unwrap();
    assert!(good.kv_put("tls/k", "v", &PutOptions::default()).await.unwrap());
    assert_eq!(good.status_leader().await.unwrap(), "127.0.0.1:8300");

    let other = Pki::new();
    let wrong_ca_dir = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = client_files(wrong_ca_dir.path(), &other, &other);
    let err = ConsulClient::new(&config(proxy, &wrong_ca, Some((&cert, &key)), Some(SERVER_NAME)))
        .unwrap()
        .status_leader()
        .await
        .unwrap_err();
    assert!(matches!(err, ConsulError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "a wrong CA: {err}");

    let err = ConsulClient::new(&config(proxy, &ca, Some((&cert, &key)), None))
        .unwrap()
        .status_leader()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "no server name: {err}");

    let err = ConsulClient::new(&config(proxy, &ca, None, Some(SERVER_NAME)))
        .unwrap()
        .status_leader()
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "no client certificate: {err}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    node: NodeConfig,
}

/// A node whose Consul is behind the proxy: with the right CA it becomes the ready leader; with
/// a wrong CA it stays unready and its status names the certificate problem.
#[tokio::test]
async fn node_through_tls() {
    let consul = devconsul::spawn(devconsul::Config {
        session_ttl_min: Duration::from_secs(1),
        ..devconsul::Config::ephemeral()
    })
    .await
    .unwrap();
    let pki = Pki::new();
    let proxy = tls_proxy(&pki, consul.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = client_files(dir.path(), &pki, &pki);
    let other = Pki::new();
    let wrong_ca_dir = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = client_files(wrong_ca_dir.path(), &other, &other);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (name, ca, works) in [("tls-good", &ca, true), ("tls-bad", &wrong_ca, false)] {
        let data = dir.path().join(name);
        let addr = format!("https://{proxy}");
        let data_dir = data.display().to_string();
        let args = vec![
            "node",
            "--name",
            name,
            "--data-dir",
            data_dir.as_str(),
            "--consul-addr",
            addr.as_str(),
            "--consul-cacert",
            ca.as_str(),
            "--consul-client-cert",
            cert.as_str(),
            "--consul-client-key",
            key.as_str(),
            "--consul-tls-server-name",
            SERVER_NAME,
            "--session-ttl",
            "2s",
            "--lock-delay",
            "1s",
            "--renew-interval",
            "200ms",
            "--check-interval",
            "250ms",
        ];
        let config = Cli::try_parse_from(args).unwrap().node;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let node = tokio::spawn(simpleloggers::node::run(config, listener, shutdown.clone()));
        if works {
            let ready = eventually(Duration::from_secs(30), || async {
                let resp = http.get(format!("{url}/readyz")).send().await.ok()?;
                (resp.status() == 200).then_some(())
            })
            .await;
            assert!(ready.is_some(), "the node leads through TLS");
        } else {
            let reason = eventually(Duration::from_secs(30), || async {
                let status: serde_json::Value = http
                    .get(format!("{url}/api/v1/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let reason = status["reason"].as_str()?.to_string();
                reason.contains("certificate").then_some((reason, status))
            })
            .await;
            let (reason, status) = reason.expect("the status names the certificate problem");
            assert_eq!(status["ready"], false, "{reason}");
            assert_eq!(status["writes"]["reason"], "consul_unreachable", "{status}");
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), node)
            .await
            .expect("the node stops")
            .expect("the node task")
            .expect("the node ran");
    }
}
