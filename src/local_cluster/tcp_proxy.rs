//! A TCP proxy on 127.0.0.1:0 in front of one upstream address, for fault injection: the harness
//! puts one between each node and the dev Consul ([`ClusterOptions::consul_proxies`]
//! (super::ClusterOptions::consul_proxies)), and the chaos suite makes it pass bytes, black-hole
//! them (a partition: connections stay open, nothing moves, callers time out), refuse (every
//! connection reset at once, as a crashed peer's port) or delay every chunk. Each connection is
//! two byte pumps, one per direction, that look at the mode before forwarding each chunk.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use super::LocalClusterError;

/// Bytes read from one side before they are forwarded.
const CHUNK: usize = 16 * 1024;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward everything at once.
    Pass,
    /// Accept connections but forward nothing, either way, until the mode changes: a network
    /// partition (bytes held back are delivered once it heals, as TCP would retransmit them).
    Blackhole,
    /// Close every open connection and each new one at once: a peer whose port is closed.
    Refuse,
    /// Forward every chunk after this delay (each direction keeps its order).
    Delay(Duration),
}

/// Counters shared by the accept loop and the pumps.
#[derive(Debug, Default)]
struct Counters {
    /// Connections accepted (including those refused).
    accepted: AtomicU64,
    /// Bytes forwarded, both directions.
    forwarded: AtomicU64,
}

/// A running TCP proxy; stops (and closes every connection) when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    /// Where it listens.
    addr: SocketAddr,
    /// Where it forwards to.
    upstream: SocketAddr,
    /// The mode every pump follows.
    mode: watch::Sender<ProxyMode>,
    /// What it did so far.
    counters: Arc<Counters>,
    /// The accept loop (its connections end with it: they hold a mode receiver).
    task: JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Ends every pump: they treat a closed mode channel as a refusal.
        self.mode.send_replace(ProxyMode::Refuse);
    }
}

impl TcpProxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `upstream`, passing traffic.
    ///
    /// # Errors
    /// The listening socket cannot be bound.
    pub async fn start(upstream: SocketAddr) -> Result<Self, LocalClusterError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(LocalClusterError::io("cannot bind the TCP proxy on 127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(LocalClusterError::io("cannot read the TCP proxy's address"))?;
        let (mode, _) = watch::channel(ProxyMode::Pass);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(listener, upstream, mode.clone(), counters.clone()));
        Ok(TcpProxy {
            addr,
            upstream,
            mode,
            counters,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`: what a node is given instead of its upstream's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// What it does now.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Changes what it does, for open connections and new ones alike.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.counters.forwarded.load(Ordering::Relaxed)
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if *mode.borrow() == ProxyMode::Refuse {
            drop(client);
            continue;
        }
        let modes = mode.subscribe();
        let counters = counters.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // Either direction ending (EOF, error, refusal) ends the connection.
            tokio::select! {
                _ = pump(client_read, server_write, modes.clone(), &counters) => {}
                _ = pump(server_read, client_write, modes, &counters) => {}
            }
        });
    }
}

/// Copies `from` to `to` chunk by chunk, each chunk as the mode says; ends at EOF, on an error
/// or when the mode is (or turns) [`ProxyMode::Refuse`].
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut modes: watch::Receiver<ProxyMode>,
    counters: &Counters,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A refusal closes even an idle connection at once.
            changed = modes.wait_for(|m| *m == ProxyMode::Refuse) => {
                let _ = changed;
                return;
            }
        };
        // Hold the chunk while black-holed; a refusal (or the proxy's end) drops it.
        let mode = match modes.wait_for(|m| *m != ProxyMode::Blackhole).await {
            Ok(mode) => *mode,
            Err(_) => return,
        };
        match mode {
            ProxyMode::Refuse => return,
            ProxyMode::Delay(delay) => tokio::time::sleep(delay).await,
            ProxyMode::Pass | ProxyMode::Blackhole => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        counters.forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1:0 (echoes each read back).
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(within, s.read_exact(&mut got))
            .await
            .ok()?
            .ok()?;
        Some(got)
    }

    /// Pass forwards both ways; a black hole holds bytes on an open connection and delivers them
    /// once healed; a refusal closes open connections and new ones; delay still delivers.
    #[tokio::test]
    async fn modes_pass_hold_refuse_and_delay() {
        let proxy = TcpProxy::start(echo().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        let long = Duration::from_secs(10);
        assert_eq!(
            round_trip(&mut s, b"one", long).await.as_deref(),
            Some(&b"one"[..])
        );

        proxy.set_mode(ProxyMode::Blackhole);
        assert_eq!(round_trip(&mut s, b"two", Duration::from_millis(300)).await, None);
        proxy.set_mode(ProxyMode::Pass);
        let mut held = vec![0u8; 3];
        tokio::time::timeout(long, s.read_exact(&mut held))
            .await
            .expect("held bytes arrive after the heal")
            .expect("read");
        assert_eq!(&held, b"two");

        proxy.set_mode(ProxyMode::Delay(Duration::from_millis(50)));
        assert_eq!(
            round_trip(&mut s, b"three", long).await.as_deref(),
            Some(&b"three"[..])
        );

        proxy.set_mode(ProxyMode::Refuse);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(long, s.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "open connection closed: {closed:?}"
        );
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut fresh, b"four", long).await, None);

        proxy.set_mode(ProxyMode::Pass);
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            round_trip(&mut again, b"five", long).await.as_deref(),
            Some(&b"five"[..])
        );
        assert!(proxy.forwarded() >= 2 * 11, "counted: {}", proxy.forwarded());
    }
}
