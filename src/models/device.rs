//! Device strings, parsed in one place: `cpu`, `cuda` (GPU 0) and `cuda:N`, from `--device`,
//! `[runtime] device` and a model component's `device = "..."`. Parsing only checks the
//! string; [`DeviceSpec::open`] opens the device, each time on a stream of its own (candle's
//! `new_cuda_with_stream`), so stages sharing a GPU overlap their work.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// The GPU of this index (CUDA's ordinal).
    Cuda(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device \"{0}\": expected \"cpu\", \"cuda\" or \"cuda:N\" (N the index of a GPU)")]
    Syntax(String),
    #[error(
        "device \"{0}\": this rcaflow is a CPU-only build; a GPU needs one built with `cargo build --release --features cuda` (README \"GPUs\")"
    )]
    NotBuilt(DeviceSpec),
    #[error("device \"{device}\": cannot open it: {cause}")]
    Open { device: DeviceSpec, cause: String },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Syntax(other.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// Whether this build can open the device at all (a CPU-only build opens only `cpu`).
    pub fn supported(self) -> Result<(), DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(()),
            DeviceSpec::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
            DeviceSpec::Cuda(_) => Err(DeviceError::NotBuilt(self)),
        }
    }

    /// Opens the device; a CUDA device gets a stream of its own.
    pub fn open(self) -> Result<Device, DeviceError> {
        self.supported()?;
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal).map_err(|cause| DeviceError::Open { device: self, cause }),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    // candle appends a backtrace after the first line of some errors: keep the driver's words.
    Device::new_cuda_with_stream(ordinal).map_err(|e| e.to_string().lines().next().unwrap_or_default().trim().to_string())
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device, String> {
    Err("not built with CUDA".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings_parse_and_print_back() {
        for (s, spec) in
            [("cpu", DeviceSpec::Cpu), ("cuda", DeviceSpec::Cuda(0)), ("cuda:0", DeviceSpec::Cuda(0)), ("cuda:3", DeviceSpec::Cuda(3))]
        {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), spec, "{s}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:+1", "CPU", "cuda:1:2", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert_eq!(e, format!("device \"{bad}\": expected \"cpu\", \"cuda\" or \"cuda:N\" (N the index of a GPU)"));
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_a_gpu_saying_how_to_get_one() {
        let e = DeviceSpec::Cuda(1).open().unwrap_err().to_string();
        assert!(e.starts_with("device \"cuda:1\": this rcaflow is a CPU-only build;"), "{e}");
        assert!(e.contains("--features cuda"), "{e}");
        assert!(DeviceSpec::Cpu.open().is_ok());
    }
}
