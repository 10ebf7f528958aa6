//! The values a CPU custom op (candle's `CustomOp1::cpu_fwd` and kin) reads: its storage,
//! checked to hold f32 laid out contiguously, cut to the tensor's own elements. The fused ops
//! make their inputs contiguous before applying themselves, so the errors here mean a caller
//! skipped that.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

/// `storage`'s f32 values under `layout`; `op` names the op in the error.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{op}: expected f32 values, got {:?}", storage.dtype()) };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{op}: expected a contiguous input") };
    Ok(&values[start..end])
}
