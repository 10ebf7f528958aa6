//! The GPU a CUDA build's tests run on. The GPU variants of the parity and run tests are marked
//! `#[cfg_attr(not(feature = "cuda"), ignore = "...")]`, so a CPU-only build lists them as
//! ignored (visibly, with the reason) rather than passing them; in a CUDA build they run, and
//! fail, naming the cause, where no GPU can be opened. scripts/gpu_check.sh runs them.

use candle_core::Device;
use rcaflow::models::device::DeviceSpec;

/// GPU 0 on a stream of its own, as a stage opens it; panics (the test fails) without one.
pub fn cuda() -> Device {
    DeviceSpec::Cuda(0).open().unwrap_or_else(|e| panic!("a GPU test found no usable GPU: {e}"))
}
