//! A small, fully deterministic example set for `rcaflow eval`, made by code: every class is a
//! colour "identity", real images are that colour with pixel noise and a small blob, and the
//! "generated" images come from a pretend generator that drifts to the next class's colour with
//! a per-class probability, so identities are kept for some classes and lost for others.
//!
//! The oracle is a torchvision ResNet-18 (cifar stem) whose weights are written by hand so that
//! it is a nearest-colour-centroid classifier: the stem copies the [-1, 1] input into channels
//! (positive and negative parts), every residual branch is zeroed so blocks pass their input
//! through, the 1x1 downsample convolutions carry the channels on, and `fc` scores
//! 2·mu_c·x - |mu_c|^2 on the pooled colour. It is a real torchvision state_dict (load it with
//! `torchvision.models.resnet18(num_classes=K)` after swapping conv1 for a 3x3 and maxpool for
//! Identity), so the example exercises exactly the code a trained oracle does.
//!
//! Shared by `examples/make_example.rs` and the integration tests (`#[path]`-included).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

/// Class names and their colours.
pub const PALETTE: [(&str, [u8; 3]); 4] =
    [("amber", [230, 170, 30]), ("azure", [40, 90, 210]), ("crimson", [200, 30, 40]), ("emerald", [30, 170, 80])];

/// splitmix64: a tiny deterministic generator, so the example needs no RNG crate.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn to_unit(c: u8) -> f32 {
    2.0 * c as f32 / 255.0 - 1.0
}

/// State dict of the colour-centroid ResNet-18 (cifar stem) for `colors`, by torchvision key.
pub fn color_oracle(colors: &[[u8; 3]]) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let mut sd = HashMap::new();
    let zeros = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &dev).expect("cpu alloc");
    let from = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).expect("shape matches data");
    // BatchNorm that is the identity in eval mode (running_var chosen so var + eps = 1).
    let bn = |sd: &mut HashMap<String, Tensor>, name: &str, c: usize, pass: bool| {
        let w = if pass { 1.0 } else { 0.0 };
        sd.insert(format!("{name}.weight"), from(vec![w; c], &[c]));
        sd.insert(format!("{name}.bias"), from(vec![0.0; c], &[c]));
        sd.insert(format!("{name}.running_mean"), from(vec![0.0; c], &[c]));
        sd.insert(format!("{name}.running_var"), from(vec![1.0 - 1e-5; c], &[c]));
        sd.insert(format!("{name}.num_batches_tracked"), Tensor::new(0i64, &dev).expect("scalar"));
    };
    // 1. Stem: channel k = +x_k, channel 3 + k = -x_k (centre tap of the 3x3 kernel).
    let mut conv1 = vec![0.0f32; 64 * 3 * 9];
    for k in 0..3 {
        conv1[(k * 3 + k) * 9 + 4] = 1.0;
        conv1[((3 + k) * 3 + k) * 9 + 4] = -1.0;
    }
    sd.insert("conv1.weight".into(), from(conv1, &[64, 3, 3, 3]));
    bn(&mut sd, "bn1", 64, true);
    // 2. Residual branches zeroed (their last BN outputs 0); downsample 1x1 convs copy channels.
    let widths = [64, 128, 256, 512];
    let mut cin = 64;
    for (l, &w) in widths.iter().enumerate() {
        for b in 0..2 {
            let p = format!("layer{}.{b}", l + 1);
            let block_in = if b == 0 { cin } else { w };
            sd.insert(format!("{p}.conv1.weight"), zeros(&[w, block_in, 3, 3]));
            bn(&mut sd, &format!("{p}.bn1"), w, false);
            sd.insert(format!("{p}.conv2.weight"), zeros(&[w, w, 3, 3]));
            bn(&mut sd, &format!("{p}.bn2"), w, false);
            if b == 0 && l > 0 {
                let mut ds = vec![0.0f32; w * block_in];
                for k in 0..block_in.min(w) {
                    ds[k * block_in + k] = 1.0;
                }
                sd.insert(format!("{p}.downsample.0.weight"), from(ds, &[w, block_in, 1, 1]));
                bn(&mut sd, &format!("{p}.downsample.1"), w, true);
            }
        }
        cin = w;
    }
    // 3. fc: logit_c = 2 mu_c . x - |mu_c|^2 with x = relu(x) - relu(-x), pooled.
    let k = colors.len();
    let mut fc = vec![0.0f32; k * 512];
    let mut bias = vec![0.0f32; k];
    for (c, rgb) in colors.iter().enumerate() {
        for ch in 0..3 {
            let mu = to_unit(rgb[ch]);
            fc[c * 512 + ch] = 2.0 * mu;
            fc[c * 512 + 3 + ch] = -2.0 * mu;
            bias[c] -= mu * mu;
        }
    }
    sd.insert("fc.weight".into(), from(fc, &[k, 512]));
    sd.insert("fc.bias".into(), from(bias, &[k]));
    sd
}

/// Writes an RGB PNG of `size` x `size` whose pixel (x, y) is `pixel(x, y)`.
pub fn write_png(path: &Path, size: u32, mut pixel: impl FnMut(u32, u32) -> [u8; 3]) {
    let img = image::RgbImage::from_fn(size, size, |x, y| image::Rgb(pixel(x, y)));
    img.save(path).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A noisy image of `color` with a lighter disc somewhere: the class stays readable.
pub fn identity_image(path: &Path, size: u32, color: [u8; 3], rng: &mut SplitMix) {
    let (cx, cy) = (rng.unit() * size as f64, rng.unit() * size as f64);
    let r = size as f64 * (0.1 + 0.15 * rng.unit());
    let mut noise = SplitMix(rng.next_u64());
    write_png(path, size, |x, y| {
        let inside = (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2) < r * r;
        let mut px = color;
        for c in &mut px {
            let jitter = (noise.unit() - 0.5) * 40.0 + if inside { 35.0 } else { 0.0 };
            *c = (*c as f64 + jitter).clamp(0.0, 255.0) as u8;
        }
        px
    });
}

/// Probability that the pretend generator draws class c in the next class's colour.
pub const DRIFT: [f64; 4] = [0.0, 0.15, 0.4, 0.7];

/// Writes `root/real/<class>/*.png`, `root/generated/<class>/*.png` and `root/oracle.safetensors`.
pub fn make_example(root: &Path, per_class: usize, size: u32, seed: u64) {
    let mut rng = SplitMix(seed);
    for (c, (name, color)) in PALETTE.iter().enumerate() {
        for split in ["real", "generated"] {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            for i in 0..per_class {
                let drawn = if split == "generated" && rng.unit() < DRIFT[c] { PALETTE[(c + 1) % PALETTE.len()].1 } else { *color };
                identity_image(&dir.join(format!("{i:05}.png")), size, drawn, &mut rng);
            }
        }
    }
    let colors: Vec<[u8; 3]> = PALETTE.iter().map(|(_, c)| *c).collect();
    candle_core::safetensors::save(&color_oracle(&colors), root.join("oracle.safetensors")).expect("write oracle");
}
