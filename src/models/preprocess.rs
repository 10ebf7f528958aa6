//! Input normalisation of a classifier: how stored uint8 pixels become the f32 tensor the
//! network was trained on.
//!
//! Follows torchvision's `transforms.ToTensor()` (x / 255, giving [0, 1]) followed by
//! `transforms.Normalize(mean, std)` ((x - mean) / std per channel), or the plain
//! [-1, 1] scaling (2x/255 - 1) that DDPM-style pipelines use. The normalisation is part of the
//! oracle's config: the same weights evaluated with another normalisation are another model.
//!
//! String form (CLI, topology files, serde): `imagenet`, `minus-one-one`, or
//! `M,M,M/S,S,S` (three means then three standard deviations, RGB order, on the [0, 1] scale).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Per-channel input normalisation applied to uint8 RGB pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Normalization {
    /// `(x / 255 - mean[c]) / std[c]`.
    MeanStd { mean: [f32; 3], std: [f32; 3] },
    /// `2 * x / 255 - 1`, i.e. [0, 255] onto [-1, 1].
    MinusOneOne,
}

/// A normalisation string that is not one of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid normalization \"{value}\": {reason}; expected \"imagenet\", \"minus-one-one\" or \
     \"M,M,M/S,S,S\" (three means, then three stds > 0)"
)]
pub struct NormalizationParseError {
    pub value: String,
    pub reason: String,
}

impl Normalization {
    /// torchvision's ImageNet statistics: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    pub fn imagenet() -> Self {
        Normalization::MeanStd { mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// The network input for a uint8 batch `[N, 3, H, W]` (any device), as f32:
    /// - `MeanStd`: `x / 255`, then `(x - mean[c]) / std[c]` for channel `c`, in that order
    ///   and in f32, as `ToTensor()` + `Normalize(mean, std)` compute it;
    /// - `MinusOneOne`: `x * (2 / 255) - 1`.
    ///
    /// Fails if the tensor is not rank 4 with 3 channels.
    pub fn to_input(&self, pixels_u8_nchw: &Tensor) -> candle_core::Result<Tensor> {
        let dims = pixels_u8_nchw.dims();
        if dims.len() != 4 || dims[1] != 3 {
            candle_core::bail!("normalization expects a [N, 3, H, W] image batch, got {dims:?}");
        }
        let x = pixels_u8_nchw.to_dtype(DType::F32)?;
        match self {
            Normalization::MeanStd { mean, std } => {
                let dev = x.device();
                let mean = Tensor::new(mean, dev)?.reshape((1, 3, 1, 1))?;
                let std = Tensor::new(std, dev)?.reshape((1, 3, 1, 1))?;
                (x / 255.0)?.broadcast_sub(&mean)?.broadcast_div(&std)
            }
            Normalization::MinusOneOne => x.affine(2.0 / 255.0, -1.0),
        }
    }
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Normalization::MinusOneOne => f.write_str("minus-one-one"),
            n if *n == Normalization::imagenet() => f.write_str("imagenet"),
            // f32's Display is the shortest string that parses back to the same value.
            Normalization::MeanStd { mean, std } => write!(f, "{},{},{}/{},{},{}", mean[0], mean[1], mean[2], std[0], std[1], std[2]),
        }
    }
}

impl FromStr for Normalization {
    type Err = NormalizationParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| NormalizationParseError { value: s.to_string(), reason: reason.to_string() };
        match s.trim() {
            "imagenet" => return Ok(Normalization::imagenet()),
            "minus-one-one" => return Ok(Normalization::MinusOneOne),
            _ => {}
        }
        let (mean, std) = s.split_once('/').ok_or_else(|| err("not a known name and no '/' between means and stds"))?;
        let triple = |part: &str, what: &str| -> Result<[f32; 3], NormalizationParseError> {
            let values = part
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<Vec<f32>, _>>()
                .map_err(|_| err(&format!("{what} \"{}\" is not a list of numbers", part.trim())))?;
            match values[..] {
                [a, b, c] if values.iter().all(|v| v.is_finite()) => Ok([a, b, c]),
                [_, _, _] => Err(err(&format!("{what} must be finite"))),
                _ => Err(err(&format!("expected 3 {what}, got {}", values.len()))),
            }
        };
        let mean = triple(mean, "means")?;
        let std = triple(std, "stds")?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err(err("every std must be > 0"));
        }
        Ok(Normalization::MeanStd { mean, std })
    }
}

impl TryFrom<String> for Normalization {
    type Error = NormalizationParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Normalization> for String {
    fn from(n: Normalization) -> String {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn parses_and_prints_all_forms() {
        assert_eq!("imagenet".parse::<Normalization>(), Ok(Normalization::imagenet()));
        assert_eq!("minus-one-one".parse::<Normalization>(), Ok(Normalization::MinusOneOne));
        let n: Normalization = "0.5, 0.5,0.5/0.25,0.5,1".parse().unwrap();
        assert_eq!(n, Normalization::MeanStd { mean: [0.5; 3], std: [0.25, 0.5, 1.0] });
        assert_eq!(n.to_string(), "0.5,0.5,0.5/0.25,0.5,1");
        assert_eq!(Normalization::imagenet().to_string(), "imagenet");
        // The explicit imagenet statistics round-trip to the same value.
        let explicit: Normalization = "0.485,0.456,0.406/0.229,0.224,0.225".parse().unwrap();
        assert_eq!(explicit, Normalization::imagenet());
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"0.5,0.5,0.5/0.25,0.5,1\"");
        let back: Normalization = serde_json::from_str("\"minus-one-one\"").unwrap();
        assert_eq!(back, Normalization::MinusOneOne);
    }

    #[test]
    fn rejects_malformed_strings_naming_the_value() {
        let msg = |s: &str| s.parse::<Normalization>().unwrap_err().to_string();
        assert_eq!(
            msg("cifar"),
            "invalid normalization \"cifar\": not a known name and no '/' between means and \
             stds; expected \"imagenet\", \"minus-one-one\" or \"M,M,M/S,S,S\" (three means, \
             then three stds > 0)"
        );
        assert!(msg("0.5,0.5/1,1,1").contains("expected 3 means, got 2"));
        assert!(msg("0.5,0.5,0.5/1,0,1").contains("every std must be > 0"));
        assert!(msg("a,b,c/1,1,1").contains("means \"a,b,c\" is not a list of numbers"));
        assert!(serde_json::from_str::<Normalization>("\"nope\"").is_err());
    }

    #[test]
    fn to_input_matches_the_formulas() {
        let dev = Device::Cpu;
        let px = Tensor::new(&[0u8, 255, 51, 102, 204, 0], &dev).unwrap().reshape((1, 3, 1, 2)).unwrap();
        let v = |n: Normalization| -> Vec<f32> { n.to_input(&px).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
        let m1 = v(Normalization::MinusOneOne);
        for (got, want) in m1.iter().zip([-1.0, 1.0, -0.6, -0.2, 0.6, -1.0]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        let im = v(Normalization::imagenet());
        let want = [
            (0.0 - 0.485) / 0.229,
            (1.0 - 0.485) / 0.229,
            (0.2 - 0.456) / 0.224,
            (0.4 - 0.456) / 0.224,
            (0.8 - 0.406) / 0.225,
            (0.0 - 0.406) / 0.225,
        ];
        for (got, want) in im.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert!(Normalization::MinusOneOne.to_input(&px.reshape((3, 1, 2)).unwrap()).is_err());
    }
}
