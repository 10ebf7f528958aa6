//! Weight files users already have, loaded whole into memory: `.safetensors`, and PyTorch
//! state_dicts saved with `torch.save(model.state_dict(), f)`, in the zip format (torch >= 1.6,
//! the private `zip_pth` module) or the legacy one before it (pytorch-fid's and lpips' released
//! weights; `legacy_pth`), both through the bounded unpickler of `torch_pickle`.
//!
//! [`WeightMap`] is modelled on candle-nn's `VarBuilder`: `pp("layer1")` returns a cheap view
//! whose lookups are prefixed with `layer1.`, so model code mirrors the checkpoint's key tree,
//! and `get(shape, name)` checks presence and exact shape. Unlike `VarBuilder`, every error names
//! the file and the full tensor key, and the map records which keys a model used so that a
//! checkpoint of a different architecture is caught (see [`WeightMap::unused_keys`]).
//!
//! Floating-point tensors are converted to f32 on load; integer tensors (BatchNorm's
//! `num_batches_tracked`) are kept as they are (legacy files: int8 widens to i16, bool becomes
//! u8, candle having neither).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use crate::files::name::printable;
use crate::models::random_weights::Draws;

/// Errors from loading weight files and looking tensors up in them.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights {}: the file is {size_mib} MiB, larger than the weights.max_mib limit of {limit_mib} MiB (a setting in the config file)", .path.display())]
    TooLarge { path: PathBuf, size_mib: u64, limit_mib: u64 },
    #[error("weights {}: cannot read: {}", .path.display(), printable(.cause))]
    Read { path: PathBuf, cause: String },
    /// A legacy (pre-zip, torch < 1.6) checkpoint that cannot be read: truncated, or holding
    /// something other than a state_dict of supported tensors.
    #[error("weights {}: legacy (pre-zip) torch checkpoint: {}", .path.display(), printable(.cause))]
    LegacyPth { path: PathBuf, cause: String },
    #[error(
        "weights {}: unsupported file extension; expected .safetensors, .pth or .pt",
        .path.display()
    )]
    Extension { path: PathBuf },
    #[error("weights {}: tensor \"{}\" is missing", .path.display(), printable(.name))]
    Missing { path: PathBuf, name: String },
    #[error(
        "weights {}: tensor \"{}\" has shape {found:?}, expected {expected:?}",
        .path.display(),
        printable(.name)
    )]
    Shape { path: PathBuf, name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("weights {}: unexpected tensor \"{}\" for {model}", .path.display(), printable(.name))]
    Unexpected { path: PathBuf, name: String, model: String },
    #[error("weights {}: tensor \"{}\": {}", .path.display(), printable(.name), printable(.cause))]
    Tensor { path: PathBuf, name: String, cause: String },
}

/// The zip local-file-header magic: every torch >= 1.6 checkpoint starts with it.
const ZIP_MAGIC: [u8; 4] = *b"PK\x03\x04";

/// pickle's PROTO opcode: a legacy checkpoint starts with a pickle (protocol >= 2).
const PICKLE_PROTO: u8 = 0x80;

/// Keys tried, in order, when a `.pth` holds no tensors at its top level: training checkpoints
/// commonly nest the state_dict as `{"state_dict": ...}` or `{"model": ...}`.
pub(crate) const NESTED_STATE_DICT_KEYS: [&str; 2] = ["state_dict", "model"];

/// All tensors of one weight file, with a key prefix (see [`WeightMap::pp`]).
#[derive(Debug, Clone)]
pub struct WeightMap {
    tensors: Arc<HashMap<String, Tensor>>,
    path: Arc<PathBuf>,
    /// Full keys looked up through `get`, shared by every view of the same file.
    used: Arc<Mutex<BTreeSet<String>>>,
    prefix: String,
    /// Set for [`WeightMap::random`]: the device its made-up tensors go to, and the record of
    /// what it made up.
    random: Option<(Device, Draws)>,
}

impl WeightMap {
    /// Loads every tensor of `path` onto `device` (`.safetensors`, or `.pth`/`.pt` in the zip or
    /// the legacy format).
    pub fn load(path: &Path, device: &Device) -> Result<WeightMap, WeightsError> {
        let read_err = |cause: String| WeightsError::Read { path: path.to_path_buf(), cause };
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let raw: Vec<(String, Tensor)> = match ext.as_deref() {
            Some("safetensors") => {
                check_size(path)?;
                candle_core::safetensors::load(path, device).map_err(|e| read_err(e.to_string()))?.into_iter().collect()
            }
            // read_torch checks the size itself.
            // Floats come out as f32 and already on `device`, each storage converted and moved
            // once, so that tensors sharing a storage keep sharing it (see `torch_pickle`).
            Some("pth") | Some("pt") => read_torch(path, device, true)?,
            _ => return Err(WeightsError::Extension { path: path.to_path_buf() }),
        };
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, t) in raw {
            let t = to_f32_if_float(&t).and_then(|t| t.to_device(device)).map_err(|e| WeightsError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                cause: e.to_string(),
            })?;
            tensors.insert(name, t);
        }
        Ok(Self::new(tensors, path.to_path_buf()))
    }

    /// A map over tensors already in memory (tests, converted checkpoints); `path_label` is what
    /// error messages name as the file. Tensors are kept as given (no dtype conversion).
    pub fn from_tensors(map: HashMap<String, Tensor>, path_label: impl Into<PathBuf>) -> Self {
        Self::new(map, path_label.into())
    }

    fn new(tensors: HashMap<String, Tensor>, path: PathBuf) -> Self {
        Self {
            tensors: Arc::new(tensors),
            path: Arc::new(path),
            used: Arc::new(Mutex::new(BTreeSet::new())),
            prefix: String::new(),
            random: None,
        }
    }

    /// A map with no file behind it that answers every `get` with a random tensor of the shape
    /// asked for ([`crate::models::random_weights::random_tensor`], keyed by the full name), on
    /// `device`: a model built from it has the real architecture and made-up weights (for
    /// `rcaflow bench`). `contains` and `shape_of` know no key, so optional tensors are absent.
    pub fn random(label: impl Into<PathBuf>, device: &Device) -> Self {
        Self { random: Some((device.clone(), Draws::default())), ..Self::new(HashMap::new(), label.into()) }
    }

    /// For a [`WeightMap::random`] map, the record of every tensor its views have served.
    pub fn random_draws(&self) -> Option<&Draws> {
        self.random.as_ref().map(|(_, draws)| draws)
    }

    /// A view whose lookups are prefixed with `prefix.` (nested: `pp("a").pp("b")` is `a.b.`).
    pub fn pp(&self, prefix: impl ToString) -> WeightMap {
        Self {
            tensors: Arc::clone(&self.tensors),
            path: Arc::clone(&self.path),
            used: Arc::clone(&self.used),
            prefix: self.full_name(&prefix.to_string()),
            random: self.random.clone(),
        }
    }

    /// The tensor `name` (under this view's prefix), checked to have exactly `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor, WeightsError> {
        let full = self.full_name(name);
        if let Some((device, draws)) = &self.random {
            draws.record(&full, shape);
            return crate::models::random_weights::random_tensor(&full, shape, device).map_err(|e| WeightsError::Tensor {
                path: self.path.to_path_buf(),
                name: full,
                cause: e.to_string(),
            });
        }
        let t = self.tensors.get(&full).ok_or_else(|| WeightsError::Missing { path: self.path.to_path_buf(), name: full.clone() })?;
        if t.dims() != shape {
            return Err(WeightsError::Shape {
                path: self.path.to_path_buf(),
                name: full,
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        let t = t.clone();
        self.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(full);
        Ok(t)
    }

    /// Whether `name` (under this view's prefix) is in the file.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(&self.full_name(name))
    }

    /// The shape of `name` (under this view's prefix), if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(&self.full_name(name)).map(|t| t.dims().to_vec())
    }

    /// The file the tensors came from (or the label given to [`WeightMap::from_tensors`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device of the tensors: the one [`WeightMap::load`] put them on (for
    /// [`WeightMap::from_tensors`], that of any one of them), CPU for an empty map.
    pub fn device(&self) -> Device {
        if let Some((device, _)) = &self.random {
            return device.clone();
        }
        self.tensors.values().next().map_or(Device::Cpu, |t| t.device().clone())
    }

    /// This view's key prefix, without the trailing dot ("" at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every key of the file (all views share the file), sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.tensors.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Keys of the file that no `get` on any view has returned so far, sorted. A model calls it
    /// after loading to reject a checkpoint that holds more than it uses (a ResNet-34 loaded as
    /// a ResNet-18 would otherwise load "successfully", silently dropping half the network).
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut keys: Vec<String> = self.tensors.keys().filter(|k| !used.contains(*k)).cloned().collect();
        keys.sort();
        keys
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
}

/// Reads up to `buf.len()` bytes (fewer only at end of file).
fn read_prefix(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The largest weights file read, in MiB: a process-wide setting (`[weights] max_mib` in the
/// config file, see [`set_max_weights_mib`]). The readers bound what a file's tensors may take
/// by the file's own size (storages are checked against the bytes present, aliases shared,
/// strided copies budgeted), so this caps the tensor memory of every model load.
static MAX_WEIGHTS_MIB: AtomicU64 = AtomicU64::new(DEFAULT_MAX_WEIGHTS_MIB);

/// `[weights] max_mib` when the config file does not say: the paper's models are 0.1-100 MB.
pub const DEFAULT_MAX_WEIGHTS_MIB: u64 = 16384;

/// Sets the cap every later weights load in this process checks (the binary does it once).
pub fn set_max_weights_mib(mib: u64) {
    MAX_WEIGHTS_MIB.store(mib, Ordering::Relaxed);
}

/// Refuses a file over the cap before any of it is read.
pub(crate) fn check_size(path: &Path) -> Result<(), WeightsError> {
    let len = std::fs::metadata(path).map_err(|e| WeightsError::Read { path: path.to_path_buf(), cause: e.to_string() })?.len();
    let limit_mib = MAX_WEIGHTS_MIB.load(Ordering::Relaxed);
    if len > limit_mib.saturating_mul(1 << 20) {
        return Err(WeightsError::TooLarge { path: path.to_path_buf(), size_mib: len.div_ceil(1 << 20), limit_mib });
    }
    Ok(())
}

/// Every tensor of the torch checkpoint at `path` (zip or legacy format, told apart by their
/// first bytes), in file order, on `device`; floating-point tensors as f32 when `float_to_f32`,
/// otherwise in their stored dtype. The state_dict may be nested under one of
/// [`NESTED_STATE_DICT_KEYS`].
pub(crate) fn read_torch(path: &Path, device: &Device, float_to_f32: bool) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let read_err = |cause: String| WeightsError::Read { path: path.to_path_buf(), cause };
    let legacy_err = |cause: String| WeightsError::LegacyPth { path: path.to_path_buf(), cause };
    check_size(path)?;
    let mut head = [0u8; 512];
    let n = File::open(path).and_then(|mut f| read_prefix(&mut f, &mut head)).map_err(|e| read_err(e.to_string()))?;
    let head = &head[..n];
    if head.starts_with(&ZIP_MAGIC) {
        super::zip_pth::read_zip(path, device, float_to_f32).map_err(|cause| read_err(format!("zip torch checkpoint: {cause}")))
    } else if head.first() == Some(&PICKLE_PROTO) {
        let bytes = std::fs::read(path).map_err(|e| read_err(e.to_string()))?;
        super::legacy_pth::read_legacy(&bytes, device, float_to_f32).map_err(legacy_err)
    } else if head.get(257..262) == Some(b"ustar") {
        Err(legacy_err("tar-format checkpoint (torch < 0.1.10) is not supported; re-save it with a newer torch".to_string()))
    } else {
        let first: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(read_err(format!(
            "not a torch checkpoint: expected a zip archive (torch >= 1.6) or a pickle stream \
             (legacy format), found first bytes [{}]",
            first.join(" ")
        )))
    }
}

/// f16/bf16/f64 become f32 (the models compute in f32); integer tensors are kept as they are.
fn to_f32_if_float(t: &Tensor) -> candle_core::Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> WeightMap {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        m.insert("layer1.0.conv1.weight".to_string(), Tensor::zeros((2, 3), DType::F32, &dev).unwrap());
        m.insert("fc.bias".to_string(), Tensor::zeros(5, DType::F32, &dev).unwrap());
        WeightMap::from_tensors(m, "/p/oracle.safetensors")
    }

    #[test]
    fn prefixes_nest_like_var_builder() {
        let w = map();
        let conv = w.pp("layer1").pp(0).pp("conv1");
        assert_eq!(conv.prefix(), "layer1.0.conv1");
        assert!(conv.contains("weight"));
        assert_eq!(conv.shape_of("weight"), Some(vec![2, 3]));
        assert!(conv.get(&[2, 3], "weight").is_ok());
        assert_eq!(w.unused_keys(), vec!["fc.bias".to_string()]);
    }

    #[test]
    fn errors_name_file_and_full_key() {
        let w = map();
        let e = w.pp("layer1.0").get(&[2, 3], "conv2.weight").unwrap_err();
        assert_eq!(e.to_string(), "weights /p/oracle.safetensors: tensor \"layer1.0.conv2.weight\" is missing");
        let e = w.pp("fc").get(&[10], "bias").unwrap_err();
        assert_eq!(e.to_string(), "weights /p/oracle.safetensors: tensor \"fc.bias\" has shape [5], expected [10]");
    }

    #[test]
    fn rejects_unknown_extension_and_unreadable_file() {
        let e = WeightMap::load(Path::new("/p/x.onnx"), &Device::Cpu).unwrap_err();
        assert_eq!(e.to_string(), "weights /p/x.onnx: unsupported file extension; expected .safetensors, .pth or .pt");
        let e = WeightMap::load(Path::new("/nonexistent/x.pth"), &Device::Cpu).unwrap_err();
        assert!(e.to_string().starts_with("weights /nonexistent/x.pth: cannot read: "), "{e}");
    }
}
