//! The InceptionV3 of FID and the Inception Score, exactly as pytorch-fid computes it.
//!
//! Reference: pytorch-fid 0.3 `pytorch_fid/inception.py`: `fid_inception_v3()` is torchvision's
//! `Inception3` with `num_classes=1008, aux_logits=False` whose Mixed_5b/c/d, Mixed_6b..e,
//! Mixed_7b and Mixed_7c are replaced by `FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1` and
//! `FIDInceptionE_2` (the TensorFlow graph of `inception-2015-12-05`), and `InceptionV3([3],
//! resize_input=True, normalize_input=True)` runs it as four blocks:
//!
//! - block 0: Conv2d_1a_3x3 (stride 2), Conv2d_2a_3x3, Conv2d_2b_3x3 (pad 1), max-pool 3x3/2;
//! - block 1: Conv2d_3b_1x1, Conv2d_4a_3x3, max-pool 3x3/2;
//! - block 2: Mixed_5b, 5c, 5d (InceptionA), Mixed_6a (InceptionB), Mixed_6b..6e (InceptionC);
//! - block 3: Mixed_7a (InceptionD), Mixed_7b (E_1), Mixed_7c (E_2), adaptive average pool 1x1.
//!
//! The FID patches, all reproduced here: the branch_pool average pool (3x3, stride 1, pad 1) of
//! the A, C and E_1 blocks excludes the padding from its count (`count_include_pad=False`, as
//! TensorFlow does), and Mixed_7c (E_2) max-pools (3x3, stride 1, pad 1) instead. Every conv is
//! torchvision's `BasicConv2d`: conv without bias, BatchNorm with eps = 0.001, ReLU.
//!
//! Input pipeline (pytorch-fid's `ImagePathDataset` + `InceptionV3.forward`): uint8 / 255, then a
//! bilinear resize to 299x299 with align_corners=False (skipped when already 299x299), then
//! `2x - 1`. Outputs: the 2048-d pool3 features (FID) and `pool3 @ fc.weight^T`, the 1008
//! logits *without* `fc.bias` (the Inception Score's convention, see DESIGN.md section 1).
//!
//! Tensor keys are the state_dict names of pytorch-fid's model (`Conv2d_1a_3x3.conv.weight`,
//! `Mixed_5b.branch1x1.bn.running_mean`, `Mixed_6b.branch7x7_2.conv.weight`, `fc.weight`
//! [1008, 2048], `fc.bias`), i.e. those of [`PT_INCEPTION_FILE`]. That file, as released, is a
//! pre-1.6 (non-zip) torch checkpoint, which [`WeightMap::load`] refuses with the fix (re-save it
//! with torch >= 1.6 or convert it to .safetensors). Parity with pytorch-fid is tested in
//! tests/inception_parity.rs (fixtures from scripts/make_inception_fixtures.py).

use candle_core::{DType, Module, Tensor};

use super::batch_norm::BatchNorm;
use super::fast_conv::{conv2d_fused_cached, ConvParams, KernelCache};
use super::fast_pool::{pool2d, Pool};
use super::weights::{WeightMap, WeightsError};

/// The file name pytorch-fid downloads its weights to (and users already have).
pub const PT_INCEPTION_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";

/// BatchNorm's epsilon in torchvision's `BasicConv2d`.
const BN_EPS: f64 = 1e-3;
/// Side of the square input the network is evaluated at.
const INPUT_SIZE: usize = 299;
/// What the error messages call the model.
const MODEL_NAME: &str = "pytorch-fid InceptionV3";

/// Kernel (height, width), stride and padding (height, width) of one conv.
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    kernel: (usize, usize),
    stride: usize,
    padding: (usize, usize),
}

impl ConvShape {
    /// A square `k x k` kernel with stride 1 and no padding.
    const fn square(k: usize) -> Self {
        Self { kernel: (k, k), stride: 1, padding: (0, 0) }
    }

    const fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    const fn pad(self, h: usize, w: usize) -> Self {
        Self { padding: (h, w), ..self }
    }

    /// `kernel_size=(kh, kw), padding=(ph, pw)` with stride 1: the 1x7/7x1 and 1x3/3x1 convs.
    const fn rect(kh: usize, kw: usize, ph: usize, pw: usize) -> Self {
        Self { kernel: (kh, kw), stride: 1, padding: (ph, pw) }
    }
}

/// torchvision's `BasicConv2d`: conv (no bias) -> BatchNorm(eps=0.001) -> ReLU.
#[derive(Debug, Clone)]
struct BasicConv2d {
    weight: Tensor,
    /// What the fused convolution derives from `weight`, made on first use.
    kernel: KernelCache,
    shape: ConvShape,
    bn: BatchNorm,
}

impl BasicConv2d {
    fn load(w: &WeightMap, c_in: usize, c_out: usize, shape: ConvShape) -> Result<Self, WeightsError> {
        let (kh, kw) = shape.kernel;
        Ok(Self {
            weight: w.pp("conv").get(&[c_out, c_in, kh, kw], "weight")?,
            kernel: KernelCache::default(),
            shape,
            bn: BatchNorm::load(&w.pp("bn"), c_out, BN_EPS)?,
        })
    }
}

impl Module for BasicConv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // One pass: the convolution (asymmetric padding included) with BatchNorm and ReLU in
        // its epilogue (models::fast_conv).
        conv2d_fused_cached(x, &self.weight, &self.kernel, ConvParams::new(self.shape.stride, self.shape.padding), self.bn.epilogue(true))
    }
}

/// The pooling of an InceptionA/C/E block's `branch_pool` (3x3, stride 1, pad 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchPool {
    /// `F.avg_pool2d(..., count_include_pad=False)`: FIDInceptionA, FIDInceptionC, E_1.
    AvgExcludePad,
    /// `F.max_pool2d(...)`: FIDInceptionE_2 (Mixed_7c).
    Max,
}

impl BranchPool {
    fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            BranchPool::AvgExcludePad => avg_pool_3x3_s1_p1_exclude_pad(x),
            BranchPool::Max => max_pool_3x3_s1_p1(x),
        }
    }
}

/// FIDInceptionA (Mixed_5b, 5c, 5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1.
#[derive(Debug, Clone)]
struct InceptionA {
    branch1x1: BasicConv2d,
    branch5x5_1: BasicConv2d,
    branch5x5_2: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
    branch_pool: BasicConv2d,
}

impl InceptionA {
    fn load(w: &WeightMap, c_in: usize, pool_features: usize) -> Result<Self, WeightsError> {
        let one = ConvShape::square(1);
        Ok(Self {
            branch1x1: BasicConv2d::load(&w.pp("branch1x1"), c_in, 64, one)?,
            branch5x5_1: BasicConv2d::load(&w.pp("branch5x5_1"), c_in, 48, one)?,
            branch5x5_2: BasicConv2d::load(&w.pp("branch5x5_2"), 48, 64, ConvShape::square(5).pad(2, 2))?,
            branch3x3dbl_1: BasicConv2d::load(&w.pp("branch3x3dbl_1"), c_in, 64, one)?,
            branch3x3dbl_2: BasicConv2d::load(&w.pp("branch3x3dbl_2"), 64, 96, ConvShape::square(3).pad(1, 1))?,
            branch3x3dbl_3: BasicConv2d::load(&w.pp("branch3x3dbl_3"), 96, 96, ConvShape::square(3).pad(1, 1))?,
            branch_pool: BasicConv2d::load(&w.pp("branch_pool"), c_in, pool_features, one)?,
        })
    }
}

impl Module for InceptionA {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b5 = self.branch5x5_2.forward(&self.branch5x5_1.forward(x)?)?;
        let b3 = self.branch3x3dbl_1.forward(x)?;
        let b3 = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&b3)?)?;
        let bp = self.branch_pool.forward(&BranchPool::AvgExcludePad.forward(x)?)?;
        Tensor::cat(&[b1, b5, b3, bp], 1)
    }
}

/// InceptionB (Mixed_6a), the 35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2.
#[derive(Debug, Clone)]
struct InceptionB {
    branch3x3: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn load(w: &WeightMap, c_in: usize) -> Result<Self, WeightsError> {
        Ok(Self {
            branch3x3: BasicConv2d::load(&w.pp("branch3x3"), c_in, 384, ConvShape::square(3).stride(2))?,
            branch3x3dbl_1: BasicConv2d::load(&w.pp("branch3x3dbl_1"), c_in, 64, ConvShape::square(1))?,
            branch3x3dbl_2: BasicConv2d::load(&w.pp("branch3x3dbl_2"), 64, 96, ConvShape::square(3).pad(1, 1))?,
            branch3x3dbl_3: BasicConv2d::load(&w.pp("branch3x3dbl_3"), 96, 96, ConvShape::square(3).stride(2))?,
        })
    }
}

impl Module for InceptionB {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = self.branch3x3.forward(x)?;
        let bd = self.branch3x3dbl_1.forward(x)?;
        let bd = self.branch3x3dbl_3.forward(&self.branch3x3dbl_2.forward(&bd)?)?;
        let bp = max_pool_3x3_s2(x)?;
        Tensor::cat(&[b3, bd, bp], 1)
    }
}

/// FIDInceptionC (Mixed_6b..6e): 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1.
#[derive(Debug, Clone)]
struct InceptionC {
    branch1x1: BasicConv2d,
    branch7x7: [BasicConv2d; 3],
    branch7x7dbl: [BasicConv2d; 5],
    branch_pool: BasicConv2d,
}

impl InceptionC {
    fn load(w: &WeightMap, c_in: usize, c7: usize) -> Result<Self, WeightsError> {
        let one = ConvShape::square(1);
        let row = ConvShape::rect(1, 7, 0, 3);
        let col = ConvShape::rect(7, 1, 3, 0);
        let conv = |name: &str, c_in: usize, c_out: usize, shape: ConvShape| BasicConv2d::load(&w.pp(name), c_in, c_out, shape);
        Ok(Self {
            branch1x1: conv("branch1x1", c_in, 192, one)?,
            branch7x7: [conv("branch7x7_1", c_in, c7, one)?, conv("branch7x7_2", c7, c7, row)?, conv("branch7x7_3", c7, 192, col)?],
            branch7x7dbl: [
                conv("branch7x7dbl_1", c_in, c7, one)?,
                conv("branch7x7dbl_2", c7, c7, col)?,
                conv("branch7x7dbl_3", c7, c7, row)?,
                conv("branch7x7dbl_4", c7, c7, col)?,
                conv("branch7x7dbl_5", c7, 192, row)?,
            ],
            branch_pool: conv("branch_pool", c_in, 192, one)?,
        })
    }
}

impl Module for InceptionC {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b7 = chain(&self.branch7x7, x)?;
        let bd = chain(&self.branch7x7dbl, x)?;
        let bp = self.branch_pool.forward(&BranchPool::AvgExcludePad.forward(x)?)?;
        Tensor::cat(&[b1, b7, bd, bp], 1)
    }
}

/// InceptionD (Mixed_7a), the 17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 |
/// maxpool 3x3/2.
#[derive(Debug, Clone)]
struct InceptionD {
    branch3x3: [BasicConv2d; 2],
    branch7x7x3: [BasicConv2d; 4],
}

impl InceptionD {
    fn load(w: &WeightMap, c_in: usize) -> Result<Self, WeightsError> {
        let conv = |name: &str, c_in: usize, c_out: usize, shape: ConvShape| BasicConv2d::load(&w.pp(name), c_in, c_out, shape);
        let one = ConvShape::square(1);
        let reduce = ConvShape::square(3).stride(2);
        Ok(Self {
            branch3x3: [conv("branch3x3_1", c_in, 192, one)?, conv("branch3x3_2", 192, 320, reduce)?],
            branch7x7x3: [
                conv("branch7x7x3_1", c_in, 192, one)?,
                conv("branch7x7x3_2", 192, 192, ConvShape::rect(1, 7, 0, 3))?,
                conv("branch7x7x3_3", 192, 192, ConvShape::rect(7, 1, 3, 0))?,
                conv("branch7x7x3_4", 192, 192, reduce)?,
            ],
        })
    }
}

impl Module for InceptionD {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = chain(&self.branch3x3, x)?;
        let b7 = chain(&self.branch7x7x3, x)?;
        let bp = max_pool_3x3_s2(x)?;
        Tensor::cat(&[b3, b7, bp], 1)
    }
}

/// FIDInceptionE_1 (Mixed_7b) and FIDInceptionE_2 (Mixed_7c): 1x1 | 1x1-(1x3, 3x1) |
/// 1x1-3x3-(1x3, 3x1) | pool-1x1, the pool depending on the variant.
#[derive(Debug, Clone)]
struct InceptionE {
    branch1x1: BasicConv2d,
    branch3x3_1: BasicConv2d,
    branch3x3_2a: BasicConv2d,
    branch3x3_2b: BasicConv2d,
    branch3x3dbl_1: BasicConv2d,
    branch3x3dbl_2: BasicConv2d,
    branch3x3dbl_3a: BasicConv2d,
    branch3x3dbl_3b: BasicConv2d,
    branch_pool: BasicConv2d,
    pool: BranchPool,
}

impl InceptionE {
    fn load(w: &WeightMap, c_in: usize, pool: BranchPool) -> Result<Self, WeightsError> {
        let conv = |name: &str, c_in: usize, c_out: usize, shape: ConvShape| BasicConv2d::load(&w.pp(name), c_in, c_out, shape);
        let one = ConvShape::square(1);
        let row = ConvShape::rect(1, 3, 0, 1);
        let col = ConvShape::rect(3, 1, 1, 0);
        Ok(Self {
            branch1x1: conv("branch1x1", c_in, 320, one)?,
            branch3x3_1: conv("branch3x3_1", c_in, 384, one)?,
            branch3x3_2a: conv("branch3x3_2a", 384, 384, row)?,
            branch3x3_2b: conv("branch3x3_2b", 384, 384, col)?,
            branch3x3dbl_1: conv("branch3x3dbl_1", c_in, 448, one)?,
            branch3x3dbl_2: conv("branch3x3dbl_2", 448, 384, ConvShape::square(3).pad(1, 1))?,
            branch3x3dbl_3a: conv("branch3x3dbl_3a", 384, 384, row)?,
            branch3x3dbl_3b: conv("branch3x3dbl_3b", 384, 384, col)?,
            branch_pool: conv("branch_pool", c_in, 192, one)?,
            pool,
        })
    }
}

impl Module for InceptionE {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?;
        let b3 = self.branch3x3_1.forward(x)?;
        let b3a = self.branch3x3_2a.forward(&b3)?;
        let b3b = self.branch3x3_2b.forward(&b3)?;
        let bd = self.branch3x3dbl_1.forward(x)?;
        let bd = self.branch3x3dbl_2.forward(&bd)?;
        let bda = self.branch3x3dbl_3a.forward(&bd)?;
        let bdb = self.branch3x3dbl_3b.forward(&bd)?;
        let bp = self.branch_pool.forward(&self.pool.forward(x)?)?;
        // torch.cat([b1, cat([b3a, b3b]), cat([bda, bdb]), bp], 1): the same channel order.
        Tensor::cat(&[b1, b3a, b3b, bda, bdb, bp], 1)
    }
}

/// pytorch-fid's InceptionV3 (FID variant) in eval mode, up to pool3, plus the fc weight.
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    conv2d_1a_3x3: BasicConv2d,
    conv2d_2a_3x3: BasicConv2d,
    conv2d_2b_3x3: BasicConv2d,
    conv2d_3b_1x1: BasicConv2d,
    conv2d_4a_3x3: BasicConv2d,
    /// Mixed_5b, 5c, 5d.
    mixed_5: [InceptionA; 3],
    mixed_6a: InceptionB,
    /// Mixed_6b, 6c, 6d, 6e.
    mixed_6: [InceptionC; 4],
    mixed_7a: InceptionD,
    mixed_7b: InceptionE,
    mixed_7c: InceptionE,
    /// `fc.weight` transposed once at load: [2048, 1008].
    fc_weight_t: Tensor,
}

impl InceptionV3 {
    /// Width of the pool3 features (FID).
    pub const FEATURES: usize = 2048;
    /// Number of logits (the 1008 classes of the TensorFlow graph; Inception Score).
    pub const LOGITS: usize = 1008;

    /// Builds the network from pytorch-fid state_dict keys under `weights` (use
    /// `weights.pp("...")` for a checkpoint that nests them). Fails on the first missing or
    /// wrongly shaped tensor, naming it (a torchvision ImageNet Inception, with its 1000 classes,
    /// fails on `fc.weight`), and on any tensor the network does not use (e.g. `AuxLogits.*`).
    pub fn load(weights: &WeightMap) -> Result<InceptionV3, WeightsError> {
        // The class count first: the likeliest mismatch (torchvision's own Inception weights).
        let fc_weight = weights.pp("fc").get(&[Self::LOGITS, Self::FEATURES], "weight")?;
        // fc.bias belongs to the checkpoint but not to the logits used here (no bias).
        weights.pp("fc").get(&[Self::LOGITS], "bias")?;
        let conv = |name: &str, c_in: usize, c_out: usize, shape: ConvShape| BasicConv2d::load(&weights.pp(name), c_in, c_out, shape);
        let three = ConvShape::square(3);
        let net = Self {
            conv2d_1a_3x3: conv("Conv2d_1a_3x3", 3, 32, three.stride(2))?,
            conv2d_2a_3x3: conv("Conv2d_2a_3x3", 32, 32, three)?,
            conv2d_2b_3x3: conv("Conv2d_2b_3x3", 32, 64, three.pad(1, 1))?,
            conv2d_3b_1x1: conv("Conv2d_3b_1x1", 64, 80, ConvShape::square(1))?,
            conv2d_4a_3x3: conv("Conv2d_4a_3x3", 80, 192, three)?,
            mixed_5: [
                InceptionA::load(&weights.pp("Mixed_5b"), 192, 32)?,
                InceptionA::load(&weights.pp("Mixed_5c"), 256, 64)?,
                InceptionA::load(&weights.pp("Mixed_5d"), 288, 64)?,
            ],
            mixed_6a: InceptionB::load(&weights.pp("Mixed_6a"), 288)?,
            mixed_6: [
                InceptionC::load(&weights.pp("Mixed_6b"), 768, 128)?,
                InceptionC::load(&weights.pp("Mixed_6c"), 768, 160)?,
                InceptionC::load(&weights.pp("Mixed_6d"), 768, 160)?,
                InceptionC::load(&weights.pp("Mixed_6e"), 768, 192)?,
            ],
            mixed_7a: InceptionD::load(&weights.pp("Mixed_7a"), 768)?,
            mixed_7b: InceptionE::load(&weights.pp("Mixed_7b"), 1280, BranchPool::AvgExcludePad)?,
            mixed_7c: InceptionE::load(&weights.pp("Mixed_7c"), 2048, BranchPool::Max)?,
            fc_weight_t: fc_weight.t().and_then(|t| t.contiguous()).map_err(|e| WeightsError::Tensor {
                path: weights.path().to_path_buf(),
                name: prefixed(weights.prefix(), "fc.weight"),
                cause: e.to_string(),
            })?,
        };
        let ours = prefixed(weights.prefix(), "");
        if let Some(name) = weights.unused_keys().into_iter().find(|k| k.starts_with(&ours)) {
            return Err(WeightsError::Unexpected { path: weights.path().to_path_buf(), name, model: MODEL_NAME.to_string() });
        }
        Ok(net)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.fc_weight_t.device()
    }

    /// (pool3 `[N, 2048]`, logits `[N, 1008]`) for a uint8 `[N, 3, H, W]` batch of any size,
    /// through pytorch-fid's input pipeline (resize to 299x299, scale to [-1, 1]).
    pub fn forward_u8(&self, pixels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (_, c, h, w) = pixels.dims4()?;
        if c != 3 || pixels.dtype() != DType::U8 {
            candle_core::bail!("inception expects a uint8 [N, 3, H, W] image batch, got {:?} {:?}", pixels.dtype(), pixels.dims());
        }
        // 1. ToTensor(): uint8 / 255, in [0, 1].
        let x = (pixels.to_dtype(DType::F32)? / 255.0)?;
        // 2. F.interpolate(size=(299, 299), mode="bilinear", align_corners=False); at 299x299
        //    it is the identity.
        let x = if (h, w) == (INPUT_SIZE, INPUT_SIZE) { x } else { x.upsample_bilinear2d(INPUT_SIZE, INPUT_SIZE, false)? };
        // 3. normalize_input: 2x - 1, onto [-1, 1].
        let x = x.affine(2.0, -1.0)?;
        self.forward(&x)
    }

    /// (pool3 `[N, 2048]`, logits `[N, 1008]`) for network input already resized and scaled
    /// (f32 `[N, 3, 299, 299]` in [-1, 1]; other sizes run, as the network is convolutional,
    /// but are not what pytorch-fid computes).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        // 1. Block 0: Conv2d_1a_3x3 (stride 2), Conv2d_2a_3x3, Conv2d_2b_3x3, max-pool 3x3/2.
        let x = self.conv2d_1a_3x3.forward(x)?;
        let x = self.conv2d_2a_3x3.forward(&x)?;
        let x = self.conv2d_2b_3x3.forward(&x)?;
        let x = max_pool_3x3_s2(&x)?;
        // 2. Block 1: Conv2d_3b_1x1, Conv2d_4a_3x3, max-pool 3x3/2 -> [N, 192, 35, 35].
        let x = self.conv2d_3b_1x1.forward(&x)?;
        let x = self.conv2d_4a_3x3.forward(&x)?;
        let mut x = max_pool_3x3_s2(&x)?;
        // 3. Block 2: Mixed_5b..5d, Mixed_6a (-> 17x17), Mixed_6b..6e -> [N, 768, 17, 17].
        for block in &self.mixed_5 {
            x = block.forward(&x)?;
        }
        x = self.mixed_6a.forward(&x)?;
        for block in &self.mixed_6 {
            x = block.forward(&x)?;
        }
        // 4. Block 3: Mixed_7a (-> 8x8), Mixed_7b, Mixed_7c -> [N, 2048, 8, 8].
        let x = self.mixed_7a.forward(&x)?;
        let x = self.mixed_7b.forward(&x)?;
        let x = self.mixed_7c.forward(&x)?;
        // 5. Adaptive average pool to 1x1 and flatten: pool3, [N, 2048].
        let pool3 = x.mean((2, 3))?;
        // 6. Logits without bias: pool3 @ fc.weight^T, [N, 1008], one image at a time: a CPU
        // matmul's rounding depends on how many rows it gets, and an image's logits must not
        // depend on which batch it travelled in (a resumed run batches units differently).
        let rows = (0..pool3.dim(0)?).map(|i| pool3.narrow(0, i, 1)?.matmul(&self.fc_weight_t)).collect::<candle_core::Result<Vec<_>>>()?;
        let logits = if rows.is_empty() { pool3.matmul(&self.fc_weight_t)? } else { Tensor::cat(&rows, 0)? };
        Ok((pool3, logits))
    }

    /// (pool3, logits) for `n` images given as planar uint8 RGB (`n x 3 x height x width`,
    /// row-major), returned row-major as `n x 2048` and `n x 1008`.
    pub fn features(&self, pixels: &[u8], n: usize, height: usize, width: usize) -> Result<(Vec<f32>, Vec<f32>), candle_core::Error> {
        let expected = n * 3 * height * width;
        if pixels.len() != expected {
            candle_core::bail!(
                "inception: got {} pixel bytes, expected {expected} for {n} x 3 x {height} x \
                 {width}",
                pixels.len()
            );
        }
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let x = Tensor::from_slice(pixels, (n, 3, height, width), self.device())?;
        let (pool3, logits) = self.forward_u8(&x)?;
        Ok((pool3.flatten_all()?.to_vec1::<f32>()?, logits.flatten_all()?.to_vec1::<f32>()?))
    }
}

/// Runs `convs` one after the other.
fn chain(convs: &[BasicConv2d], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut y = x.clone();
    for conv in convs {
        y = conv.forward(&y)?;
    }
    Ok(y)
}

fn prefixed(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)`.
fn avg_pool_3x3_s1_p1_exclude_pad(x: &Tensor) -> candle_core::Result<Tensor> {
    pool2d(x, Pool::AverageOfReal, 3, 1, 1)
}

/// `F.max_pool2d(x, 3, stride=1, padding=1)`.
fn max_pool_3x3_s1_p1(x: &Tensor) -> candle_core::Result<Tensor> {
    pool2d(x, Pool::Max, 3, 1, 1)
}

/// `F.max_pool2d(x, 3, stride=2)`: the reductions' and the stem's pools.
fn max_pool_3x3_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    pool2d(x, Pool::Max, 3, 2, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ramp(h: usize, w: usize) -> Tensor {
        Tensor::arange(0f32, (h * w) as f32, &Device::Cpu).unwrap().reshape((1, 1, h, w)).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn avg_pool_excludes_the_padding_from_the_count() {
        // 3x4 ramp 0..12; PyTorch: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).
        let y = avg_pool_3x3_s1_p1_exclude_pad(&ramp(3, 4)).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 4]);
        let want = [
            2.5, 3.0, 4.0, 4.5, //
            4.5, 5.0, 6.0, 6.5, //
            6.5, 7.0, 8.0, 8.5,
        ];
        for (got, want) in values(&y).iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn max_pool_pads_with_minus_infinity() {
        // Negated ramp: every window's max is its top-left real element; the padding never wins.
        let y = max_pool_3x3_s1_p1(&ramp(2, 3).neg().unwrap()).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 3]);
        assert_eq!(values(&y), vec![-0., -0., -1., -0., -0., -1.]);
    }

    #[test]
    fn asymmetric_padding_keeps_the_spatial_size() {
        let dev = Device::Cpu;
        let mut m = std::collections::HashMap::new();
        m.insert("c.conv.weight".to_string(), Tensor::ones((1, 1, 1, 7), DType::F32, &dev).unwrap());
        for (k, v) in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0)] {
            m.insert(format!("c.bn.{k}"), Tensor::new(&[v as f32], &dev).unwrap());
        }
        m.insert("c.bn.running_var".to_string(), Tensor::new(&[1.0f32 - 1e-3], &dev).unwrap());
        let w = WeightMap::from_tensors(m, "mem");
        let conv = BasicConv2d::load(&w.pp("c"), 1, 1, ConvShape::rect(1, 7, 0, 3)).unwrap();
        let y = conv.forward(&Tensor::ones((1, 1, 2, 5), DType::F32, &dev).unwrap());
        let y = y.unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 5]);
        // Row sums of a 7-wide window over 5 ones, zero-padded by 3 on each side.
        let want = [4.0, 5.0, 5.0, 5.0, 4.0, 4.0, 5.0, 5.0, 5.0, 4.0];
        for (got, want) in values(&y).iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
    }
}
