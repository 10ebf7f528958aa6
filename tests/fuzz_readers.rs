//! Bounded-time fuzzing of the readers of files from elsewhere: torch checkpoints (legacy and
//! zip), `.npz` statistics and run checkpoints, over arbitrary bytes and over mutations of valid
//! files (byte changes, insertions, truncation). Every input must give `Ok` or an error, never a
//! panic (a stack overflow or an abort would end the test process, which fails too). A fixed
//! case count keeps each target to a few seconds in a debug build; failures are not persisted
//! (CI starts clean), proptest prints the shrunk input instead.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::pickle::{f32_bytes, legacy_file, zip_file, P};
use proptest::prelude::*;
use rcaflow::data::fid_stats::FidStats;
use rcaflow::models::WeightMap;
use rcaflow::runtime::accumulator::Snapshot;
use rcaflow::runtime::checkpoint;
use rcaflow::units::{Origin, UnitId};
use sha2::{Digest, Sha256};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn fixture(dir: &str, name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir).join(name)).unwrap()
}

/// One edit of a file: set a byte, insert bytes, or cut the file short.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Set(i, b) => {
                if !bytes.is_empty() {
                    bytes[i % n] = *b;
                }
            }
            Edit::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Truncate(i) => bytes.truncate(i % n),
        }
    }
    bytes
}

fn load_pth(dir: &Path, bytes: &[u8]) {
    let path: PathBuf = dir.join("w.pth");
    std::fs::write(&path, bytes).unwrap();
    if let Err(e) = WeightMap::load(&path, &Device::Cpu) {
        let e = e.to_string();
        assert!(e.starts_with("weights ") && !e.contains('\n'), "{e}");
    }
}

/// Names inside a file are echoed in messages; a hostile one must not break the message's line.
#[test]
fn names_with_control_characters_are_escaped_in_the_one_line_message() {
    let dir = tempfile::tempdir().unwrap();
    // The central directory names a member `tiny_state_d\nct/data.pkl`, its local header not
    // (the shrunk case proptest once found).
    let mut bytes = fixture("resnet", "tiny_state_dict.pth");
    let name = b"tiny_state_dict/data.pkl";
    let at = bytes.windows(name.len()).rposition(|w| w == name).unwrap();
    bytes[at + 12] = b'\n';
    load_pth(dir.path(), &bytes);
    // A storage key with a newline and an escape character, and no member for it.
    let mut p = P::new();
    p.op(b"}(").str("a").tensor("FloatStorage", "0\n\x1b[2J", 6, 0, &[2, 3], &[3, 1], false).op(b"u");
    let (f, _) = storages();
    let path = dir.path().join("w.pth");
    std::fs::write(&path, zip_file(&p, &[("0", &f)], false)).unwrap();
    let e = WeightMap::load(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains(r#"storage "0\n\u{1b}[2J""#) && !e.chars().any(char::is_control), "{e}");
}

/// A small state dict body: a few tensors over two storages, a strided one, nesting.
fn small_state_dict(legacy: bool) -> P {
    let mut p = P::new();
    p.op(b"}(").str("a").tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1], legacy);
    p.str("t").tensor("FloatStorage", "0", 6, 1, &[2, 2], &[1, 3], legacy);
    p.str("n").op(b"](K\x01K\x02e");
    p.str("b").tensor("LongStorage", "1", 1, 0, &[], &[], legacy).op(b"u");
    p
}

fn storages() -> (Vec<u8>, Vec<u8>) {
    (f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 7i64.to_le_bytes().to_vec())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn pth_arbitrary_bytes(prefix in 0usize..3, body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = [&b""[..], b"PK\x03\x04", b"\x80\x02"][prefix].to_vec();
        bytes.extend(body);
        load_pth(dir.path(), &bytes);
    }

    #[test]
    fn legacy_pth_mutations(which in 0usize..4, edits in proptest::collection::vec(edit(), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let (f, l) = storages();
        let valid = match which {
            0 => fixture("resnet", "tiny_state_dict_legacy.pth"),
            1 => fixture("resnet", "legacy_py2_nested.pth"),
            2 => fixture("resnet", "legacy_dtypes.pth"),
            _ => legacy_file(&small_state_dict(true), &["0", "1"], &[(6, &f), (1, &l)]),
        };
        load_pth(dir.path(), &apply(valid, &edits));
    }

    #[test]
    fn zip_pth_mutations(pickle_only in any::<bool>(), deflate in any::<bool>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let (f, l) = storages();
        let bytes = if pickle_only {
            // The archive intact, its data.pkl mutated: reaches the unpickler every time.
            let mut body = P::new();
            body.0 = apply(small_state_dict(false).0, &edits);
            zip_file(&body, &[("0", &f), ("1", &l)], deflate)
        } else if deflate {
            apply(zip_file(&small_state_dict(false), &[("0", &f), ("1", &l)], true), &edits)
        } else {
            apply(fixture("resnet", "tiny_state_dict.pth"), &edits)
        };
        load_pth(dir.path(), &bytes);
    }

    #[test]
    fn npz_arbitrary_bytes_and_mutations(which in 0usize..3, edits in proptest::collection::vec(edit(), 0..6), junk in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = match which {
            0 => apply(fixture("fid_stats", "pytorch_fid_style_d4.npz"), &edits),
            1 => apply(fixture("fid_stats", "uncompressed_d4.npz"), &edits),
            _ => junk,
        };
        let path = dir.path().join("s.npz");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = FidStats::read(&path) {
            let e = e.to_string();
            assert!(e.starts_with("fid statistics ") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn run_checkpoint_mutations(fix_digest in any::<bool>(), edits in proptest::collection::vec(edit(), 0..6), junk in proptest::collection::vec(any::<u8>(), 0..256)) {
        let dir = tempfile::tempdir().unwrap();
        let applied = (0..5).map(|index| UnitId { origin: Origin::Generated, class: 1, index }).collect();
        checkpoint::write(dir.path(), "fid", &Snapshot { state: vec![0.5f64, -1.0, 3.0], applied }).unwrap();
        let path = checkpoint::checkpoint_path(dir.path(), "fid");
        let valid = std::fs::read(&path).unwrap();
        let mut bytes = if edits.is_empty() { junk } else { apply(valid, &edits) };
        // With the trailing SHA-256 recomputed, the mutation reaches the parser behind it.
        if fix_digest && bytes.len() > 32 {
            let n = bytes.len() - 32;
            let digest = Sha256::digest(&bytes[..n]);
            bytes[n..].copy_from_slice(&digest);
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = checkpoint::read::<Vec<f64>>(dir.path(), "fid") {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        let _ = checkpoint::read_applied(dir.path(), "fid");
    }
}
