//! The data plane: one bounded crossbeam channel per edge. A full channel blocks its producer
//! (backpressure keeps memory flat); fan-out sends the same `Arc`'d payload to every consumer,
//! so the slowest consumer sets the pace. A consumer's inputs close when every producer is done.

use crossbeam_channel::{bounded, Receiver, Select, Sender};

use super::batch::Payload;
use crate::telemetry;
use crate::topology::Edge;

/// The sending side of one edge.
pub struct EdgeSender {
    pub name: String,
    tx: Sender<Payload>,
}

/// The receiving side of one edge.
pub struct EdgeReceiver {
    pub name: String,
    rx: Receiver<Payload>,
}

/// Creates the channel of an edge, and publishes its capacity.
pub fn edge_channel(edge: &Edge) -> (EdgeSender, EdgeReceiver) {
    let (tx, rx) = bounded(edge.capacity);
    let name = edge.name();
    metrics::gauge!(telemetry::CHANNEL_CAPACITY, "edge" => name.clone()).set(edge.capacity as f64);
    metrics::gauge!(telemetry::CHANNEL_DEPTH, "edge" => name.clone()).set(0.0);
    (EdgeSender { name: name.clone(), tx }, EdgeReceiver { name, rx })
}

/// A consumer's side: every input edge, merged.
#[derive(Default)]
pub struct Inputs {
    open: Vec<EdgeReceiver>,
}

impl Inputs {
    pub fn new(receivers: Vec<EdgeReceiver>) -> Self {
        Inputs { open: receivers }
    }

    /// The next payload from any input, blocking; `None` once every input has closed.
    pub fn recv(&mut self) -> Option<Payload> {
        loop {
            if self.open.is_empty() {
                return None;
            }
            let mut select = Select::new();
            for edge in &self.open {
                select.recv(&edge.rx);
            }
            let op = select.select();
            let i = op.index();
            match op.recv(&self.open[i].rx) {
                Ok(payload) => {
                    let edge = &self.open[i];
                    metrics::gauge!(telemetry::CHANNEL_DEPTH, "edge" => edge.name.clone()).set(edge.rx.len() as f64);
                    return Some(payload);
                }
                // All producers of this edge are gone: it is closed, the others may go on.
                Err(_) => {
                    self.open.remove(i);
                }
            }
        }
    }
}

/// The downstream side is gone: only happens when the run is being torn down.
#[derive(Debug, thiserror::Error)]
#[error("edge {0} is closed: its consumer has stopped")]
pub struct Disconnected(pub String);

/// A producer's side: every output edge.
#[derive(Default)]
pub struct Outputs {
    edges: Vec<EdgeSender>,
}

impl Outputs {
    pub fn new(senders: Vec<EdgeSender>) -> Self {
        Outputs { edges: senders }
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Sends `payload` to every consumer, blocking while a channel is full.
    pub fn send(&self, payload: Payload) -> Result<(), Disconnected> {
        for edge in &self.edges {
            edge.tx.send(payload.clone()).map_err(|_| Disconnected(edge.name.clone()))?;
            metrics::gauge!(telemetry::CHANNEL_DEPTH, "edge" => edge.name.clone()).set(edge.tx.len() as f64);
        }
        Ok(())
    }
}
