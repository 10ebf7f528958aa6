//! Zip-format torch checkpoints (torch >= 1.6, `torch.save`'s default): an archive
//! `<name>/data.pkl` (the pickled object, protocol 2), `<name>/data/<key>` (each storage's raw
//! little-endian bytes), `<name>/byteorder` and `<name>/version`.
//!
//! Reference: `_save` / `_load` in torch/serialization.py; a storage's persistent id is
//! `("storage", torch.FloatStorage, key, location, numel)`. The pickle goes through the bounded
//! unpickler of `torch_pickle`; only `data.pkl`, `byteorder` and the storages the pickle names
//! are read, each by [`super::zip_member::BoundedZip`], after its declared size is checked
//! against what the pickle says it holds.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use candle_core::{Device, Tensor};

use super::torch_pickle::{unpickle, Reader, Roots, TensorBuilder};
use super::zip_member::BoundedZip;

/// The largest `data.pkl` read: a state dict of ten thousand tensors pickles to about 1 MB.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Every tensor of the zip checkpoint at `path`, as [`super::legacy_pth::read_legacy`] returns
/// them.
pub(crate) fn read_zip(path: &Path, device: &Device, float_to_f32: bool) -> Result<Vec<(String, Tensor)>, String> {
    let file_len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let mut zip = BoundedZip::open(path)?;
    let names = zip.names();
    let pkl_name = names
        .iter()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1 && n.rsplit('/').next() == Some("data.pkl"))
        .cloned()
        .ok_or("no <name>/data.pkl in the archive; not a torch checkpoint (a zip made by torch.save has one)")?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if zip.member(&format!("{prefix}byteorder"))?.is_some() {
        let order = zip.read(&format!("{prefix}byteorder"), 16)?;
        if order.trim_ascii() == b"big" {
            return Err("big-endian checkpoint is not supported".to_string());
        }
    }
    let pkl = zip.read(&pkl_name, MAX_PICKLE_BYTES)?;
    let mut r = Reader { data: &pkl, pos: 0 };
    let mut roots = Roots::new(pkl.len());
    let top = unpickle(&mut r, &mut roots, "saved object")?;

    let mut storages: Vec<(Rc<str>, Vec<u8>)> = Vec::with_capacity(roots.keys().len());
    for key in roots.keys() {
        let root = roots.get(key).ok_or_else(|| format!("storage \"{key}\" is named but not declared"))?;
        let nbytes = root.nbytes().ok_or_else(|| format!("storage \"{key}\" is too large"))?;
        let member = format!("{prefix}data/{key}");
        let m = zip.member(&member)?.ok_or_else(|| format!("storage \"{key}\" has no member {member} in the archive; corrupt file?"))?;
        if m.size != nbytes as u64 {
            return Err(format!(
                "storage \"{key}\" is {} {} elements ({nbytes} bytes) in the pickle but its member \
                 {member} declares {} bytes; corrupt file?",
                root.numel,
                root.ty.name(),
                m.size
            ));
        }
        storages.push((key.clone(), zip.read(&member, nbytes as u64)?));
    }
    let data: HashMap<Rc<str>, &[u8]> = storages.iter().map(|(k, v)| (k.clone(), v.as_slice())).collect();
    TensorBuilder::new(&data, device, float_to_f32, file_len).state_dict(&top)
}
