//! A TCP proxy with a gate, to make a dependency unreachable on demand.
//!
//! - Open: connections are forwarded to the target.
//! - Closed: new connections are accepted and dropped at once and open ones
//!   are cut (the client sees the connection closed, as when a service
//!   restarts).
//! - Frozen: nothing passes and nothing is closed, as in a network partition:
//!   open connections stay open but silent, and new ones are accepted and
//!   left unanswered. A client notices only through its own timeouts. Leaving
//!   this state cuts the connections it froze, as a partition that lasted
//!   long enough would have.
//!
//! [`GatedProxy::retarget`] sends it all elsewhere, cutting the connections
//! open to the old target: a dependency replaced by another instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    Closed,
    Frozen,
}

/// The gate, and where connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    gate: Gate,
    target: SocketAddr,
}

#[derive(Debug)]
pub struct GatedProxy {
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedProxy {
    /// A proxy on a free loopback port to `target`, closed.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (state, watched) = watch::channel(State {
            gate: Gate::Closed,
            target,
        });
        let refused = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let refused = Arc::clone(&refused);
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let now = *watched.borrow();
                    if now.gate == Gate::Closed {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    tokio::spawn(forward(inbound, now.target, watched.clone()));
                }
            }
        });
        Self {
            addr,
            state,
            refused,
            task,
        }
    }

    pub fn open(&self) {
        self.set_gate(Gate::Open);
    }

    /// Closes the gate and cuts the connections through it.
    pub fn close(&self) {
        self.set_gate(Gate::Closed);
    }

    /// Lets nothing through and closes nothing: a network partition.
    pub fn freeze(&self) {
        self.set_gate(Gate::Frozen);
    }

    /// Sends every connection from now on to `target`, and cuts those open
    /// to the old one.
    pub fn retarget(&self, target: SocketAddr) {
        self.state.send_modify(|state| state.target = target);
    }

    fn set_gate(&self, gate: Gate) {
        self.state.send_modify(|state| state.gate = gate);
    }

    /// Connections dropped while the gate was closed.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Forwards `inbound` to `target` while the gate is open and the target
/// stays the same.
async fn forward(mut inbound: TcpStream, target: SocketAddr, mut state: watch::Receiver<State>) {
    // Accepted while frozen: unanswered until the partition ends, then cut.
    if state.borrow().gate == Gate::Frozen {
        let _ = state.wait_for(|s| s.gate != Gate::Frozen).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let frozen = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
        changed = state.wait_for(|s| s.gate != Gate::Open || s.target != target) =>
            changed.is_ok_and(|s| s.gate == Gate::Frozen),
    };
    if frozen {
        // Both sockets stay open, and silent, until the partition ends.
        let _ = state.wait_for(|s| s.gate != Gate::Frozen).await;
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
