//! The imagenet stem's max-pool, `nn.MaxPool2d(kernel_size=3, stride=2, padding=1)`.
//!
//! Reference: `torch.nn.MaxPool2d` as torchvision's ResNet uses it: the padding is -inf, so it
//! never wins a window's max. For inference it is `models::fast_pool`. candle's max-pool has no
//! padding, and no backward for overlapping windows, so when a gradient is tracked the window
//! maximum is taken over the nine strided shifts of the -inf-padded input instead
//! (`index_select` and `maximum` both backpropagate). Both compute the exact maximum of the
//! same values, so the two paths give the same numbers.

use candle_core::{Result, Tensor};

use crate::models::fast_pool::{pool2d, Pool};

/// `nn.MaxPool2d(3, stride=2, padding=1)` on `[N, C, H, W]`, with a gradient when `x` tracks
/// one (ties then send the gradient to every maximal element where PyTorch picks one, which
/// only matters on exact ties).
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return pool2d(x, Pool::Max, 3, 2, 1);
    }
    let padded = pad_neg_inf(&pad_neg_inf(x, 3)?, 2)?;
    let (_, _, h, w) = x.dims4()?;
    // Output size as PyTorch: floor((L + 2 - 3) / 2) + 1.
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let picks =
        |offset: usize, len: usize| Tensor::from_vec((0..len).map(|i| (2 * i + offset) as u32).collect::<Vec<_>>(), len, padded.device());
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = padded.index_select(&picks(dy, oh)?, 2)?;
        for dx in 0..3 {
            let win = rows.index_select(&picks(dx, ow)?, 3)?;
            out = Some(match out {
                None => win,
                Some(m) => m.maximum(&win)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("empty pooling window".into()))
}

/// One -inf row/column on each side of `dim`.
fn pad_neg_inf(x: &Tensor, dim: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    dims[dim] = 1;
    let pad = Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[&pad, x, &pad], dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_pytorch_shape_and_values_on_both_paths() {
        // 1x1x4x5 negated ramp; PyTorch: MaxPool2d(3, 2, 1) -> 2x3, each window's max being its
        // top-left real element.
        let x = Tensor::arange(0f32, 20., &Device::Cpu).unwrap().reshape((1, 1, 4, 5)).unwrap().neg().unwrap();
        let want = vec![-0., -1., -3., -5., -6., -8.];
        let y = max_pool_3x3_s2_p1(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 3]);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let tracked = Var::from_tensor(&x).unwrap();
        let y = max_pool_3x3_s2_p1(tracked.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 3]);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    }
}
