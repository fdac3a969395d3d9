//! A TCP proxy with a gate, to make a dependency unreachable on demand.
//!
//! While the gate is closed, new connections are accepted and dropped at once
//! and open ones are cut (the client sees the connection closed, as when a
//! service restarts); while open, connections are forwarded to the target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
pub struct GatedProxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedProxy {
    /// A proxy on a free loopback port to `target`, closed.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (open, gate) = watch::channel(false);
        let refused = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let refused = Arc::clone(&refused);
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !*gate.borrow() {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let mut gate = gate.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = gate.wait_for(|open| !open) => {}
                        }
                    });
                }
            }
        });
        Self {
            addr,
            open,
            refused,
            task,
        }
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Closes the gate and cuts the connections through it.
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Connections dropped while the gate was closed.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
