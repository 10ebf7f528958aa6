//! The fused CPU inference ops against candle's own ops, on random shapes, odd sizes and
//! non-contiguous inputs:
//! - models::fast_conv: the convolution (im2col + gemm with a BatchNorm / bias / ReLU
//!   epilogue) equals `conv2d` -> `broadcast_mul` -> `broadcast_add` (-> `+ residual`) ->
//!   `relu`, with strides and asymmetric padding, on large outputs (bands of rows per image)
//!   and small ones (groups of images per gemm), and through Winograd F(2x2, 3x3) (stride-1
//!   3x3 kernels, 16 channels or more); an image's output does not depend on its
//!   batch or its place in it;
//! - models::group_norm: GroupNorm (+ SiLU) equals candle-nn's `GroupNorm` (+ `silu`);
//! and with a gradient to track, each is candle's ops (with their backward).

mod common;

use candle_core::{Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::prng::uniform_f32;
use rcaflow::models::fast_conv::{conv2d_candle, conv2d_fused, conv2d_fused_cached, ConvParams, Epilogue, KernelCache};
use rcaflow::models::group_norm::group_norm;

fn random(key: &str, shape: &[usize]) -> Tensor {
    Tensor::from_vec(uniform_f32(key, shape.iter().product(), -1.0, 1.0), shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// (n, c_in, h, w, c_out, kh, kw, stride, (ph, pw))
type Case = (usize, usize, usize, usize, usize, usize, usize, usize, (usize, usize));

const CASES: [Case; 25] = [
    (2, 3, 32, 32, 16, 3, 3, 1, (1, 1)),  // the cifar stem
    (3, 5, 7, 9, 7, 3, 3, 1, (1, 1)),     // odd everything
    (2, 4, 11, 13, 6, 3, 3, 2, (1, 1)),   // stride 2, odd sides
    (1, 3, 33, 35, 8, 11, 11, 4, (2, 2)), // alexnet's first conv on an odd size
    (2, 6, 9, 9, 5, 1, 1, 1, (0, 0)),     // pointwise (no im2col)
    (2, 6, 9, 9, 5, 1, 1, 2, (0, 0)),     // strided 1x1 (the resnet downsample)
    (2, 4, 17, 17, 3, 1, 7, 1, (0, 3)),   // Inception's 1x7
    (2, 4, 17, 17, 3, 7, 1, 1, (3, 0)),   // and 7x1
    (1, 2, 5, 6, 3, 5, 5, 1, (2, 2)),     // kernel as large as the input
    (3, 8, 4, 4, 9, 3, 3, 1, (1, 1)),     // the UNet's 4x4 level
    (1, 3, 300, 20, 4, 3, 3, 1, (0, 0)),  // tall: several bands per image
    (2, 3, 8, 8, 4, 3, 3, 3, (0, 0)),     // stride 3, no padding
    (70, 4, 4, 4, 6, 3, 3, 1, (1, 1)),    // ResNet's 4x4 stage: groups of images, the last padded
    (9, 5, 3, 3, 7, 3, 3, 1, (1, 1)),     // AlexNet's 3x3 layers at 32x32
    (67, 6, 1, 1, 5, 3, 3, 1, (1, 1)),    // a 1x1 output: 64 images per gemm (8 of 9 taps dead)
    (2, 3, 2, 3, 4, 5, 5, 2, (2, 2)),     // dead taps on every side of a strided kernel
    (3, 2, 2, 1, 3, 3, 3, 1, (1, 1)),     // dead taps along one axis only
    (1, 2, 1, 1, 3, 1, 1, 5, (2, 2)),     // padding wider than the kernel: every tap dead
    // Winograd F(2x2, 3x3) (stride-1 3x3, at least 16 channels in and out):
    (2, 16, 32, 32, 16, 3, 3, 1, (1, 1)), // the UNet's top level: bands of tile rows
    (2, 17, 9, 11, 19, 3, 3, 1, (1, 1)),  // odd sides: tiles cut at the right and bottom edges
    (1, 16, 41, 40, 16, 3, 3, 1, (0, 0)), // no padding (Inception's 3x3 'valid'), an odd output
    (2, 16, 7, 5, 20, 3, 3, 1, (2, 1)),   // padding wider than one, different per axis
    (21, 32, 4, 4, 16, 3, 3, 1, (1, 1)),  // ResNet's 4x4 stage: groups of images, the last padded
    (3, 16, 4, 5, 16, 3, 3, 1, (1, 1)),   // few tiles per image, the last column cut
    (1, 24, 5, 300, 16, 3, 3, 1, (1, 1)), // wide: one tile row (150 tiles) is more than a band
];

#[test]
fn fused_conv_equals_candles_ops_with_every_epilogue() {
    for (i, &(n, c_in, h, w, c_out, kh, kw, stride, padding)) in CASES.iter().enumerate() {
        let x = random(&format!("x{i}"), &[n, c_in, h, w]);
        let k = random(&format!("k{i}"), &[c_out, c_in, kh, kw]);
        let scale = random(&format!("s{i}"), &[c_out]);
        let shift = random(&format!("b{i}"), &[1, c_out, 1, 1]);
        let p = ConvParams::new(stride, padding);
        let out_dims = conv2d_candle(&x, &k, p, Epilogue::default()).unwrap().dims().to_vec();
        let residual = random(&format!("r{i}"), &out_dims);
        let epilogues = [
            Epilogue::default(),
            Epilogue { shift: Some(&shift), ..Default::default() },
            Epilogue { scale: Some(&scale), shift: Some(&shift), relu: true, ..Default::default() },
            Epilogue { scale: Some(&scale), relu: true, ..Default::default() },
            Epilogue { scale: Some(&scale), shift: Some(&shift), residual: Some(&residual), relu: true },
            Epilogue { residual: Some(&residual), ..Default::default() },
        ];
        for (e, epilogue) in epilogues.iter().enumerate() {
            let fast = conv2d_fused(&x, &k, p, *epilogue).unwrap();
            let plain = conv2d_candle(&x, &k, p, *epilogue).unwrap();
            let diff = max_abs_diff(&fast, &plain);
            // Sums of c_in * kh * kw products in another order: rounding grows with the length.
            let tolerance = (1e-7 * (c_in * kh * kw) as f32).max(1e-5);
            assert!(diff < tolerance, "case {i} epilogue {e}: max |fast - candle| = {diff}");
        }
    }
}

#[test]
fn non_contiguous_inputs_are_read_by_their_strides() {
    // A transposed input (H and W swapped), a slice of rows (an offset and a gap), and a
    // transposed kernel.
    let base = random("nc/x", &[2, 6, 9, 11]);
    let k = random("nc/k", &[4, 6, 3, 3]);
    for x in [base.transpose(2, 3).unwrap(), base.narrow(2, 2, 5).unwrap()] {
        let p = ConvParams::new(1, (1, 1));
        let fast = conv2d_fused(&x, &k, p, Epilogue::default()).unwrap();
        let plain = conv2d_candle(&x.contiguous().unwrap(), &k, p, Epilogue::default()).unwrap();
        assert!(max_abs_diff(&fast, &plain) < 1e-5);
    }
    let kt = random("nc/kt", &[4, 6, 3, 3]).transpose(2, 3).unwrap();
    let fast = conv2d_fused(&base, &kt, ConvParams::new(2, (1, 1)), Epilogue::default()).unwrap();
    let plain = conv2d_candle(&base, &kt.contiguous().unwrap(), ConvParams::new(2, (1, 1)), Epilogue::default()).unwrap();
    assert!(max_abs_diff(&fast, &plain) < 1e-5);
}

#[test]
fn an_image_gives_the_same_output_in_any_batch() {
    // The direct path's bands, then Winograd's.
    for (c_in, c_out) in [(8, 12), (16, 20)] {
        let x = random(&format!("batch/x{c_in}"), &[5, c_in, 19, 23]);
        let k = random(&format!("batch/k{c_in}"), &[c_out, c_in, 3, 3]);
        let p = ConvParams::new(1, (1, 1));
        let whole = conv2d_fused(&x, &k, p, Epilogue { relu: true, ..Default::default() }).unwrap();
        for i in 0..5 {
            let alone = conv2d_fused(&x.narrow(0, i, 1).unwrap(), &k, p, Epilogue { relu: true, ..Default::default() }).unwrap();
            assert_eq!(max_abs_diff(&alone, &whole.narrow(0, i, 1).unwrap()), 0.0, "{c_in} channels: image {i}");
        }
    }
}

/// Where images are grouped into one gemm (small outputs), an image's output is the same
/// whatever its batch and its place in the group, to the bit.
#[test]
fn a_grouped_image_gives_the_same_output_in_any_batch_and_place() {
    // (h, w, c_in, c_out): the direct path's groups, then Winograd's (16 channels and more).
    for (h, w, c_in, c_out) in [(4, 4, 6, 10), (1, 1, 6, 10), (3, 5, 6, 10), (4, 4, 16, 16), (4, 5, 16, 18), (7, 4, 20, 16)] {
        let x = random(&format!("group/x{h}{w}{c_in}"), &[37, c_in, h, w]);
        let k = random(&format!("group/k{c_in}{c_out}"), &[c_out, c_in, 3, 3]);
        let p = ConvParams::new(1, (1, 1));
        let residual = random(&format!("group/r{c_out}"), &[37, c_out, h, w]);
        fn epilogue(r: &Tensor) -> Epilogue<'_> {
            Epilogue { residual: Some(r), relu: true, ..Default::default() }
        }
        let whole = conv2d_fused(&x, &k, p, epilogue(&residual)).unwrap();
        for (start, len) in [(0, 1), (5, 1), (3, 9), (20, 17), (1, 36)] {
            let part = conv2d_fused(&x.narrow(0, start, len).unwrap(), &k, p, epilogue(&residual.narrow(0, start, len).unwrap())).unwrap();
            assert_eq!(max_abs_diff(&part, &whole.narrow(0, start, len).unwrap()), 0.0, "{h}x{w}: images {start}..{}", start + len);
        }
    }
}

/// A layer keeps its kernel's Winograd transform between calls; asked with another weight
/// tensor (a layer whose weight was replaced), it computes that one's, never the kept one.
#[test]
fn a_kept_kernel_transform_serves_only_its_own_weights() {
    let x = random("cache/x", &[2, 16, 8, 8]);
    let (k1, k2) = (random("cache/k1", &[16, 16, 3, 3]), random("cache/k2", &[16, 16, 3, 3]));
    let cache = KernelCache::default();
    let p = ConvParams::new(1, (1, 1));
    // A 1x1 map too: the kernel cut to its centre tap, kept beside Winograd's transform.
    let x1 = random("cache/x1", &[3, 16, 1, 1]);
    for (i, (x, k)) in [(&x, &k1), (&x1, &k1), (&x, &k1), (&x1, &k2), (&x, &k2), (&x1, &k1)].into_iter().enumerate() {
        let cached = conv2d_fused_cached(x, k, &cache, p, Epilogue::default()).unwrap();
        let fresh = conv2d_fused(x, k, p, Epilogue::default()).unwrap();
        assert_eq!(max_abs_diff(&cached, &fresh), 0.0, "call {i}");
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let x = random("bad/x", &[1, 3, 4, 4]);
    let e = conv2d_fused(&x, &random("bad/k", &[2, 4, 3, 3]), ConvParams::new(1, (1, 1)), Epilogue::default()).unwrap_err();
    assert!(e.to_string().contains("input has 3 channels, the kernel 4"), "{e}");
    let e = conv2d_fused(&x, &random("bad/k5", &[2, 3, 7, 7]), ConvParams::new(1, (0, 0)), Epilogue::default()).unwrap_err();
    assert!(e.to_string().contains("does not fit a 4x4 input"), "{e}");
    let scale = random("bad/s", &[5]);
    let e = conv2d_fused(
        &x,
        &random("bad/k2", &[2, 3, 3, 3]),
        ConvParams::new(1, (1, 1)),
        Epilogue { scale: Some(&scale), ..Default::default() },
    )
    .unwrap_err();
    assert!(e.to_string().contains("5 values for 2 output channels"), "{e}");
    let residual = random("bad/r", &[1, 2, 3, 3]);
    let e = conv2d_fused(
        &x,
        &random("bad/k3", &[2, 3, 3, 3]),
        ConvParams::new(1, (1, 1)),
        Epilogue { residual: Some(&residual), ..Default::default() },
    )
    .unwrap_err();
    assert!(e.to_string().contains("conv2d residual: shape [1, 2, 3, 3], the output is [1, 2, 4, 4]"), "{e}");
}

#[test]
fn with_a_gradient_to_track_it_is_candles_op_and_has_a_backward() {
    let x = random("grad/x", &[2, 3, 6, 6]);
    let k = Var::from_tensor(&random("grad/k", &[4, 3, 3, 3])).unwrap();
    let shift = random("grad/b", &[4]);
    let p = ConvParams::new(1, (1, 1));
    let y = conv2d_fused(&x, k.as_tensor(), p, Epilogue { shift: Some(&shift), relu: true, ..Default::default() }).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let g = grads.get(k.as_tensor()).expect("a gradient for the kernel");
    let y2 = conv2d_candle(&x, k.as_tensor(), p, Epilogue { shift: Some(&shift), relu: true, ..Default::default() }).unwrap();
    let g2 = y2.sum_all().unwrap().backward().unwrap();
    assert_eq!(max_abs_diff(g, g2.get(k.as_tensor()).unwrap()), 0.0);
}

/// A group norm with random weight and bias (a VarMap's variables when `trainable`).
fn random_group_norm(key: &str, groups: usize, channels: usize, trainable: bool) -> (rcaflow::models::group_norm::GroupNorm, VarMap) {
    let map = VarMap::new();
    let vb = if trainable {
        VarBuilder::from_varmap(&map, candle_core::DType::F32, &Device::Cpu)
    } else {
        let tensors = [("weight", random(&format!("{key}/w"), &[channels])), ("bias", random(&format!("{key}/b"), &[channels]))]
            .into_iter()
            .map(|(k, t)| (k.to_string(), t))
            .collect();
        VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu)
    };
    (group_norm(groups, channels, 1e-5, vb).unwrap(), map)
}

#[test]
fn fused_group_norm_equals_candle_nn_with_and_without_silu() {
    // (n, channels, groups, spatial dims)
    let cases: [(usize, usize, usize, &[usize]); 5] =
        [(2, 64, 32, &[8, 8]), (3, 6, 3, &[5, 7]), (1, 9, 9, &[1, 1]), (2, 12, 4, &[3]), (4, 256, 32, &[4, 4])];
    for (i, &(n, c, g, spatial)) in cases.iter().enumerate() {
        let mut shape = vec![n, c];
        shape.extend_from_slice(spatial);
        // Off-centre and scaled, so a one-pass variance would lose digits.
        let x = (random(&format!("gn{i}/x"), &shape) * 3.0).unwrap().affine(1.0, 5.0).unwrap();
        let (norm, _) = random_group_norm(&format!("gn{i}"), g, c, false);
        for silu in [false, true] {
            let fast = norm.forward_act(&x, silu).unwrap();
            let plain = norm.forward_candle(&x).unwrap();
            let plain = if silu { plain.silu().unwrap() } else { plain };
            let diff = max_abs_diff(&fast, &plain);
            assert!(diff < 2e-5, "case {i} silu {silu}: max |fast - candle| = {diff}");
        }
    }
    // A non-contiguous input: channels-last storage seen as NCHW.
    let (norm, _) = random_group_norm("gn/nc", 4, 8, false);
    let x = random("gn/nc/x", &[2, 5, 6, 8]).permute((0, 3, 1, 2)).unwrap();
    let diff = max_abs_diff(&norm.forward_act(&x, true).unwrap(), &norm.forward_candle(&x.contiguous().unwrap()).unwrap().silu().unwrap());
    assert!(diff < 2e-5, "non-contiguous: {diff}");
    let e = norm.forward_act(&random("gn/bad", &[2, 6, 3, 3]), false).unwrap_err();
    assert!(e.to_string().contains("group norm of 8 channels: got an input of shape [2, 6, 3, 3]"), "{e}");
}

#[test]
fn a_trained_group_norm_is_candle_nns_and_has_gradients() {
    let (norm, map) = random_group_norm("gn/train", 4, 8, true);
    let x = random("gn/train/x", &[2, 8, 3, 3]);
    let y = norm.forward_act(&x, true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let vars = map.all_vars();
    assert_eq!(vars.len(), 2);
    for v in &vars {
        assert!(grads.get(v.as_tensor()).is_some(), "a gradient for every parameter");
    }
}

#[test]
fn fused_attention_equals_candles_ops() {
    use rcaflow::models::fast_attention::{attention_candle, attention_channel_major};
    // [N, heads, tokens, head_dim] to the channel-major [N, heads * head_dim, tokens].
    let channel_major = |t: &Tensor| {
        let (n, h, tokens, d) = t.dims4().unwrap();
        t.transpose(2, 3).unwrap().reshape((n, h * d, tokens)).unwrap()
    };
    // (n, heads, tokens, head_dim): the paper UNet's 16x16 and 8x8 levels, the demo's 32-wide
    // heads, token counts that are not a multiple of the 16 lanes or of the 4-row blocks, one
    // token, one channel.
    let cases = [(2, 16, 256, 8), (1, 32, 64, 8), (2, 2, 64, 32), (3, 3, 7, 5), (1, 1, 1, 4), (2, 2, 33, 32), (1, 2, 18, 1), (1, 1, 50, 3)];
    for (i, &(n, h, t, d)) in cases.iter().enumerate() {
        let q = (random(&format!("att{i}/q"), &[n, h, t, d]) * 2.0).unwrap();
        let k = (random(&format!("att{i}/k"), &[n, h, t, d]) * 2.0).unwrap();
        let v = random(&format!("att{i}/v"), &[n, h, t, d]);
        let scale = 1.0 / (d as f64).sqrt();
        let qkv = Tensor::cat(&[channel_major(&q), channel_major(&k), channel_major(&v)], 1).unwrap();
        let got = attention_channel_major(&qkv, h, d, scale).unwrap();
        let want = channel_major(&attention_candle(&q, &k, &v, scale).unwrap());
        assert_eq!(got.dims(), [n, h * d, t], "case {i}");
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "case {i}: {diff}");
    }
    // Non-contiguous: the channel-major view of tokens-first storage.
    let tokens_first = random("att/nc", &[2, 20, 3 * 4 * 8]);
    let qkv = tokens_first.transpose(1, 2).unwrap();
    let want = attention_channel_major(&qkv.contiguous().unwrap(), 4, 8, 0.3).unwrap();
    assert_eq!(max_abs_diff(&attention_channel_major(&qkv, 4, 8, 0.3).unwrap(), &want), 0.0, "non-contiguous");
    let e = attention_channel_major(&qkv.narrow(1, 0, 90).unwrap(), 4, 8, 0.3).unwrap_err();
    assert!(e.to_string().contains("4 heads of 8 channels need 3 x 32 rows of queries, keys and values, got 90"), "{e}");
}

#[test]
fn fused_attention_of_a_token_does_not_depend_on_the_other_images() {
    use rcaflow::models::fast_attention::attention_channel_major;
    // Image 1 of a batch of 3 against the same image alone, bit for bit.
    let qkv = random("att/batch", &[3, 3 * 16 * 8, 64]);
    let batch = attention_channel_major(&qkv, 16, 8, 0.35).unwrap();
    let alone = attention_channel_major(&qkv.narrow(0, 1, 1).unwrap(), 16, 8, 0.35).unwrap();
    assert_eq!(max_abs_diff(&batch.narrow(0, 1, 1).unwrap(), &alone), 0.0);
}

#[test]
fn fused_pooling_equals_candles_ops() {
    use rcaflow::models::fast_pool::{pool2d, pool2d_candle, Pool};
    // (n, c, h, w, kernel, stride, padding): Inception's branch pools (35x35, 8x8) and its
    // stride-2 reductions (odd sides), ResNet's imagenet stem, VGG's 2x2, odd and tiny sizes.
    let cases = [
        (2, 3, 35, 35, 3, 1, 1),
        (1, 4, 8, 8, 3, 1, 1),
        (2, 3, 17, 17, 3, 2, 0),
        (1, 2, 147, 147, 3, 2, 0),
        (2, 3, 16, 15, 3, 2, 1),
        (1, 2, 32, 32, 2, 2, 0),
        (3, 2, 1, 1, 3, 1, 1),
        (1, 1, 2, 5, 3, 1, 1),
        (1, 1, 7, 3, 5, 2, 2),
    ];
    for (i, &(n, c, h, w, k, s, p)) in cases.iter().enumerate() {
        let x = random(&format!("pool{i}"), &[n, c, h, w]);
        for pool in [Pool::Max, Pool::AverageOfReal] {
            let fast = pool2d(&x, pool, k, s, p).unwrap();
            let plain = pool2d_candle(&x, pool, k, s, p).unwrap();
            assert_eq!(fast.dims(), plain.dims(), "case {i} {pool:?}");
            let diff = max_abs_diff(&fast, &plain);
            let tolerance = if pool == Pool::Max { 0.0 } else { 1e-6 };
            assert!(diff <= tolerance, "case {i} {pool:?}: {diff}");
        }
    }
    // The average leaves the padding out of the count: PyTorch's
    // F.avg_pool2d(ramp(3x4), 3, 1, 1, count_include_pad=False).
    let ramp = Tensor::arange(0f32, 12., &Device::Cpu).unwrap().reshape((1, 1, 3, 4)).unwrap();
    let got: Vec<f32> = pool2d(&ramp, Pool::AverageOfReal, 3, 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, [2.5, 3.0, 4.0, 4.5, 4.5, 5.0, 6.0, 6.5, 6.5, 7.0, 8.0, 8.5]);
    // A NaN wins its windows, as in PyTorch; a non-contiguous input is read by its strides.
    let mut values = uniform_f32("pool/nan", 25, -1.0, 1.0);
    values[12] = f32::NAN;
    let x = Tensor::from_vec(values, (1, 1, 5, 5), &Device::Cpu).unwrap();
    let y: Vec<f32> = pool2d(&x, Pool::Max, 3, 2, 0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    let x = random("pool/nc", &[2, 3, 9, 7]).transpose(2, 3).unwrap();
    let want = pool2d(&x.contiguous().unwrap(), Pool::AverageOfReal, 3, 2, 1).unwrap();
    assert_eq!(max_abs_diff(&pool2d(&x, Pool::AverageOfReal, 3, 2, 1).unwrap(), &want), 0.0);
    let e = pool2d(&random("pool/bad", &[1, 1, 4, 4]), Pool::Max, 3, 1, 2).unwrap_err();
    assert!(e.to_string().contains("pooling 3x3, stride 1, padding 2 does not fit a 4x4 input"), "{e}");
}
