//! What a convolution layer derives from its kernel, made on the first forward that needs it
//! and kept for the next ones: an inference layer's weights never change, and remaking them at
//! every call was measured (`perf record`): Winograd's `U` was an eighth of a small layer's time
//! (ResNet's 512-channel 4x4 stage); the kernel cut to its live taps (AlexNet's 3x3 layers on a
//! 1x1 map in LPIPS, cut to 1x1) was a tenth of LPIPS alex's.

use std::sync::{Arc, Mutex};

use candle_core::TensorId;

/// Derived kernels a layer keeps at most (one per input size it meets, with a cut kernel).
const KEPT: usize = 4;

/// Something made from a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Derived {
    /// Winograd's `U` (`fast_conv/winograd.rs`).
    Winograd,
    /// The kernel's taps `rows.0 .. rows.1` x `cols.0 .. cols.1` alone.
    LiveTaps { rows: (usize, usize), cols: (usize, usize) },
}

/// A layer's derived kernels. Each layer that owns a kernel keeps one (cloning the layer shares
/// it); Winograd's `U` costs 16/9 of the kernel's memory.
///
/// It is tied to the weight tensor it first served (candle's tensor ids are never reused):
/// asked for another tensor's, it makes that one's for the call and keeps nothing. A tensor that
/// can change in place (a training variable) never gets here: it tracks a gradient, and the
/// fused path is for untracked tensors only.
#[derive(Debug, Clone, Default)]
pub struct KernelCache(Arc<Mutex<Option<Kept>>>);

#[derive(Debug)]
struct Kept {
    owner: TensorId,
    derived: Vec<(Derived, Arc<Vec<f32>>)>,
}

/// Where the fused path gets derived kernels from: the layer's cache, with the id of the weight
/// tensor of this call, or none (made for the call).
#[derive(Debug, Clone, Default)]
pub(super) struct Kernels(pub(super) Option<(KernelCache, TensorId)>);

impl Kernels {
    /// `what`, from the cache when it holds this weight's, else `make()` (kept when there is room).
    pub(super) fn derived(&self, what: Derived, make: impl FnOnce() -> Vec<f32>) -> Arc<Vec<f32>> {
        let Some((cache, id)) = &self.0 else { return Arc::new(make()) };
        let lock = || cache.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(kept) = lock().as_ref() {
            if kept.owner != *id {
                return Arc::new(make());
            }
            if let Some((_, found)) = kept.derived.iter().find(|(w, _)| *w == what) {
                return found.clone();
            }
        }
        // Made with the lock released: making runs on the kernel pool, and a pool thread
        // waiting for its part may take up another forward of the same layer, which would then
        // wait for the lock this thread holds. Two threads that race here both make it; the
        // first one kept is the one kept.
        let made = Arc::new(make());
        let mut guard = lock();
        let kept = guard.get_or_insert_with(|| Kept { owner: *id, derived: Vec::new() });
        if kept.owner == *id && kept.derived.len() < KEPT && !kept.derived.iter().any(|(w, _)| *w == what) {
            kept.derived.push((what, made.clone()));
        }
        made
    }
}
