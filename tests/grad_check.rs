//! Finite-difference checks of the gradients training relies on (f64, central differences):
//! GroupNorm, strided and padded convolution, the attention softmax, BatchNorm in training mode
//! (the ResNet oracle's), cross-entropy, and a whole tiny UNet's parameters.

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rcaflow::models::resnet::{BatchNorm2d, BnMode};

/// Deterministic pseudo-random values in [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(values(shape.iter().product(), seed), shape, &Device::Cpu).unwrap()
}

/// Compares d loss / d x from backprop with central differences, for the scalar
/// loss = sum(f(x) * r) with a fixed random r (so every output element matters).
fn check(name: &str, x: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let r = tensor(f(x).dims(), 99);
    let loss = |t: &Tensor| f(t).mul(&r).unwrap().sum_all().unwrap();
    let var = Var::from_tensor(x).unwrap();
    let grads = loss(var.as_tensor()).backward().unwrap();
    let analytic: Vec<f64> = grads.get(&var).unwrap_or_else(|| panic!("{name}: no gradient")).flatten_all().unwrap().to_vec1().unwrap();
    let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-6;
    let mut worst = 0f64;
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let at = |v: Vec<f64>| loss(&Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap()).to_scalar::<f64>().unwrap();
        let numeric = (at(plus) - at(minus)) / (2.0 * eps);
        let err = (numeric - analytic[i]).abs() / (1.0 + numeric.abs());
        worst = worst.max(err);
    }
    assert!(worst < 1e-6, "{name}: worst relative gradient error {worst:e}");
}

#[test]
fn group_norm_gradient() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let gn = candle_nn::group_norm(2, 4, 1e-5, VarBuilder::from_varmap(&vm, DType::F64, &dev)).unwrap();
    check("group norm", &tensor(&[2, 4, 3, 3], 1), |x| gn.forward(x).unwrap());
}

#[test]
fn conv2d_gradients_input_and_weight_with_stride_and_padding() {
    let w = tensor(&[3, 2, 3, 3], 2);
    check("conv2d input (stride 2, pad 1)", &tensor(&[2, 2, 7, 7], 3), |x| x.conv2d(&w, 1, 2, 1, 1).unwrap());
    let x = tensor(&[2, 2, 6, 6], 4);
    check("conv2d weight (stride 1, pad 1)", &w, |w| x.conv2d(w, 1, 1, 1, 1).unwrap());
    check("conv2d weight (stride 2, pad 0)", &w, |w| x.conv2d(w, 0, 2, 1, 1).unwrap());
}

#[test]
fn fast_backward_conv_matches_conv2d_and_finite_differences() {
    use rcaflow::models::conv_grad::conv2d_s1;
    let w = tensor(&[3, 2, 3, 3], 12);
    let x = tensor(&[2, 2, 5, 6], 13);
    for pad in [0, 1, 2] {
        let a = conv2d_s1(&Var::from_tensor(&x).unwrap(), &w, pad).unwrap();
        let b = x.conv2d(&w, pad, 1, 1, 1).unwrap();
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            "forward, pad {pad}"
        );
        check(&format!("conv2d_s1 input (pad {pad})"), &x, |x| conv2d_s1(x, &w, pad).unwrap());
        check(&format!("conv2d_s1 weight (pad {pad})"), &w, |w| conv2d_s1(&x, w, pad).unwrap());
    }
    let w1 = tensor(&[4, 2, 1, 1], 14);
    check("conv2d_s1 1x1 input", &x, |x| conv2d_s1(x, &w1, 0).unwrap());
    check("conv2d_s1 1x1 weight", &w1, |w| conv2d_s1(&x, w, 0).unwrap());
}

#[test]
fn attention_softmax_gradient() {
    // The attention's scores -> softmax -> weighted values, as src/models/unet/attention.rs.
    let v = tensor(&[2, 5, 3], 5);
    check("softmax attention", &tensor(&[2, 5, 5], 6), |s| {
        candle_nn::ops::softmax(&(s * 3.0).unwrap(), D::Minus1).unwrap().matmul(&v).unwrap()
    });
}

#[test]
fn batch_norm_train_mode_gradient() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let bn = BatchNorm2d::new(VarBuilder::from_varmap(&vm, DType::F64, &dev), 3).unwrap();
    check("batch norm (train mode)", &tensor(&[4, 3, 2, 2], 7), |x| bn.forward(x, BnMode::Train).unwrap());
}

#[test]
fn overlapping_max_pool_gradient() {
    // The imagenet stem's 3x3/2 max-pool (distinct values: no ties).
    let x =
        Tensor::from_vec((0..2 * 7 * 6).map(|i| ((i * 37) % 101) as f64 / 10.0).collect::<Vec<_>>(), (1, 2, 7, 6), &Device::Cpu).unwrap();
    check("max pool 3x3/2", &x, |x| rcaflow::models::resnet::max_pool_3x3_s2_p1(x).unwrap());
    let y = rcaflow::models::resnet::max_pool_3x3_s2_p1(&x).unwrap();
    assert_eq!(y.dims(), &[1, 2, 4, 3]);
}

#[test]
fn cross_entropy_gradient() {
    let labels = Tensor::new(&[0u32, 2, 1], &Device::Cpu).unwrap();
    check("cross entropy", &tensor(&[3, 4], 8), |x| candle_nn::loss::cross_entropy(x, &labels).unwrap().reshape(1).unwrap());
}

#[test]
fn unet_parameter_gradients() {
    // Every parameter tensor of a tiny class-conditional UNet (attention included) gets a
    // gradient that matches finite differences on a few of its entries.
    use rcaflow::models::unet::{UNet2DConfig, UNet2DModel};
    let dev = Device::Cpu;
    let cfg = UNet2DConfig {
        block_out_channels: vec![4, 8],
        down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
        up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
        layers_per_block: 1,
        norm_num_groups: 2,
        attention_head_dim: Some(4),
        num_class_embeds: Some(2),
        ..Default::default()
    };
    let vm = VarMap::new();
    let unet = UNet2DModel::new(&cfg, VarBuilder::from_varmap(&vm, DType::F64, &dev)).unwrap();
    let x = tensor(&[2, 3, 4, 4], 10);
    let t = Tensor::new(&[10u32, 500], &dev).unwrap();
    let y = Tensor::new(&[0u32, 1], &dev).unwrap();
    let r = tensor(&[2, 3, 4, 4], 11);
    let loss = || unet.forward(&x, &t, Some(&y)).unwrap().mul(&r).unwrap().sum_all().unwrap();
    let grads = loss().backward().unwrap();
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let eps = 1e-6;
    let mut worst = (0f64, String::new());
    for name in names {
        let var = &data[name];
        let g: Vec<f64> = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}")).flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        for i in [0, base.len() / 2, base.len() - 1] {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.dims(), &dev).unwrap()).unwrap();
                loss().to_scalar::<f64>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            at(0.0);
            let err = (numeric - g[i]).abs() / (1.0 + numeric.abs());
            if err > worst.0 {
                worst = (err, format!("{name}[{i}]: numeric {numeric}, backprop {}", g[i]));
            }
        }
    }
    assert!(worst.0 < 1e-5, "worst: {}", worst.1);
}
