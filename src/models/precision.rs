//! The floating-point precision a model's weights and activations use: `f32` (the default, and
//! the one the parity fixtures hold to), `bf16` and `f16` for the sampler's UNet on a GPU, as
//! diffusers runs a pipeline after `.to(torch.bfloat16)`. Parsed in one place, from `--dtype` and
//! a component's `dtype = "..."`; [`Precision::check_on`] refuses a pairing the device cannot run
//! before any work: candle 0.11's CPU backend has no bf16 matrix product (its f16 one works,
//! slowly: there f16 is for checking the half-precision path, not for speed).
//!
//! Whatever the precision, the scheduler step, the noise and the uint8 quantisation stay float32
//! on the host (DESIGN.md section 1), so only the network's rounding differs between them.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;

use super::device::DeviceSpec;

/// A model's floating-point precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

#[derive(Debug, thiserror::Error)]
pub enum PrecisionError {
    #[error("dtype \"{0}\": expected \"f32\", \"bf16\" or \"f16\"")]
    Syntax(String),
    #[error("dtype \"bf16\" on device \"cpu\": candle's CPU backend has no bf16 matrix product; use dtype = \"f32\" (or \"f16\") on the CPU, or a cuda device")]
    Bf16OnCpu,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// candle's dtype for it.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Whether `device` can run a model in this precision; checked when a stage is built.
    pub fn check_on(self, device: DeviceSpec) -> Result<(), PrecisionError> {
        match (self, device) {
            (Precision::Bf16, DeviceSpec::Cpu) => Err(PrecisionError::Bf16OnCpu),
            _ => Ok(()),
        }
    }

    /// Whether the value is the default, for `skip_serializing_if`: a run recorded before the
    /// option existed compares equal to one that leaves it out.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

impl FromStr for Precision {
    type Err = PrecisionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL.into_iter().find(|p| p.to_string() == s).ok_or_else(|| PrecisionError::Syntax(s.to_string()))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl serde::Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Precision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_strings_parse_print_back_and_refuse_others() {
        for p in Precision::ALL {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(Precision::Bf16.dtype(), DType::BF16);
        for bad in ["F32", "float32", "fp16", ""] {
            assert_eq!(bad.parse::<Precision>().unwrap_err().to_string(), format!("dtype \"{bad}\": expected \"f32\", \"bf16\" or \"f16\""));
        }
    }

    #[test]
    fn bf16_is_refused_on_the_cpu_only() {
        assert!(Precision::F32.check_on(DeviceSpec::Cpu).is_ok());
        assert!(Precision::F16.check_on(DeviceSpec::Cpu).is_ok());
        assert!(Precision::Bf16.check_on(DeviceSpec::Cuda(0)).is_ok());
        let e = Precision::Bf16.check_on(DeviceSpec::Cpu).unwrap_err().to_string();
        assert!(e.starts_with("dtype \"bf16\" on device \"cpu\":"), "{e}");
    }
}
