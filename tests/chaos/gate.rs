//! A service that goes away: a TCP pass-through on loopback in front of one upstream (localstripe)
//! that, while closed, cuts every open connection and resets every new one — what a client sees
//! of a processor whose front end is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Gate {
    pub url: String,
    closed: watch::Sender<bool>,
    /// Connections reset while closed.
    refused: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn start(upstream: std::net::SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (closed, watch) = watch::channel(false);
        let refused = Arc::new(AtomicU64::new(0));
        let counter = refused.clone();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                if *watch.borrow() {
                    counter.fetch_add(1, Ordering::Relaxed);
                    #[allow(deprecated, reason = "a zero linger is the point: the connection is reset, and it never blocks")]
                    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
                    drop(socket);
                    continue;
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(upstream).await else { return };
                    let mut socket = socket;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream) => {}
                        _ = watch.wait_for(|closed| *closed) => {
                            #[allow(deprecated, reason = "a zero linger is the point: the connection is reset, and it never blocks")]
                            let _ = socket.set_linger(Some(std::time::Duration::ZERO));
                        }
                    }
                });
            }
        });
        Ok(Self { url, closed, refused, server })
    }

    pub fn set_closed(&self, closed: bool) {
        let _ = self.closed.send(closed);
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.server.abort();
    }
}
