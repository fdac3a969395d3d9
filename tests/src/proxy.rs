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
//!   long enough would have. What clients send meanwhile is counted
//!   ([`GatedProxy::sent_while_frozen`]) and dropped: a test waits on it to
//!   know that a client is stuck on the partition.
//!
//! [`GatedProxy::retarget`] sends it all elsewhere, cutting the connections
//! open to the old target: a dependency replaced by another instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt;
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
    sent_while_frozen: Arc<AtomicUsize>,
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
        let sent_while_frozen = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let refused = Arc::clone(&refused);
            let sent_while_frozen = Arc::clone(&sent_while_frozen);
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let now = *watched.borrow();
                    if now.gate == Gate::Closed {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    tokio::spawn(forward(
                        inbound,
                        now.target,
                        watched.clone(),
                        Arc::clone(&sent_while_frozen),
                    ));
                }
            }
        });
        Self {
            addr,
            state,
            refused,
            sent_while_frozen,
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

    /// Bytes clients sent into the partition ([`GatedProxy::freeze`]).
    pub fn sent_while_frozen(&self) -> usize {
        self.sent_while_frozen.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Forwards `inbound` to `target` while the gate is open and the target
/// stays the same.
async fn forward(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<State>,
    sent_while_frozen: Arc<AtomicUsize>,
) {
    // Accepted while frozen: unanswered until the partition ends, then cut.
    if state.borrow().gate == Gate::Frozen {
        frozen(&mut inbound, &mut state, &sent_while_frozen).await;
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
        self::frozen(&mut inbound, &mut state, &sent_while_frozen).await;
    }
}

/// Until the partition ends: counts and drops what the client sends (the
/// connection is cut afterwards, so nothing of it is owed to the target).
async fn frozen(inbound: &mut TcpStream, state: &mut watch::Receiver<State>, sent: &AtomicUsize) {
    let swallow = async {
        let mut buffer = [0; 4096];
        // Until the client closes its side.
        while let Ok(n @ 1..) = inbound.read(&mut buffer).await {
            sent.fetch_add(n, Ordering::SeqCst);
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = state.wait_for(|s| s.gate != Gate::Frozen) => {}
        () = swallow => {}
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
