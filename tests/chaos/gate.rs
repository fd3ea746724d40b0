//! A service that fails at the TCP level: a pass-through on loopback in front of one upstream
//! (localstripe, the regtest node's Electrum server) that, by mode, passes bytes through, resets
//! every connection, answers late, answers every line with garbage, or takes requests and never
//! answers. A change of mode cuts every open connection, so clients meet the new mode at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the gate does to the connections made while it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Open,
    /// Every connection reset at once (a service that is down).
    Reset,
    /// Every answer this much later.
    Latency(Duration),
    /// Every request line answered with a line that is not JSON.
    Garbled,
    /// Requests taken, never answered.
    Stalled,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Reset => "reset",
            Self::Latency(_) => "latency",
            Self::Garbled => "garbled",
            Self::Stalled => "stalled",
        }
    }
}

pub struct Gate {
    pub url: String,
    pub addr: std::net::SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections met by a mode other than `Open`.
    faulted: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(upstream: std::net::SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, watch) = watch::channel(Mode::Open);
        let faulted = Arc::new(AtomicU64::new(0));
        let counter = faulted.clone();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let now = *watch.borrow();
                if now != Mode::Open {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let mut changed = watch.clone();
                changed.mark_unchanged();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = connection(socket, upstream, now) => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });
        Ok(Self { url: format!("http://{addr}"), addr, mode, faulted, server })
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Down (every connection reset) or open.
    pub fn set_closed(&self, closed: bool) {
        self.set(if closed { Mode::Reset } else { Mode::Open });
    }

    pub fn faulted(&self) -> u64 {
        self.faulted.load(Ordering::Relaxed)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One connection, as `mode` treats it; dropped (and so closed) when the mode changes.
async fn connection(mut socket: TcpStream, upstream: std::net::SocketAddr, mode: Mode) {
    match mode {
        Mode::Open => {
            if let Ok(mut upstream) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
            }
        }
        Mode::Reset => {
            // SO_LINGER 0: dropping the socket sends RST instead of FIN.
            #[allow(deprecated, reason = "a zero linger is the point: the connection is reset, and it never blocks")]
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
        Mode::Latency(delay) => {
            let Ok(upstream) = TcpStream::connect(upstream).await else { return };
            let (mut client_in, mut client_out) = socket.into_split();
            let (mut upstream_in, mut upstream_out) = upstream.into_split();
            let requests = async { tokio::io::copy(&mut client_in, &mut upstream_out).await };
            let answers = async {
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    let n = upstream_in.read(&mut chunk).await?;
                    if n == 0 {
                        return std::io::Result::Ok(());
                    }
                    tokio::time::sleep(delay).await;
                    client_out.write_all(&chunk[..n]).await?;
                }
            };
            let _ = tokio::join!(requests, answers);
        }
        Mode::Garbled => {
            let mut chunk = vec![0u8; 16 * 1024];
            while let Ok(n) = socket.read(&mut chunk).await {
                if n == 0 {
                    return;
                }
                for _ in chunk[..n].iter().filter(|b| **b == b'\n') {
                    if socket.write_all(b"}{\"jsonrpc\": 2.0, not json\n").await.is_err() {
                        return;
                    }
                }
            }
        }
        Mode::Stalled => {
            let mut chunk = vec![0u8; 16 * 1024];
            while socket.read(&mut chunk).await.is_ok_and(|n| n > 0) {}
        }
    }
}
