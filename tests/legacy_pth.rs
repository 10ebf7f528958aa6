//! Legacy (pre-zip, torch < 1.6) `.pth` checkpoints through `WeightMap::load`.
//!
//! Fixtures (tests/fixtures/resnet/, from scripts/make_resnet_fixtures.py):
//! - `tiny_state_dict_legacy.pth`: the tensors of `tiny_state_dict.safetensors` (float64,
//!   int64 and a transposed tensor among them), saved with `_use_new_zipfile_serialization=False`.
//! - `legacy_dtypes.pth`: every supported dtype, views sharing one storage at offsets, a
//!   non-contiguous view, a 0-d and an empty tensor, and 100 more entries (memo > 256); the values
//!   are the formulas of `make_legacy_fixtures`, restated here.
//! - `legacy_py2_nested.pth`: written the way Python 2 torch did (lpips' weights/v0.1/*.pth):
//!   byte-string keys, OrderedDict as a list of pairs, sizes as longs, "cuda:0" locations; the
//!   state_dict is nested under "model" and holds a Parameter.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rcaflow::models::{WeightMap, WeightsError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resnet").join(name)
}

fn load(name: &str) -> WeightMap {
    WeightMap::load(&fixture(name), &Device::Cpu).unwrap()
}

/// The tensor `name`, checked to have `shape` and `dtype`, as f64 values in row-major order.
fn values(w: &WeightMap, name: &str, shape: &[usize], dtype: DType) -> Vec<f64> {
    let t = w.get(shape, name).unwrap();
    assert_eq!(t.dtype(), dtype, "{name}");
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn range(n: usize, scale: f64, shift: f64) -> Vec<f64> {
    (0..n).map(|i| i as f64 * scale + shift).collect()
}

#[test]
fn tiny_legacy_state_dict_equals_the_safetensors_one() {
    let legacy = load("tiny_state_dict_legacy.pth");
    let st = load("tiny_state_dict.safetensors");
    let keys = legacy.keys();
    assert_eq!(keys, st.keys());
    assert_eq!(keys.len(), 6);
    for key in &keys {
        let shape = st.shape_of(key).unwrap();
        assert_eq!(legacy.shape_of(key), Some(shape.clone()), "{key}");
        let (a, b) = (legacy.get(&shape, key).unwrap(), st.get(&shape, key).unwrap());
        assert_eq!(a.dtype(), b.dtype(), "{key}");
        let flat = |t: &Tensor| -> Vec<f64> { t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap() };
        assert_eq!(flat(&a), flat(&b), "{key}");
    }
    // As the zip path: float64 becomes f32, num_batches_tracked stays i64.
    assert_eq!(legacy.get(&[2], "fc.bias").unwrap().dtype(), DType::F32);
    let nbt = legacy.get(&[], "bn.num_batches_tracked").unwrap();
    assert_eq!(nbt.to_scalar::<i64>().unwrap(), 7);
    assert!(legacy.unused_keys().is_empty());
}

#[test]
fn legacy_dtypes_views_and_strides() {
    let w = load("legacy_dtypes.pth");
    // Floats of every width become f32.
    assert_eq!(values(&w, "f64", &[2, 3], DType::F32), range(6, 0.5, -1.25));
    assert_eq!(values(&w, "f16", &[4], DType::F32), range(4, 0.25, -0.5));
    assert_eq!(values(&w, "bf16", &[3], DType::F32), [1.5, -2.0, 0.0078125]);
    assert_eq!(values(&w, "scalar", &[], DType::F32), [2.5]);
    // Integers keep their type (bool as u8 0/1).
    assert_eq!(values(&w, "i64", &[3], DType::I64), [-3.0, 0.0, (1u64 << 40) as f64]);
    assert_eq!(values(&w, "i32", &[1, 2], DType::I32), [-7.0, 8.0]);
    assert_eq!(values(&w, "u8", &[3], DType::U8), [0.0, 1.0, 255.0]);
    assert_eq!(values(&w, "i16", &[2], DType::I16), [-300.0, 7.0]);
    // candle has no i8: widened to i16.
    assert_eq!(values(&w, "i8", &[2], DType::I16), [-128.0, 5.0]);
    assert_eq!(values(&w, "bool", &[3], DType::U8), [1.0, 0.0, 1.0]);
    // arange(12).reshape(3, 4).t(): strides (1, 4).
    assert_eq!(values(&w, "transposed", &[4, 3], DType::F32), [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]);
    // Three views of one storage, base = arange(12) * 0.25 - 1.
    let base = range(12, 0.25, -1.0);
    assert_eq!(values(&w, "view.a", &[4], DType::F32), base[2..6]);
    assert_eq!(values(&w, "view.b", &[2, 3], DType::F32), base[6..]);
    let cols: Vec<f64> = (0..3).flat_map(|r| [base[4 * r + 1], base[4 * r + 2]]).collect();
    assert_eq!(values(&w, "view.cols", &[3, 2], DType::F32), cols);
    assert!(values(&w, "empty", &[0, 3], DType::F32).is_empty());
    for i in 0..100 {
        assert_eq!(values(&w, &format!("many.{i}"), &[], DType::F32), [i as f64]);
    }
    assert_eq!(w.keys().len(), 115);
    assert!(w.unused_keys().is_empty());
}

#[test]
fn python2_style_checkpoint_nested_under_model() {
    let w = load("legacy_py2_nested.pth");
    assert_eq!(w.keys(), ["conv.bias", "lin0.model.1.weight"]);
    assert_eq!(values(&w, "lin0.model.1.weight", &[1, 4, 1, 1], DType::F32), range(4, 0.125, 0.0));
    assert_eq!(values(&w, "conv.bias", &[2], DType::F32), [0.5, -0.5]);
}

#[test]
fn truncated_legacy_file_is_a_clear_error() {
    let bytes = std::fs::read(fixture("legacy_dtypes.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Inside the first pickle, inside the state dict's pickle, in the storage data (the last
    // storage's bytes), and with only the element count of the first storage.
    let data_start = bytes.len() - STORAGE_DATA_LEN;
    assert_eq!(bytes[data_start - 1], b'.', "the key list pickle's STOP");
    for (cut, inside) in [
        (3, "the magic number pickle"),
        (bytes.len() / 2, "the saved object pickle"),
        (bytes.len() - 1, "the data of storage"),
        (data_start + 8, "the data of storage"),
    ] {
        let path = dir.path().join(format!("cut{cut}.pth"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = WeightMap::load(&path, &Device::Cpu).unwrap_err();
        assert!(matches!(err, WeightsError::LegacyPth { .. }), "{err}");
        let msg = err.to_string();
        let prefix = format!(
            "weights {}: legacy (pre-zip) torch checkpoint: truncated: the file ends at byte \
             {cut} inside ",
            path.display()
        );
        assert!(msg.starts_with(&prefix), "cut at {cut}: {msg}");
        assert!(msg.contains(inside), "cut at {cut}: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}

/// The length of the data section of `legacy_dtypes.pth`: 113 storages, each an i64 element
/// count and the data: f64 x 6, f16 x 4, bf16 x 3, i64 x 3, i32 x 2, u8 x 3, i16 x 2, i8 x 2,
/// bool x 3, scalar f32, transposed f32 x 12, the views' f32 x 12, empty, and the 100 `many.*`
/// f32 scalars.
const STORAGE_DATA_LEN: usize = 113 * 8 + 6 * 8 + 4 * 2 + 3 * 2 + 3 * 8 + 2 * 4 + 3 + 2 * 2 + 2 + 3 + 4 + 12 * 4 + 12 * 4 + 100 * 4;

#[test]
fn not_a_checkpoint_and_not_a_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    // Neither zip nor pickle.
    let path = dir.path().join("text.pth");
    std::fs::write(&path, b"<!DOCTYPE html>").unwrap();
    let err = WeightMap::load(&path, &Device::Cpu).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "weights {}: cannot read: not a torch checkpoint: expected a zip archive (torch >= \
             1.6) or a pickle stream (legacy format), found first bytes [3c 21 44 4f]",
            path.display()
        )
    );
    // A plain pickle (protocol 2 of the int 5) is not torch's magic number.
    let path = dir.path().join("five.pth");
    std::fs::write(&path, [0x80, 0x02, b'K', 5, b'.']).unwrap();
    let err = WeightMap::load(&path, &Device::Cpu).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "weights {}: legacy (pre-zip) torch checkpoint: first pickle is the int 5, not \
             torch's magic number; not a torch checkpoint",
            path.display()
        )
    );
}

/// Any legacy file a user has (lpips' `weights/v0.1/alex.pth`, pytorch-fid's
/// `pt_inception-2015-12-05-6726825d.pth`, ...): `RCAFLOW_LEGACY_PTH=FILE cargo test --test
/// legacy_pth -- --ignored --nocapture` prints `key shape sum` per tensor, sorted, to diff with
/// `for k, v in sorted(torch.load(FILE, map_location="cpu").items()):
/// print(k, list(v.shape), f"{v.double().sum().item():.9e}")`.
#[test]
#[ignore = "needs RCAFLOW_LEGACY_PTH (see the doc comment)"]
fn prints_a_user_file() {
    let path = std::env::var_os("RCAFLOW_LEGACY_PTH").expect("RCAFLOW_LEGACY_PTH is unset");
    let w = WeightMap::load(Path::new(&path), &Device::Cpu).unwrap();
    for key in w.keys() {
        let shape = w.shape_of(&key).unwrap();
        let t = w.get(&shape, &key).unwrap().to_dtype(DType::F64).unwrap();
        let sum = t.sum_all().unwrap().to_scalar::<f64>().unwrap();
        println!("{key} {shape:?} {sum:.9e}");
    }
}
