//! The oracle of the RCA protocol: a torchvision ResNet-18/34 trained on real images, together
//! with the input normalisation it was trained with, turning uint8 image batches into logits.
//!
//! Accuracy_real and Accuracy_gen (and so RCA) are both measured with one `Oracle`; see DESIGN.md
//! section 1. The network follows `torchvision.models.resnet` ([`super::resnet`]), the
//! normalisation `torchvision.transforms` ([`super::preprocess`]).

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::preprocess::Normalization;
use super::resnet::{ResNet, ResNetArch, ResNetConfig, Stem, TORCHVISION_WIDTH};
use super::weights::{WeightMap, WeightsError};

/// Everything needed to rebuild the oracle from its weight file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OracleConfig {
    pub arch: ResNetArch,
    pub stem: Stem,
    pub norm: Normalization,
    pub num_classes: usize,
}

impl OracleConfig {
    /// The network part of the config, at torchvision's width (a file's own width is read
    /// from the file when it loads).
    pub fn resnet(&self) -> ResNetConfig {
        ResNetConfig::new(self.arch, self.stem, self.num_classes)
    }
}

/// A loaded oracle: ResNet, normalisation and the device it runs on.
#[derive(Debug, Clone)]
pub struct Oracle {
    net: ResNet,
    cfg: OracleConfig,
    device: Device,
}

impl Oracle {
    /// Loads a torchvision state_dict (`.safetensors` or zip `.pth`) from `path` onto `device`.
    /// A class count that disagrees with the checkpoint fails naming `fc.weight` and both shapes.
    pub fn load(path: &Path, cfg: &OracleConfig, device: &Device) -> Result<Oracle, WeightsError> {
        let weights = WeightMap::load(path, device)?;
        Self::from_weights(&weights, cfg)
    }

    /// Builds the oracle from weights already in memory (they decide the device).
    pub fn from_weights(weights: &WeightMap, cfg: &OracleConfig) -> Result<Oracle, WeightsError> {
        // The width is the file's (conv1's output channels): torchvision's 64, or a narrower
        // network such as the demo's, with the same keys.
        let width = ResNet::width_of(weights).unwrap_or(TORCHVISION_WIDTH);
        let resnet = ResNetConfig { width, ..cfg.resnet() };
        // Check the class count first: it is the most likely mismatch (a checkpoint trained on
        // another dataset) and should be reported as such, not as some other tensor.
        weights.get(&[cfg.num_classes, resnet.features()], "fc.weight")?;
        let net = ResNet::load(weights, &resnet)?;
        let device = net.device().clone();
        Ok(Self { net, cfg: *cfg, device })
    }

    /// Logits for `n` images given as planar uint8 RGB (`n x 3 x height x width`, row-major),
    /// returned row-major as `n x num_classes`.
    pub fn logits(&self, pixels: &[u8], n: usize, height: usize, width: usize) -> Result<Vec<f32>, candle_core::Error> {
        let expected = n * 3 * height * width;
        if pixels.len() != expected {
            candle_core::bail!("oracle: got {} pixel bytes, expected {expected} for {n} x 3 x {height} x {width}", pixels.len());
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_slice(pixels, (n, 3, height, width), &self.device)?;
        let x = self.cfg.norm.to_input(&x)?;
        let logits = self.net.forward(&x)?;
        logits.flatten_all()?.to_vec1::<f32>()
    }

    /// Logits `[N, num_classes]` for a uint8 `[N, 3, H, W]` tensor already on the device.
    pub fn forward_u8(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.net.forward(&self.cfg.norm.to_input(pixels)?)
    }

    pub fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    pub fn config(&self) -> &OracleConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}
