//! The one driver of accumulating sinks (DESIGN.md §2 "Exactly once"): restore the checkpoint
//! or create a fresh state, receive, apply each unit exactly once, publish live values,
//! checkpoint on the timer and at the end, honour aborts, and send the summary. A sink supplies
//! only its state (an [`Accumulator`]) and its maths ([`SinkMaths`]); rca, fid,
//! inception_score and lpips_diversity all run through [`SinkStage`].

use std::sync::Arc;

use super::accumulator::{Accumulator, ExactlyOnce};
use super::batch::{Batch, Payload};
use super::checkpoint::CheckpointTimer;
use super::early_stop::{CloseOnDrop, EarlyStopGate, Holdback, Verdict};
use super::stage::{Stage, StageContext, StageError};
use crate::report::Summary;
use crate::telemetry;
use crate::units::Origin;

/// A sink's own part: its state's birth, what it does after each batch and at the end.
pub trait SinkMaths: Send + 'static {
    /// The state folded exactly once per unit, and checkpointed with the applied unit ids.
    type Acc: Accumulator<Input = Self::Input>;
    /// The batch type on its inputs.
    type Input: Batch;

    /// The state of a run with no checkpoint.
    fn fresh(&mut self, ctx: &StageContext) -> Result<Self::Acc, StageError>;

    /// Once, before the first batch, with the fresh or restored state (initial gauges, plans
    /// that a restored state needs rebuilt).
    fn start(&mut self, acc: &mut ExactlyOnce<Self::Acc>, ctx: &StageContext) -> Result<(), StageError>;

    /// Refuses a batch the state cannot take (features of another width, images of another
    /// size), before any of it is applied.
    fn check_batch(&self, acc: &ExactlyOnce<Self::Acc>, batch: &Self::Input) -> Result<(), StageError>;

    /// After each batch is applied: work the batch made possible, live values.
    fn after_batch(&mut self, acc: &mut ExactlyOnce<Self::Acc>, ctx: &StageContext) -> Result<(), StageError>;

    /// When the inputs have closed on a run that did not fail, the work still left (LPIPS: the
    /// pairs short of a full chunk), before the final checkpoint.
    fn drain(&mut self, acc: &mut ExactlyOnce<Self::Acc>, ctx: &StageContext) -> Result<(), StageError>;

    /// The summary of the final state (its live values published).
    fn finish(&mut self, acc: &ExactlyOnce<Self::Acc>, ctx: &StageContext) -> Result<Summary, StageError>;

    /// For the sink that decides an early stop ([`crate::runtime::early_stop`]): whether its
    /// rule holds on the state as it is. Other sinks are never asked.
    fn stop_rule_holds(&self, _acc: &ExactlyOnce<Self::Acc>) -> bool {
        false
    }
}

/// The stage of an accumulating sink.
pub struct SinkStage<M>(pub M);

impl<M: SinkMaths> Stage for SinkStage<M> {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let mut maths = self.0;
        // 1. Restore or create.
        let mut acc = match ctx.restore::<<M::Acc as Accumulator>::State>()? {
            Some(snapshot) => ExactlyOnce::restore(snapshot),
            None => ExactlyOnce::new(maths.fresh(ctx)?),
        };
        maths.start(&mut acc, ctx)?;
        let mut checkpoints = CheckpointTimer::new(ctx.checkpoint_interval);
        // With an early stop, generated units wait for the gate's verdict before they are
        // folded (all sinks then fold the same units); the decider folds them in the gate's
        // order and decides after each one.
        let gate = ctx.control.early_stop().cloned();
        let deciding = gate.as_ref().is_some_and(|g| g.decider() == ctx.id);
        let _close = gate.as_deref().filter(|_| deciding).map(CloseOnDrop);
        if let Some(g) = gate.as_deref().filter(|_| deciding) {
            let prefix = g.order().iter().take_while(|id| acc.holds(id)).count();
            g.resume(prefix, prefix > 0 && maths.stop_rule_holds(&acc));
        }
        let mut held: Holdback<Payload> = Holdback::default();
        // 2. Receive and apply each unit once; checkpoint on the timer.
        while let Some(payload) = ctx.recv() {
            let Some(batch) = M::Input::of(&payload) else {
                return Err(StageError::Failed(format!(
                    "received a non-{} payload; the topology check should have refused this edge",
                    M::Input::NAME
                )));
            };
            maths.check_batch(&acc, batch)?;
            match gate.as_deref() {
                None => {
                    ctx.timed(|| acc.apply(batch, batch.units()));
                }
                Some(g) => {
                    let mut now = Vec::new();
                    for span in batch.units() {
                        if span.id.origin == Origin::Generated {
                            let rank = g.rank(&span.id).ok_or_else(|| {
                                StageError::Failed(format!("received unit {}, which is not in the run's generated plan", span.id))
                            })?;
                            held.park(rank, *span, payload.clone());
                        } else {
                            now.push(*span);
                        }
                    }
                    ctx.timed(|| {
                        acc.apply(batch, &now);
                        settle(&maths, &mut acc, &mut held, g, deciding)
                    });
                }
            }
            ctx.fault("applied")?;
            maths.after_batch(&mut acc, ctx)?;
            if checkpoints.due() {
                ctx.checkpoint(&acc.snapshot())?;
            }
        }
        if let Some(g) = gate.as_deref().filter(|_| deciding) {
            g.close();
        }
        // Inputs closed: what is still held back waits for the decider (which has, or will
        // have, every unit this sink got). Held back by the decider itself: units after a gap
        // in the order, which never came; they stay outside.
        if let Some(g) = gate.as_deref().filter(|_| !deciding) {
            let mut folded = false;
            while !held.is_empty() && !ctx.control.aborted() {
                folded |= ctx.timed(|| settle(&maths, &mut acc, &mut held, g, false));
                if !held.is_empty() {
                    g.wait(std::time::Duration::from_millis(100));
                }
            }
            if folded {
                maths.after_batch(&mut acc, ctx)?;
            }
        }
        // 3. The final state is checkpointed even after a failure elsewhere: what was applied
        // stays applied. A failed run sends no summary: partial numbers must not look final.
        if ctx.control.aborted() {
            ctx.checkpoint(&acc.snapshot())?;
            return Ok(None);
        }
        maths.drain(&mut acc, ctx)?;
        ctx.checkpoint(&acc.snapshot())?;
        let summary = maths.finish(&acc, ctx)?;
        ctx.send(Payload::Summary(Arc::new(summary.clone())))?;
        Ok(Some(summary))
    }
}

/// Folds the held-back units the gate has decided on, in rank order; the decider folds the
/// next one in the gate's order and decides on it. Returns whether anything was folded.
fn settle<M: SinkMaths>(
    maths: &M,
    acc: &mut ExactlyOnce<M::Acc>,
    held: &mut Holdback<Payload>,
    gate: &EarlyStopGate,
    deciding: bool,
) -> bool {
    let mut folded = false;
    while let Some(rank) = held.first_rank() {
        let decide_here = match gate.verdict(rank) {
            Verdict::Undecided if deciding && gate.next_to_decide() == Some(rank) => true,
            Verdict::Undecided => break,
            _ => false,
        };
        let inside = decide_here || gate.verdict(rank) == Verdict::Inside;
        let Some((_, span, payload)) = held.pop_first() else { break };
        if let Some(batch) = M::Input::of(&payload).filter(|_| inside) {
            folded |= acc.apply(batch, &[span]) > 0;
        }
        if decide_here {
            gate.decide(rank, maths.stop_rule_holds(acc));
        }
    }
    folded
}

/// The non-finite-images counter of a sink whose state counts the images it left out: it
/// moves by what each batch added to that count, so a restored count is not counted again.
#[derive(Debug, Default)]
pub struct NonfiniteCounter {
    counted: u64,
}

impl NonfiniteCounter {
    /// Starts from the state's count. The series exists at 0 from the start, so the first
    /// non-finite image shows as an increase (and alerts).
    pub fn start(&mut self, ctx: &StageContext, total: u64) {
        metrics::counter!(telemetry::NONFINITE_IMAGES, "stage" => ctx.id.clone()).increment(0);
        self.counted = total;
    }

    /// Adds what the state's count gained since the last call; returns it.
    pub fn advance(&mut self, ctx: &StageContext, total: u64) -> u64 {
        let new = total - self.counted;
        self.counted = total;
        if new > 0 {
            metrics::counter!(telemetry::NONFINITE_IMAGES, "stage" => ctx.id.clone()).increment(new);
        }
        new
    }
}
