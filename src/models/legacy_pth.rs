//! Legacy (pre-zip) torch checkpoints: what `torch.save` wrote before torch 1.6, and still writes
//! with `_use_new_zipfile_serialization=False`. pytorch-fid's `pt_inception-2015-12-05-*.pth`,
//! lpips' `weights/v0.1/{alex,vgg}.pth` and torchvision's older model files use it.
//!
//! Reference: `_legacy_save` / `_legacy_load` in torch/serialization.py. The file is a sequence
//! of pickles (protocol 2) followed by raw storage data:
//!
//! 1. the magic number `0x1950a86a20f9469cfc6c`;
//! 2. the protocol version, 1001;
//! 3. `sys_info`: byte order and C type sizes;
//! 4. the saved object, where a tensor is a call of `torch._utils._rebuild_tensor_v2(storage,
//!    offset, size, stride, requires_grad, hooks)` and a storage is the persistent id
//!    `("storage", torch.FloatStorage, key, location, numel, view)`;
//! 5. the list of storage keys;
//! 6. for each key in that order: its element count (i64) and its little-endian data.
//!
//! The pickles are read by the bounded unpickler of `torch_pickle`; each storage's data is a
//! slice of the file, checked against the declared element count before any tensor is made, so
//! no declared size can allocate more than the file holds. Errors are one-line strings;
//! [`super::weights::WeightMap::load`] adds the file.

use std::collections::HashMap;
use std::rc::Rc;

use candle_core::{Device, Tensor};

use super::torch_pickle::{unpickle, Reader, Roots, TensorBuilder, Value};

/// `torch.serialization.MAGIC_NUMBER` (0x1950a86a20f9469cfc6c), little-endian as pickle's LONG1
/// stores it.
const MAGIC_NUMBER: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i64 = 1001;

/// Every tensor of a legacy checkpoint (`bytes` is the whole file), in file order, on `device`:
/// each in its storage's dtype (int8 widened to i16, bool as u8), floating-point ones as f32 when
/// `float_to_f32`. A state_dict nested under one of `NESTED_STATE_DICT_KEYS` is found as in
/// the zip path.
pub(crate) fn read_legacy(bytes: &[u8], device: &Device, float_to_f32: bool) -> Result<Vec<(String, Tensor)>, String> {
    let mut r = Reader { data: bytes, pos: 0 };
    let mut roots = Roots::new(bytes.len());

    let magic = unpickle(&mut r, &mut roots, "magic number")?;
    if !matches!(&magic, Value::BigInt(b) if b[..] == MAGIC_NUMBER[..]) {
        return Err(format!("first pickle is {}, not torch's magic number; not a torch checkpoint", magic.describe()));
    }
    let version = unpickle(&mut r, &mut roots, "protocol version")?;
    if !matches!(version, Value::Int(PROTOCOL_VERSION)) {
        return Err(format!("protocol version is {}, expected {PROTOCOL_VERSION}", version.describe()));
    }
    let sys_info = unpickle(&mut r, &mut roots, "sys_info")?;
    if let Some(Value::Bool(false)) = sys_info.get("little_endian") {
        return Err("big-endian checkpoint is not supported".to_string());
    }
    let top = unpickle(&mut r, &mut roots, "saved object")?;
    let keys = unpickle(&mut r, &mut roots, "storage key list")?;
    let keys = keys.items().ok_or_else(|| format!("storage key list is {}, not a list", keys.describe()))?;

    // The storages' data, in the order of the key list: slices of the file, nothing copied yet.
    let mut data: HashMap<Rc<str>, &[u8]> = HashMap::with_capacity(keys.len().min(roots.keys().len()));
    for key in &keys {
        let key = key.as_str().ok_or_else(|| format!("storage key {} is not a string", key.describe()))?;
        let root = roots.get(key).ok_or_else(|| format!("storage \"{key}\" is listed but no tensor refers to it; corrupt file?"))?;
        let what = format!("the data of storage \"{key}\"");
        let count = i64::from_le_bytes(r.array(&what)?);
        if u64::try_from(count).ok() != Some(root.numel) {
            return Err(format!(
                "storage \"{key}\" has {count} elements in the data section but {} in the \
                 pickle; corrupt file?",
                root.numel
            ));
        }
        let nbytes = root.nbytes().ok_or_else(|| format!("storage \"{key}\" is too large"))?;
        data.insert(Rc::from(key), r.take(nbytes, &what)?);
    }
    TensorBuilder::new(&data, device, float_to_f32, bytes.len() as u64).state_dict(&top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
        read_legacy(bytes, &Device::Cpu, false)
    }

    /// A minimal pickle writer for hand-made legacy files.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn op(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn int(&mut self, i: i32) -> &mut Self {
            self.op(b"J").op(&i.to_le_bytes())
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
        }
        fn global(&mut self, m: &str, n: &str) -> &mut Self {
            self.op(format!("c{m}\n{n}\n").as_bytes())
        }
        fn ints(&mut self, v: &[i32]) -> &mut Self {
            self.op(b"(");
            for &i in v {
                self.int(i);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
        #[allow(clippy::too_many_arguments)]
        fn tensor(
            &mut self,
            class: &str,
            key: &str,
            numel: i32,
            view: Option<(&str, i32, i32)>,
            offset: i32,
            size: &[i32],
            stride: &[i32],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
            self.str("storage").global("torch", class).str(key).str("cpu").int(numel);
            match view {
                None => self.op(b"N"),
                Some((k, o, n)) => self.op(b"(").str(k).int(o).int(n).op(b"t"),
            };
            self.op(b"tQ").int(offset).ints(size).ints(stride).op(b"\x89");
            self.global("collections", "OrderedDict").op(b")RtR")
        }
    }

    const MAGIC_PICKLE: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];

    /// A legacy file: header pickles, `obj` (a complete pickle body, without PROTO/STOP), the
    /// key list and the storages' (element count, bytes).
    fn file(obj: &P, keys: &[&str], data: &[(i64, &[u8])]) -> Vec<u8> {
        file_with_sys_info(obj, keys, data, true)
    }

    fn file_with_sys_info(obj: &P, keys: &[&str], data: &[(i64, &[u8])], le: bool) -> Vec<u8> {
        let mut f = MAGIC_PICKLE.to_vec();
        f.extend_from_slice(&[0x80, 0x02, b'M', 0xe9, 0x03, b'.']);
        let mut info = P::default();
        info.op(&[0x80, 0x02]).op(b"}(").str("little_endian");
        info.op(if le { b"\x88" } else { b"\x89" }).op(b"u.");
        f.extend_from_slice(&info.0);
        f.extend_from_slice(&[0x80, 0x02]);
        f.extend_from_slice(&obj.0);
        f.push(b'.');
        let mut k = P::default();
        k.op(&[0x80, 0x02]).op(b"](");
        for key in keys {
            k.str(key);
        }
        k.op(b"e.");
        f.extend_from_slice(&k.0);
        for (n, bytes) in data {
            f.extend_from_slice(&n.to_le_bytes());
            f.extend_from_slice(bytes);
        }
        f
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn as_vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn storage_views_and_fortran_strides() {
        // Old torch (< 0.4) storage views: ("v", offset 2, size 3) of root "r" = [0, 1, ..., 5].
        let mut o = P::default();
        o.op(b"}(").str("a");
        o.tensor("FloatStorage", "r", 6, Some(("v", 2, 3)), 1, &[2], &[1]);
        o.str("b").tensor("FloatStorage", "r", 6, None, 0, &[2, 3], &[1, 2]);
        o.op(b"u");
        let data = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        let t = read(&file(&o, &["r"], &[(6, &data)])).unwrap();
        assert_eq!(t[0].0, "a");
        assert_eq!(as_vec(&t[0].1), [3., 4.]);
        assert_eq!(t[1].0, "b");
        assert_eq!(t[1].1.dims(), [2, 3]);
        assert_eq!(as_vec(&t[1].1), [0., 2., 4., 1., 3., 5.]);
    }

    #[test]
    fn structures_that_are_not_state_dicts() {
        let err = |o: &P| read(&file(o, &[], &[])).unwrap_err();
        let mut o = P::default();
        o.int(7);
        assert_eq!(
            err(&o),
            "the saved object is the int 7, not a dict; expected a state_dict saved with \
             torch.save(model.state_dict(), path)"
        );
        let mut o = P::default();
        o.global("torchvision.models.alexnet", "AlexNet").op(b")\x81}b");
        assert_eq!(
            err(&o),
            "the saved object is an object of class torchvision.models.alexnet.AlexNet (a whole \
             pickled model?), not a dict; expected a state_dict saved with \
             torch.save(model.state_dict(), path)"
        );
        let mut o = P::default();
        o.op(b"}(").str("epoch").int(3).str("optimizer").op(b"}u");
        assert_eq!(
            err(&o),
            "no tensors found in the saved dict (keys: [\"epoch\", \"optimizer\"]); expected a \
             state_dict saved with torch.save(model.state_dict(), path)"
        );
        let mut o = P::default();
        o.op(b"}(").str("w").op(b"I1\nu");
        assert_eq!(err(&o), "unsupported pickle opcode 0x49 at byte 56 in the saved object pickle");
        let mut o = P::default();
        o.op(b"}(").str("q").global("torch._utils", "_rebuild_qtensor").op(b")Ru");
        assert_eq!(err(&o), "tensor \"q\" is built by torch._utils._rebuild_qtensor, which is not supported");
    }

    #[test]
    fn inconsistent_storages_are_refused() {
        let one = |class: &str, numel: i32, size: &[i32], data: &[(i64, &[u8])]| {
            let mut o = P::default();
            o.op(b"}(").str("w");
            o.tensor(class, "r", numel, None, 0, size, &[1]).op(b"u");
            read(&file(&o, &["r"], data)).unwrap_err()
        };
        let three = f32_bytes(&[1., 2., 3.]);
        assert_eq!(
            one("ComplexFloatStorage", 3, &[3], &[(3, &three)]),
            "unsupported storage type torch.ComplexFloatStorage in the saved object pickle"
        );
        assert_eq!(
            one("FloatStorage", 3, &[4], &[(3, &three)]),
            "tensor \"w\": size [4], stride [1] and offset 0 reach past the end of its storage \
             of 3 float32 elements"
        );
        assert_eq!(
            one("FloatStorage", 3, &[3], &[(2, &three)]),
            "storage \"r\" has 2 elements in the data section but 3 in the pickle; corrupt file?"
        );
        let mut o = P::default();
        o.op(b"}(").str("w");
        o.tensor("FloatStorage", "r", 3, None, 0, &[3], &[1]).op(b"u");
        let be = file_with_sys_info(&o, &["r"], &[(3, &three)], false);
        assert_eq!(read(&be).unwrap_err(), "big-endian checkpoint is not supported");
        // The same file, little-endian, loads.
        let le = file(&o, &["r"], &[(3, &three)]);
        assert_eq!(as_vec(&read(&le).unwrap()[0].1), [1., 2., 3.]);
    }
}
