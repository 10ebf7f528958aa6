//! P-Net, R-Net and O-Net of MTCNN, layer for layer as facenet-pytorch 2.6.0's `PNet`, `RNet`
//! and `ONet` (facenet_pytorch/models/mtcnn.py), with its state_dict names (`conv1.weight`,
//! `prelu1.weight`, `dense4.weight`, ...), so the wheel's `pnet.pt`/`rnet.pt`/`onet.pt` load as
//! they are. candle ops (and the fused convolution, candle's ops off the CPU), so the nets run
//! on whatever device the weights were loaded on. Inputs are NCHW float images already
//! normalised as facenet-pytorch does it, `(x - 127.5) * 0.0078125`.
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};

use crate::models::fast_conv::{conv2d_fused_cached, ConvParams, Epilogue, KernelCache};
use crate::models::weights::{WeightMap, WeightsError};

/// Errors from loading or running the MTCNN nets.
#[derive(Debug, thiserror::Error)]
pub enum MtcnnError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("mtcnn {net}: input has shape {found:?}, expected {expected}")]
    Input { net: &'static str, found: Vec<usize>, expected: &'static str },
    #[error("mtcnn: {0}")]
    Config(String),
    #[error("mtcnn: image of {len} bytes is not {w}x{h} RGB (expected {w} * {h} * 3 bytes, both sides at least 1)")]
    Image { len: usize, w: usize, h: usize },
    #[error("mtcnn: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `nn.Conv2d(c_in, c_out, kernel)`: stride 1, no padding, with bias.
struct Conv {
    weight: Tensor,
    /// What the fused convolution derives from `weight`, made on first use.
    kernel: KernelCache,
    bias: Tensor,
}

impl Conv {
    fn load(w: &WeightMap, name: &str, c_in: usize, c_out: usize, k: usize) -> Result<Self, WeightsError> {
        let w = w.pp(name);
        Ok(Self { weight: w.get(&[c_out, c_in, k, k], "weight")?, kernel: KernelCache::default(), bias: w.get(&[c_out], "bias")? })
    }

    /// Through the fused CPU convolution (bias in its epilogue), which is candle's `conv2d` and
    /// `broadcast_add` on other devices: candle's CPU conv kernel was most of detection's time.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let bias = Epilogue { shift: Some(&self.bias), ..Epilogue::default() };
        conv2d_fused_cached(x, &self.weight, &self.kernel, ConvParams::new(1, (0, 0)), bias)
    }
}

/// `nn.Linear(d_in, d_out)`.
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(w: &WeightMap, name: &str, d_in: usize, d_out: usize) -> Result<Self, WeightsError> {
        let w = w.pp(name);
        Ok(Self { weight: w.get(&[d_out, d_in], "weight")?, bias: w.get(&[d_out], "bias")? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// `nn.PReLU(c)`: one slope per channel (dim 1), `max(x, 0) + a * min(x, 0)`.
struct PRelu {
    weight: Tensor,
}

impl PRelu {
    fn load(w: &WeightMap, name: &str, c: usize) -> Result<Self, WeightsError> {
        Ok(Self { weight: w.pp(name).get(&[c], "weight")? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut shape = vec![1usize; x.rank()];
        shape[1] = self.weight.dim(0)?;
        let a = self.weight.reshape(shape)?;
        let pos = x.relu()?;
        let neg = x.minimum(0f32)?;
        pos.add(&neg.broadcast_mul(&a)?)
    }
}

/// `nn.MaxPool2d(k, s, ceil_mode=True)`: candle's pool has no ceil mode, so the image is padded
/// on the bottom and right with -inf up to the last (partial) window torch takes. With no
/// padding torch's ceil-mode size is `ceil((h - k) / s) + 1` (its "last window must start inside
/// the input" rule never bites for these k, s).
fn max_pool_ceil(x: &Tensor, k: usize, s: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let out = |len: usize| if len <= k { 1 } else { (len - k).div_ceil(s) + 1 };
    let ph = ((out(h) - 1) * s + k).saturating_sub(h);
    let pw = ((out(w) - 1) * s + k).saturating_sub(w);
    let mut x = x.clone();
    if ph > 0 {
        let pad = Tensor::full(f32::NEG_INFINITY, (n, c, ph, w), x.device())?.to_dtype(x.dtype())?;
        x = Tensor::cat(&[&x, &pad], 2)?;
    }
    if pw > 0 {
        let pad = Tensor::full(f32::NEG_INFINITY, (n, c, h + ph, pw), x.device())?.to_dtype(x.dtype())?;
        x = Tensor::cat(&[&x, &pad], 3)?;
    }
    x.max_pool2d_with_stride(k, s)
}

/// torch's `x.permute(0, 3, 2, 1).contiguous().view(n, -1)`: facenet-pytorch flattens R-Net's
/// and O-Net's last feature maps W-major (its weights were converted from the Caffe/TF models,
/// which are HWC transposed), so the dense layers expect that order.
fn flatten_wh(x: &Tensor) -> candle_core::Result<Tensor> {
    x.permute((0, 3, 2, 1))?.contiguous()?.flatten_from(1)
}

fn check_input(net: &'static str, x: &Tensor, side: Option<usize>, expected: &'static str) -> Result<(), MtcnnError> {
    let d = x.dims();
    let ok = d.len() == 4
        && d[1] == 3
        && match side {
            Some(s) => d[2] == s && d[3] == s,
            None => d[2] >= 12 && d[3] >= 12,
        };
    if ok {
        Ok(())
    } else {
        Err(MtcnnError::Input { net, found: d.to_vec(), expected })
    }
}

/// A file with more tensors than the net uses is some other model: refused, naming the first.
fn reject_unused(w: &WeightMap, model: &str) -> Result<(), WeightsError> {
    match w.unused_keys().into_iter().next() {
        Some(name) => Err(WeightsError::Unexpected { path: w.path().to_path_buf(), name, model: model.to_string() }),
        None => Ok(()),
    }
}

/// facenet-pytorch's `PNet`: the fully convolutional proposal net.
pub struct PNet {
    conv1: Conv,
    prelu1: PRelu,
    conv2: Conv,
    prelu2: PRelu,
    conv3: Conv,
    prelu3: PRelu,
    conv4_1: Conv,
    conv4_2: Conv,
}

impl PNet {
    pub fn load(path: &Path, device: &Device) -> Result<Self, MtcnnError> {
        Self::from_weights(&WeightMap::load(path, device)?)
    }

    pub fn from_weights(w: &WeightMap) -> Result<Self, MtcnnError> {
        let net = Self {
            conv1: Conv::load(w, "conv1", 3, 10, 3)?,
            prelu1: PRelu::load(w, "prelu1", 10)?,
            conv2: Conv::load(w, "conv2", 10, 16, 3)?,
            prelu2: PRelu::load(w, "prelu2", 16)?,
            conv3: Conv::load(w, "conv3", 16, 32, 3)?,
            prelu3: PRelu::load(w, "prelu3", 32)?,
            conv4_1: Conv::load(w, "conv4_1", 32, 2, 1)?,
            conv4_2: Conv::load(w, "conv4_2", 32, 4, 1)?,
        };
        reject_unused(w, "mtcnn pnet")?;
        Ok(net)
    }

    /// `x` [N, 3, H, W] (H, W >= 12) to (box regression [N, 4, h, w], face/non-face
    /// probabilities [N, 2, h, w]), in the order facenet-pytorch returns them.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor), MtcnnError> {
        check_input("pnet", x, None, "[N, 3, H, W] with H, W >= 12")?;
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let a = candle_nn::ops::softmax(&self.conv4_1.forward(&x)?, 1)?;
        let b = self.conv4_2.forward(&x)?;
        Ok((b, a))
    }
}

/// facenet-pytorch's `RNet`: refines P-Net's candidates on 24x24 crops.
pub struct RNet {
    conv1: Conv,
    prelu1: PRelu,
    conv2: Conv,
    prelu2: PRelu,
    conv3: Conv,
    prelu3: PRelu,
    dense4: Dense,
    prelu4: PRelu,
    dense5_1: Dense,
    dense5_2: Dense,
}

impl RNet {
    pub fn load(path: &Path, device: &Device) -> Result<Self, MtcnnError> {
        Self::from_weights(&WeightMap::load(path, device)?)
    }

    pub fn from_weights(w: &WeightMap) -> Result<Self, MtcnnError> {
        let net = Self {
            conv1: Conv::load(w, "conv1", 3, 28, 3)?,
            prelu1: PRelu::load(w, "prelu1", 28)?,
            conv2: Conv::load(w, "conv2", 28, 48, 3)?,
            prelu2: PRelu::load(w, "prelu2", 48)?,
            conv3: Conv::load(w, "conv3", 48, 64, 2)?,
            prelu3: PRelu::load(w, "prelu3", 64)?,
            dense4: Dense::load(w, "dense4", 576, 128)?,
            prelu4: PRelu::load(w, "prelu4", 128)?,
            dense5_1: Dense::load(w, "dense5_1", 128, 2)?,
            dense5_2: Dense::load(w, "dense5_2", 128, 4)?,
        };
        reject_unused(w, "mtcnn rnet")?;
        Ok(net)
    }

    /// `x` [N, 3, 24, 24] to (box regression [N, 4], probabilities [N, 2]).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor), MtcnnError> {
        check_input("rnet", x, Some(24), "[N, 3, 24, 24]")?;
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let x = self.prelu4.forward(&self.dense4.forward(&flatten_wh(&x)?)?)?;
        let a = candle_nn::ops::softmax(&self.dense5_1.forward(&x)?, D::Minus1)?;
        let b = self.dense5_2.forward(&x)?;
        Ok((b, a))
    }
}

/// facenet-pytorch's `ONet`: final boxes, probabilities and five landmarks on 48x48 crops.
pub struct ONet {
    conv1: Conv,
    prelu1: PRelu,
    conv2: Conv,
    prelu2: PRelu,
    conv3: Conv,
    prelu3: PRelu,
    conv4: Conv,
    prelu4: PRelu,
    dense5: Dense,
    prelu5: PRelu,
    dense6_1: Dense,
    dense6_2: Dense,
    dense6_3: Dense,
}

impl ONet {
    pub fn load(path: &Path, device: &Device) -> Result<Self, MtcnnError> {
        Self::from_weights(&WeightMap::load(path, device)?)
    }

    pub fn from_weights(w: &WeightMap) -> Result<Self, MtcnnError> {
        let net = Self {
            conv1: Conv::load(w, "conv1", 3, 32, 3)?,
            prelu1: PRelu::load(w, "prelu1", 32)?,
            conv2: Conv::load(w, "conv2", 32, 64, 3)?,
            prelu2: PRelu::load(w, "prelu2", 64)?,
            conv3: Conv::load(w, "conv3", 64, 64, 3)?,
            prelu3: PRelu::load(w, "prelu3", 64)?,
            conv4: Conv::load(w, "conv4", 64, 128, 2)?,
            prelu4: PRelu::load(w, "prelu4", 128)?,
            dense5: Dense::load(w, "dense5", 1152, 256)?,
            prelu5: PRelu::load(w, "prelu5", 256)?,
            dense6_1: Dense::load(w, "dense6_1", 256, 2)?,
            dense6_2: Dense::load(w, "dense6_2", 256, 4)?,
            dense6_3: Dense::load(w, "dense6_3", 256, 10)?,
        };
        reject_unused(w, "mtcnn onet")?;
        Ok(net)
    }

    /// `x` [N, 3, 48, 48] to (box regression [N, 4], landmarks [N, 10], probabilities [N, 2]).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor), MtcnnError> {
        check_input("onet", x, Some(48), "[N, 3, 48, 48]")?;
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = self.prelu4.forward(&self.conv4.forward(&x)?)?;
        let x = self.prelu5.forward(&self.dense5.forward(&flatten_wh(&x)?)?)?;
        let a = candle_nn::ops::softmax(&self.dense6_1.forward(&x)?, D::Minus1)?;
        let b = self.dense6_2.forward(&x)?;
        let c = self.dense6_3.forward(&x)?;
        Ok((b, c, a))
    }
}

/// The three weight files facenet-pytorch ships, in the folder `dir`.
pub fn weight_paths(dir: &Path) -> [PathBuf; 3] {
    [dir.join("pnet.pt"), dir.join("rnet.pt"), dir.join("onet.pt")]
}
