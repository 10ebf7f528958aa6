//! LPIPS, the learned perceptual image distance of the per-class diversity metric, exactly as the
//! `lpips` package v0.1 (0.1.4) computes it with `lpips.LPIPS(net='alex'|'vgg', version='0.1')`.
//!
//! Reference: `lpips/pretrained_networks.py` (classes `alexnet` and `vgg16`: torchvision's
//! `features` cut into five slices) and `lpips/lpips.py` (`LPIPS.forward`, `ScalingLayer`,
//! `NetLinLayer`, `spatial_average`), with `lpips.normalize_tensor` and `lpips.im2tensor` from
//! `lpips/__init__.py` (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
//! Perceptual Metric", 2018). In eval mode, for inputs `x0`, `x1` in [-1, 1]:
//!
//! 1. `ScalingLayer`: `(x - shift) / scale` with shift (-.030, -.088, -.188) and scale
//!    (.458, .448, .450) per channel;
//! 2. the backbone's activations after each of its five slices:
//!    - alex (torchvision `alexnet().features`): relu1 = `features[0..2]` (conv 11x11/4 pad 2),
//!      relu2 = `[2..5]` (max-pool 3x3/2, conv 5x5 pad 2), relu3 = `[5..8]` (max-pool 3x3/2,
//!      conv 3x3 pad 1), relu4 = `[8..10]`, relu5 = `[10..12]` (conv 3x3 pad 1); 64, 192, 384,
//!      256, 256 channels; the final max-pool `features[12]` is not used;
//!    - vgg (torchvision `vgg16().features`): relu1_2 = `[0..4]`, relu2_2 = `[4..9]`, relu3_3 =
//!      `[9..16]`, relu4_3 = `[16..23]`, relu5_3 = `[23..30]` (3x3 pad 1 convs, 2x2/2 max-pools
//!      opening slices 2-5); 64, 128, 256, 512, 512 channels; `features[30]` is not used;
//! 3. each activation unit-normalised over channels, `f / (sqrt(sum_c f^2) + 1e-10)`
//!    (`normalize_tensor`), and the squared difference of the two sides;
//! 4. `lin{k}`: a 1x1 conv to one channel without bias (its dropout is the identity in eval);
//! 5. the spatial mean of each layer's map (`spatial_average`), summed over the five layers.
//!
//! Max-pools have no padding and floor their output size (`ceil_mode=False`), so small inputs
//! leave nothing to pool: alex needs at least [`LpipsNet::Alex`]`.min_size()` = 31 pixels in
//! height and in width (conv1 gives 7, the pools 3 and 1), vgg at least 16 (four 2x2 pools down
//! to 1); [`Lpips::distance`] refuses smaller inputs with an error that says so.
//!
//! Weights come from two files, loaded as two [`WeightMap`]s: the backbone from a torchvision
//! state_dict ([`ALEXNET_FILE`] / [`VGG16_FILE`]: keys `features.{i}.weight` / `.bias`; its
//! `classifier.*` tensors are ignored), the lin layers from lpips' `weights/v0.1/alex.pth` /
//! `vgg.pth` ([`LpipsNet::lin_file`]: keys `lin{k}.model.1.weight`, shape [1, C, 1, 1]). lpips
//! ships those lin files as pre-1.6 (non-zip) torch checkpoints; [`WeightMap::load`] reads them
//! as they are (see [`super::legacy_pth`]). Parity with the package
//! is tested in tests/lpips_parity.rs (fixtures from scripts/make_lpips_fixtures.py).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use super::fast_conv::{conv2d_fused_cached, ConvParams, Epilogue, KernelCache};
use super::fast_pool::{pool2d, Pool};
use super::weights::{WeightMap, WeightsError};

/// torchvision's AlexNet checkpoint file name (`AlexNet_Weights.IMAGENET1K_V1`).
pub const ALEXNET_FILE: &str = "alexnet-owt-7be5be79.pth";
/// torchvision's VGG16 checkpoint file name (`VGG16_Weights.IMAGENET1K_V1`).
pub const VGG16_FILE: &str = "vgg16-397923af.pth";
/// lpips' lin weights for the alex backbone (`lpips/weights/v0.1/alex.pth`).
pub const LPIPS_ALEX_LIN_FILE: &str = "alex.pth";
/// lpips' lin weights for the vgg backbone (`lpips/weights/v0.1/vgg.pth`).
pub const LPIPS_VGG_LIN_FILE: &str = "vgg.pth";

/// `ScalingLayer.shift` (lpips v0.1).
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
/// `ScalingLayer.scale` (lpips v0.1).
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// `normalize_tensor`'s eps.
const NORM_EPS: f64 = 1e-10;
/// Number of feature layers (slices) of both backbones.
const LAYERS: usize = 5;

/// The backbone ("trunk") network of LPIPS. `Default` is lpips' default, alex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LpipsNet {
    #[default]
    Alex,
    Vgg,
}

/// A config string that is not one of the accepted backbone names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lpips net \"{0}\": expected \"alex\" or \"vgg\"")]
pub struct LpipsNetParseError(pub String);

impl LpipsNet {
    /// Channels of the five feature layers (lpips' `chns`).
    pub fn channels(self) -> [usize; LAYERS] {
        match self {
            LpipsNet::Alex => [64, 192, 384, 256, 256],
            LpipsNet::Vgg => [64, 128, 256, 512, 512],
        }
    }

    /// The smallest input height (and width) the backbone's pools accept: 31 for alex, 16 for
    /// vgg. Checked by [`Lpips::distance`].
    pub fn min_size(self) -> usize {
        match self {
            LpipsNet::Alex => 31,
            LpipsNet::Vgg => 16,
        }
    }

    /// The standard file name of the torchvision checkpoint holding the backbone.
    pub fn backbone_file(self) -> &'static str {
        match self {
            LpipsNet::Alex => ALEXNET_FILE,
            LpipsNet::Vgg => VGG16_FILE,
        }
    }

    /// The standard file name of lpips' v0.1 lin weights for this backbone.
    pub fn lin_file(self) -> &'static str {
        match self {
            LpipsNet::Alex => LPIPS_ALEX_LIN_FILE,
            LpipsNet::Vgg => LPIPS_VGG_LIN_FILE,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            LpipsNet::Alex => "alex",
            LpipsNet::Vgg => "vgg",
        }
    }

    /// torchvision's `features` up to the last layer lpips uses, and the end (exclusive) of
    /// each of lpips' five slices in it.
    fn features(self) -> (Vec<Op>, [usize; LAYERS]) {
        match self {
            LpipsNet::Alex => {
                let conv = |c_in, c_out, kernel, stride, padding| Op::Conv { c_in, c_out, kernel, stride, padding };
                let pool = Op::MaxPool { kernel: 3, stride: 2 };
                let ops = vec![
                    conv(3, 64, 11, 4, 2),   // 0
                    Op::Relu,                // 1  relu1
                    pool,                    // 2
                    conv(64, 192, 5, 1, 2),  // 3
                    Op::Relu,                // 4  relu2
                    pool,                    // 5
                    conv(192, 384, 3, 1, 1), // 6
                    Op::Relu,                // 7  relu3
                    conv(384, 256, 3, 1, 1), // 8
                    Op::Relu,                // 9  relu4
                    conv(256, 256, 3, 1, 1), // 10
                    Op::Relu,                // 11 relu5
                ];
                (ops, [2, 5, 8, 10, 12])
            }
            LpipsNet::Vgg => {
                // torchvision's `make_layers(cfgs["D"])` without the last "M".
                const CFG: [Option<usize>; 17] = [
                    Some(64),
                    Some(64),
                    None,
                    Some(128),
                    Some(128),
                    None,
                    Some(256),
                    Some(256),
                    Some(256),
                    None,
                    Some(512),
                    Some(512),
                    Some(512),
                    None,
                    Some(512),
                    Some(512),
                    Some(512),
                ];
                let mut ops = Vec::new();
                let mut c_in = 3;
                for entry in CFG {
                    match entry {
                        Some(c_out) => {
                            ops.push(Op::Conv { c_in, c_out, kernel: 3, stride: 1, padding: 1 });
                            ops.push(Op::Relu);
                            c_in = c_out;
                        }
                        None => ops.push(Op::MaxPool { kernel: 2, stride: 2 }),
                    }
                }
                (ops, [4, 9, 16, 23, 30])
            }
        }
    }
}

impl FromStr for LpipsNet {
    type Err = LpipsNetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "alex" => Ok(LpipsNet::Alex),
            "vgg" => Ok(LpipsNet::Vgg),
            other => Err(LpipsNetParseError(other.to_string())),
        }
    }
}

impl fmt::Display for LpipsNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of torchvision's `features` Sequential, before weights are attached.
#[derive(Debug, Clone, Copy)]
enum Op {
    Conv { c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize },
    Relu,
    MaxPool { kernel: usize, stride: usize },
}

impl Op {
    /// The spatial size after this op for input size `size`, `None` where PyTorch would refuse
    /// (an output size below 1).
    fn out_size(self, size: usize) -> Option<usize> {
        match self {
            Op::Conv { kernel, stride, padding, .. } => (size + 2 * padding).checked_sub(kernel).map(|d| d / stride + 1),
            Op::Relu => Some(size),
            Op::MaxPool { kernel, stride } => size.checked_sub(kernel).map(|d| d / stride + 1),
        }
    }
}

/// Whether a side of `size` pixels leaves at least one pixel after every op of `ops`.
fn accepts_size(ops: &[Op], size: usize) -> bool {
    ops.iter().try_fold(size, |s, op| op.out_size(s).filter(|&s| s > 0)).is_some()
}

/// A conv with bias, as torchvision's `features` convs (`nn.Conv2d(..., bias=True)`).
#[derive(Debug, Clone)]
struct Conv2d {
    weight: Tensor,
    /// What the fused convolution derives from `weight`, made on first use.
    kernel: KernelCache,
    /// `[1, C_out, 1, 1]`, for broadcasting.
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    fn load(w: &WeightMap, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self, WeightsError> {
        let weight = w.get(&[c_out, c_in, kernel, kernel], "weight")?;
        let bias = w.get(&[c_out], "bias")?.reshape((1, c_out, 1, 1)).map_err(|e| WeightsError::Tensor {
            path: w.path().to_path_buf(),
            name: format!("{}.bias", w.prefix()),
            cause: e.to_string(),
        })?;
        Ok(Self { weight, kernel: KernelCache::default(), bias, stride, padding })
    }
}

impl Conv2d {
    /// The convolution with its bias, and the ReLU after it when `relu` (one pass).
    fn forward_relu(&self, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        let p = ConvParams::new(self.stride, (self.padding, self.padding));
        conv2d_fused_cached(x, &self.weight, &self.kernel, p, Epilogue { shift: Some(&self.bias), relu, ..Epilogue::default() })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_relu(x, false)
    }
}

/// One layer of the backbone, with its weights.
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Relu,
    /// `nn.MaxPool2d(kernel, stride)`: no padding, floor mode (candle's own semantics).
    MaxPool {
        kernel: usize,
        stride: usize,
    },
}

impl Module for Layer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Layer::Conv(conv) => conv.forward(x),
            Layer::Relu => x.relu(),
            Layer::MaxPool { kernel, stride } => pool2d(x, Pool::Max, *kernel, *stride, 0),
        }
    }
}

/// torchvision's `features` (alexnet or vgg16) up to relu5 / relu5_3, tapped after each of
/// lpips' five slices.
#[derive(Debug, Clone)]
struct Backbone {
    ops: Vec<Op>,
    layers: Vec<Layer>,
    /// End (exclusive) of each slice in `layers`.
    slice_ends: [usize; LAYERS],
}

impl Backbone {
    fn load(net: LpipsNet, w: &WeightMap) -> Result<Self, WeightsError> {
        let (ops, slice_ends) = net.features();
        let features = w.pp("features");
        let layers = ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                Ok(match *op {
                    Op::Conv { c_in, c_out, kernel, stride, padding } => {
                        Layer::Conv(Conv2d::load(&features.pp(i), c_in, c_out, kernel, stride, padding)?)
                    }
                    Op::Relu => Layer::Relu,
                    Op::MaxPool { kernel, stride } => Layer::MaxPool { kernel, stride },
                })
            })
            .collect::<Result<Vec<_>, WeightsError>>()?;
        Ok(Self { ops, layers, slice_ends })
    }

    /// Whether a side of `size` pixels survives every layer used (see [`LpipsNet::min_size`]).
    fn accepts(&self, size: usize) -> bool {
        accepts_size(&self.ops, size)
    }

    /// The five slice outputs for `x` (`[N, 3, H, W]`, already scaled).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(LAYERS);
        let mut h = x.clone();
        let mut start = 0;
        for &end in &self.slice_ends {
            let mut i = start;
            while i < end {
                // A conv and the ReLU after it in one pass.
                match (&self.layers[i], self.layers.get(i + 1).filter(|_| i + 1 < end)) {
                    (Layer::Conv(conv), Some(Layer::Relu)) => {
                        h = conv.forward_relu(&h, true)?;
                        i += 2;
                    }
                    (layer, _) => {
                        h = layer.forward(&h)?;
                        i += 1;
                    }
                }
            }
            outs.push(h.clone());
            start = end;
        }
        Ok(outs)
    }
}

/// lpips' `ScalingLayer`: `(x - shift) / scale` per channel.
#[derive(Debug, Clone)]
struct ScalingLayer {
    /// `[1, 3, 1, 1]`.
    shift: Tensor,
    /// `[1, 3, 1, 1]`.
    scale: Tensor,
}

impl ScalingLayer {
    fn new(device: &Device) -> candle_core::Result<Self> {
        Ok(Self { shift: Tensor::new(&SHIFT, device)?.reshape((1, 3, 1, 1))?, scale: Tensor::new(&SCALE, device)?.reshape((1, 3, 1, 1))? })
    }
}

impl Module for ScalingLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_sub(&self.shift)?.broadcast_div(&self.scale)
    }
}

/// lpips' `NetLinLayer` in eval mode: `Dropout` (identity) then a bias-free 1x1 conv to one
/// channel, weight `lin{k}.model.1.weight` `[1, C, 1, 1]`.
#[derive(Debug, Clone)]
struct NetLinLayer {
    weight: Tensor,
}

impl NetLinLayer {
    fn load(w: &WeightMap, channels: usize) -> Result<Self, WeightsError> {
        Ok(Self { weight: w.pp("model").pp(1).get(&[1, channels, 1, 1], "weight")? })
    }
}

impl Module for NetLinLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.conv2d(&self.weight, 0, 1, 1, 1)
    }
}

impl NetLinLayer {
    /// One layer's term of the distance, `[N, 1, 1, 1]`, from its features `f` `[2N, C, H, W]`
    /// (the x0 side first): `mean_hw(lin((normalize(f0) - normalize(f1))^2))`. On the CPU (f32)
    /// one pass over the features with no intermediate tensor; elsewhere candle's ops.
    fn layer_distance(&self, f: &Tensor, n: usize) -> candle_core::Result<Tensor> {
        if f.device().is_cpu() && f.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            let op = FusedLayerDistance { pairs: n, weight: self.weight.flatten_all()?.to_vec1()? };
            return f.contiguous()?.apply_op1_no_bwd(&op);
        }
        self.layer_distance_candle(f, n)
    }

    /// [`NetLinLayer::layer_distance`] with candle's ops, as lpips computes it.
    fn layer_distance_candle(&self, f: &Tensor, n: usize) -> candle_core::Result<Tensor> {
        let f = normalize_tensor(f)?;
        let diff = (f.narrow(0, 0, n)? - f.narrow(0, n, n)?)?.sqr()?;
        self.forward(&diff)?.mean_keepdim((2, 3))
    }
}

/// The fused CPU form of [`NetLinLayer::layer_distance`]: per pair, the two sides' channel
/// norms at every pixel, then the lin-weighted squared difference of the normalised features,
/// averaged over the pixels; pairs in parallel.
struct FusedLayerDistance {
    pairs: usize,
    weight: Vec<f32>,
}

impl candle_core::CustomOp1 for FusedLayerDistance {
    fn name(&self) -> &'static str {
        "lpips-layer-distance"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let f = super::cpu_input::contiguous_f32(storage, layout, "lpips layer distance")?;
        let (two_n, c, h, w) = layout.shape().dims4()?;
        if two_n != 2 * self.pairs || c != self.weight.len() {
            candle_core::bail!(
                "lpips layer distance: features {:?} for {} pairs and {} lin weights",
                layout.shape().dims(),
                self.pairs,
                self.weight.len()
            );
        }
        let (plane, image) = (h * w, c * h * w);
        let out: Vec<f32> = (0..self.pairs)
            .into_par_iter()
            .map(|i| {
                let (f0, f1) = (&f[i * image..(i + 1) * image], &f[(self.pairs + i) * image..(self.pairs + i + 1) * image]);
                let norm = |x: &[f32]| -> Vec<f32> {
                    let mut sq = vec![0f32; plane];
                    for ch in x.chunks_exact(plane) {
                        sq.iter_mut().zip(ch).for_each(|(s, &v)| *s += v * v);
                    }
                    sq.iter().map(|s| s.sqrt() + NORM_EPS as f32).collect()
                };
                let (n0, n1) = (norm(f0), norm(f1));
                let mut acc = vec![0f32; plane];
                for ((ch0, ch1), &wc) in f0.chunks_exact(plane).zip(f1.chunks_exact(plane)).zip(&self.weight) {
                    for (p, s) in acc.iter_mut().enumerate() {
                        let d = ch0[p] / n0[p] - ch1[p] / n1[p];
                        *s += wc * d * d;
                    }
                }
                (acc.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32
            })
            .collect();
        Ok((candle_core::CpuStorage::F32(out), candle_core::Shape::from((self.pairs, 1, 1, 1))))
    }
}

/// lpips' `normalize_tensor`: `x / (sqrt(sum_c x^2) + eps)` over the channel dim.
fn normalize_tensor(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
    x.broadcast_div(&(norm + NORM_EPS)?)
}

/// LPIPS v0.1 with an alex or vgg backbone, in eval mode.
#[derive(Debug, Clone)]
pub struct Lpips {
    net: LpipsNet,
    scaling: ScalingLayer,
    backbone: Backbone,
    lins: Vec<NetLinLayer>,
    device: Device,
}

impl Lpips {
    /// Builds LPIPS from the torchvision backbone state_dict (`features.*` keys; anything else in
    /// it, such as `classifier.*`, is ignored) and lpips' lin weights (`lin{k}.model.1.weight`).
    /// Both maps must be on the same device, which the model then runs on. Fails on the first
    /// missing or wrongly shaped tensor, naming it and its file, and on a `features.*` or
    /// `lin*` tensor the network does not use (a checkpoint of another architecture).
    pub fn load(net: LpipsNet, backbone: &WeightMap, lin: &WeightMap) -> Result<Lpips, WeightsError> {
        let bb = Backbone::load(net, backbone)?;
        reject_unused(backbone, "features.", &format!("lpips {net} backbone"))?;
        let lins = net
            .channels()
            .iter()
            .enumerate()
            .map(|(k, &c)| NetLinLayer::load(&lin.pp(format!("lin{k}")), c))
            .collect::<Result<Vec<_>, _>>()?;
        reject_unused(lin, "lin", &format!("lpips {net} lin layers"))?;
        let device = lins[0].weight.device().clone();
        let scaling = ScalingLayer::new(&device).map_err(|e| WeightsError::Tensor {
            path: lin.path().to_path_buf(),
            name: "scaling_layer".to_string(),
            cause: e.to_string(),
        })?;
        Ok(Self { net, scaling, backbone: bb, lins, device })
    }

    /// The backbone this model was built with.
    pub fn net(&self) -> LpipsNet {
        self.net
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// LPIPS distances `[N]` between `x0` and `x1`, both f32 `[N, 3, H, W]` in [-1, 1] with
    /// `H, W >= net.min_size()`: `lpips.LPIPS(...)(x0, x1)` flattened.
    pub fn distance(&self, x0: &Tensor, x1: &Tensor) -> candle_core::Result<Tensor> {
        // 1. Check the inputs: same shape, [N, 3, H, W], large enough for the pools.
        let dims = x0.dims();
        if dims != x1.dims() {
            candle_core::bail!("lpips ({}): the two image batches differ in shape: {:?} vs {:?}", self.net, dims, x1.dims());
        }
        if dims.len() != 4 || dims[1] != 3 {
            candle_core::bail!("lpips ({}): expected [N, 3, H, W] images, got {dims:?}", self.net);
        }
        let (n, h, w) = (dims[0], dims[2], dims[3]);
        if !self.backbone.accepts(h) || !self.backbone.accepts(w) {
            candle_core::bail!(
                "lpips ({}): images of {h}x{w} are too small; the {} backbone's max-pools need \
                 at least {m}x{m} pixels",
                self.net,
                self.net,
                m = self.net.min_size()
            );
        }
        // 2. ScalingLayer on both sides, run through the backbone as one batch of 2N.
        let x = Tensor::cat(&[x0, x1], 0)?;
        let x = self.scaling.forward(&x)?;
        // 3. The five slice outputs (relu1..relu5 or relu1_2..relu5_3).
        let feats = self.backbone.forward(&x)?;
        let mut total: Option<Tensor> = None;
        for (f, lin) in feats.iter().zip(&self.lins) {
            // 4-5. normalize_tensor on each side, squared difference, lin{k} (1x1 conv to one
            //      channel), spatial_average (keepdim): [N, 1, 1, 1].
            let res = lin.layer_distance(f, n)?;
            // 6. Sum over the layers, in lpips' order.
            total = Some(match total {
                None => res,
                Some(t) => (t + res)?,
            });
        }
        let total = total.ok_or_else(|| candle_core::Error::Msg("lpips: no layers".into()))?;
        total.reshape(n)
    }

    /// LPIPS distances between `n` pairs of planar uint8 RGB images `a[i]`, `b[i]`
    /// (`n x 3 x height x width` each, row-major), scaled as `lpips.im2tensor` does
    /// (`x / 127.5 - 1`, computed in f64 and stored as f32).
    pub fn distance_u8(&self, a: &[u8], b: &[u8], n: usize, height: usize, width: usize) -> Result<Vec<f32>, candle_core::Error> {
        let expected = n * 3 * height * width;
        if a.len() != expected || b.len() != expected {
            candle_core::bail!(
                "lpips: got {} and {} pixel bytes, expected {expected} each for \
                 {n} x 3 x {height} x {width}",
                a.len(),
                b.len()
            );
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let to_input = |pixels: &[u8]| -> candle_core::Result<Tensor> {
            let v: Vec<f32> = pixels.iter().map(|&p| (f64::from(p) / 127.5 - 1.0) as f32).collect();
            Tensor::from_vec(v, (n, 3, height, width), &self.device)
        };
        let d = self.distance(&to_input(a)?, &to_input(b)?)?;
        d.to_dtype(DType::F32)?.to_vec1::<f32>()
    }
}

/// Fails on the first key under `w`'s prefix starting with `start` that no `get` has used.
fn reject_unused(w: &WeightMap, start: &str, model: &str) -> Result<(), WeightsError> {
    let prefix = if w.prefix().is_empty() { start.to_string() } else { format!("{}.{start}", w.prefix()) };
    match w.unused_keys().into_iter().find(|k| k.starts_with(&prefix)) {
        Some(name) => Err(WeightsError::Unexpected { path: w.path().to_path_buf(), name, model: model.to_string() }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for n in [LpipsNet::Alex, LpipsNet::Vgg] {
            assert_eq!(n.to_string().parse::<LpipsNet>(), Ok(n));
            assert_eq!(serde_json::to_string(&n).unwrap(), format!("\"{n}\""));
        }
        assert_eq!(LpipsNet::default(), LpipsNet::Alex);
        assert_eq!("squeeze".parse::<LpipsNet>().unwrap_err().to_string(), "unknown lpips net \"squeeze\": expected \"alex\" or \"vgg\"");
        assert_eq!(LpipsNet::Alex.backbone_file(), "alexnet-owt-7be5be79.pth");
        assert_eq!(LpipsNet::Vgg.lin_file(), "vgg.pth");
    }

    #[test]
    fn min_size_is_what_the_pools_allow() {
        for net in [LpipsNet::Alex, LpipsNet::Vgg] {
            let (ops, _) = net.features();
            let m = net.min_size();
            assert!(accepts_size(&ops, m), "{net} {m}");
            assert!(!accepts_size(&ops, m - 1), "{net} {}", m - 1);
        }
    }

    #[test]
    fn slices_tap_after_relus_with_lpips_channels() {
        for net in [LpipsNet::Alex, LpipsNet::Vgg] {
            let (ops, ends) = net.features();
            assert_eq!(ends[LAYERS - 1], ops.len(), "{net}");
            let mut c = 3;
            let mut k = 0;
            for (i, op) in ops.iter().enumerate() {
                if let Op::Conv { c_in, c_out, .. } = *op {
                    assert_eq!(c_in, c, "{net} features.{i}");
                    c = c_out;
                }
                if ends.contains(&(i + 1)) {
                    assert!(matches!(op, Op::Relu), "{net} slice ends at features.{i}");
                    assert_eq!(c, net.channels()[k], "{net} slice {k}");
                    k += 1;
                }
            }
        }
    }

    #[test]
    fn fused_layer_distance_equals_lpips_ops() {
        let dev = Device::Cpu;
        let uniform = |n: usize, k: u64| -> Vec<f32> {
            (0..n as u64).map(|i| (crate::units::mix64(i * 7919 + k) >> 40) as f32 / (1u64 << 24) as f32).collect()
        };
        // (pairs, channels, h, w): alex's and vgg's shapes, odd ones, one pixel.
        for (k, (n, c, h, w)) in [(2, 64, 7, 7), (3, 5, 3, 5), (1, 512, 1, 1), (4, 192, 3, 3)].into_iter().enumerate() {
            let f = Tensor::from_vec(uniform(2 * n * c * h * w, k as u64), (2 * n, c, h, w), &dev).unwrap();
            let lin = NetLinLayer { weight: Tensor::from_vec(uniform(c, 99 + k as u64), (1, c, 1, 1), &dev).unwrap() };
            // Non-contiguous too: the same features stored channels-last.
            let f_nc = f.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap().permute((0, 3, 1, 2)).unwrap();
            let want: Vec<f32> = lin.layer_distance_candle(&f, n).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for input in [&f, &f_nc] {
                let got: Vec<f32> = lin.layer_distance(input, n).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(got.len(), n);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * w.abs().max(1e-3), "case {k}: {got:?} vs {want:?}");
                }
            }
        }
        let lin = NetLinLayer { weight: Tensor::ones((1, 4, 1, 1), DType::F32, &dev).unwrap() };
        let e = lin.layer_distance(&Tensor::zeros((3, 4, 2, 2), DType::F32, &dev).unwrap(), 2).unwrap_err();
        assert!(e.to_string().contains("for 2 pairs and 4 lin weights"), "{e}");
    }

    #[test]
    fn normalize_tensor_keeps_zero_features_zero() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[3f32, 0., 4., 0.], &dev).unwrap().reshape((1, 2, 1, 2)).unwrap();
        let y: Vec<f32> = normalize_tensor(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // Channel vectors (3, 4) -> (0.6, 0.8); (0, 0) -> (0, 0) thanks to eps.
        assert_eq!(y, vec![0.6, 0., 0.8, 0.]);
    }
}
