//! What a torchvision BasicBlock ResNet is made of: architecture (blocks per stage), stem, class
//! count and width, with the names the CLI and topology files use for them.
//!
//! Reference: `torchvision.models.resnet` (`resnet18` / `resnet34`, i.e. `ResNet(BasicBlock,
//! layers)`), plus the usual small-image stem (`model.conv1 = nn.Conv2d(3, 64, 3, 1, 1,
//! bias=False)`, `model.maxpool = nn.Identity()`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Channels of the first stage in torchvision (the stages have 1, 2, 4 and 8 times this).
pub const TORCHVISION_WIDTH: usize = 64;

/// Which BasicBlock ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResNetArch {
    ResNet18,
    ResNet34,
}

impl ResNetArch {
    /// Blocks per stage (torchvision's `layers` argument).
    pub fn blocks(self) -> [usize; 4] {
        match self {
            ResNetArch::ResNet18 => [2, 2, 2, 2],
            ResNetArch::ResNet34 => [3, 4, 6, 3],
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ResNetArch::ResNet18 => "resnet18",
            ResNetArch::ResNet34 => "resnet34",
        }
    }
}

/// The first layers, before `layer1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 3x3 stride-1 conv, BN, ReLU, no max-pool (for 32x32 inputs).
    Cifar,
    /// torchvision's 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool.
    Imagenet,
}

impl Stem {
    fn as_str(self) -> &'static str {
        match self {
            Stem::Cifar => "cifar",
            Stem::Imagenet => "imagenet",
        }
    }

    /// (kernel, stride, padding) of `conv1`.
    pub(super) fn conv1(self) -> (usize, usize, usize) {
        match self {
            Stem::Cifar => (3, 1, 1),
            Stem::Imagenet => (7, 2, 3),
        }
    }
}

/// A config string that is not one of the accepted names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResNetParseError {
    #[error("unknown resnet architecture \"{0}\": expected \"resnet18\" or \"resnet34\"")]
    Arch(String),
    #[error("unknown resnet stem \"{0}\": expected \"cifar\" or \"imagenet\"")]
    Stem(String),
}

impl FromStr for ResNetArch {
    type Err = ResNetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "resnet18" => Ok(ResNetArch::ResNet18),
            "resnet34" => Ok(ResNetArch::ResNet34),
            other => Err(ResNetParseError::Arch(other.to_string())),
        }
    }
}

impl fmt::Display for ResNetArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stem {
    type Err = ResNetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cifar" => Ok(Stem::Cifar),
            "imagenet" => Ok(Stem::Imagenet),
            other => Err(ResNetParseError::Stem(other.to_string())),
        }
    }
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Architecture, stem, class count and width. `Default` is torchvision's `resnet18()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub arch: ResNetArch,
    pub stem: Stem,
    pub num_classes: usize,
    /// Channels of `conv1` and `layer1` (torchvision: 64). A narrower network keeps every key
    /// and the topology, only the channel counts shrink: the small demo oracle uses 16, which
    /// makes its file 16 times smaller (2.8 MB instead of 44.8 MB for a ResNet-18).
    #[serde(default = "torchvision_width")]
    pub width: usize,
}

fn torchvision_width() -> usize {
    TORCHVISION_WIDTH
}

impl ResNetConfig {
    pub fn new(arch: ResNetArch, stem: Stem, num_classes: usize) -> Self {
        Self { arch, stem, num_classes, width: TORCHVISION_WIDTH }
    }

    /// Output channels of `layer1` .. `layer4`.
    pub fn widths(&self) -> [usize; 4] {
        [self.width, 2 * self.width, 4 * self.width, 8 * self.width]
    }

    /// Width of the pooled features that `fc` maps to logits (512 in torchvision).
    pub fn features(&self) -> usize {
        8 * self.width
    }
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self::new(ResNetArch::ResNet18, Stem::Imagenet, 1000)
    }
}

impl fmt::Display for ResNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} stem, {} classes", self.arch, self.stem, self.num_classes)?;
        if self.width != TORCHVISION_WIDTH {
            write!(f, ", width {}", self.width)?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for a in [ResNetArch::ResNet18, ResNetArch::ResNet34] {
            assert_eq!(a.to_string().parse::<ResNetArch>(), Ok(a));
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        for s in [Stem::Cifar, Stem::Imagenet] {
            assert_eq!(s.to_string().parse::<Stem>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(
            "resnet50".parse::<ResNetArch>().unwrap_err().to_string(),
            "unknown resnet architecture \"resnet50\": expected \"resnet18\" or \"resnet34\""
        );
        let cfg: ResNetConfig = serde_json::from_str(r#"{"arch":"resnet34","stem":"cifar","num_classes":10}"#).unwrap();
        assert_eq!(cfg.arch, ResNetArch::ResNet34);
        assert_eq!(cfg.stem, Stem::Cifar);
        assert_eq!(cfg.width, TORCHVISION_WIDTH);
    }
}
