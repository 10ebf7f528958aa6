//! What the integration tests share: `mod common;` in a test file,
//! `#[path = "../tests/common/mod.rs"] mod common;` in a bench, then `common::...`.
//!
//! - [`prng`]: the keyed PRNG of the fixture scripts (bit-exact port);
//! - [`random_weights`]: random-weight Inception, LPIPS and UNet files from that PRNG;
//! - [`color_set`]: the colour example set and its hand-made oracle (examples/common/color_set.rs);
//! - [`topology`]: topology files built section by section, at any size;
//! - [`tiny_run`]: the tiny sampler run with every evaluation stage (models, real images, topology);
//! - [`bin`]: running the `rcaflow` binary;
//! - [`gpu`]: the GPU the CUDA variants of the tests run on;
//! - [`stages`]: mock stages (sources, sinks, faulty and stuck stages) for `runtime::run`;
//! - [`pickle`]: hand-made torch checkpoints (a small pickle writer, legacy and zip containers);
//! - [`zip_bytes`]: zips with lying headers, `.npy` bytes, crafted PNG headers.

// Each test file is its own crate and uses only part of this module: the rest would warn as
// dead code in each of them.
#![allow(dead_code)]

pub mod bin;
#[path = "../../examples/common/color_set.rs"]
pub mod color_set;
pub mod gpu;
pub mod pickle;
pub mod prng;
pub mod random_weights;
pub mod stages;
pub mod tiny_run;
pub mod topology;
pub mod zip_bytes;

/// The repository root the fixtures are read from: `RCAFLOW_TEST_REPO` when set (test
/// executables built on one machine and run from another checkout, as scripts/gpu_check.sh
/// does), else the one they were built in.
pub fn repo() -> std::path::PathBuf {
    std::env::var_os("RCAFLOW_TEST_REPO").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
