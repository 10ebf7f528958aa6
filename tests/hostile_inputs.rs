//! Hostile and broken input files (issue 16, the read side), each crafted here: torch
//! checkpoints in both formats (self-references through the memo, deep nesting, aliased
//! storages, huge declared sizes, repeated `OrderedDict(list)`), `.npz` statistics with a zip bomb
//! beside them or a member whose header lies, PNG headers declaring huge images, a symlink loop
//! in an image folder. Each must give a one-line error naming the file and what was wrong (exit 2
//! through the CLI), never a panic, an abort or a signal; the CLI cases run under a 1 GiB
//! address-space limit (`prlimit --as`), so a reader that allocated in proportion to what a
//! file declares rather than to what it holds would fail them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use common::bin::Ran;
use common::pickle::{f32_bytes, legacy_file, zip_file, P};
use common::zip_bytes::{npy, patch_declared_size, png_header, zip_of};
use rcaflow::data::fid_stats::FidStats;
use rcaflow::data::image_folder::{decode_rgb_planar, list_images};
use rcaflow::models::WeightMap;

/// 1 GiB of address space: what a reader may use for inputs under 10 MB.
const ONE_GIB: &str = "--as=1073741824";

/// `rcaflow args...` under the 1 GiB address-space limit (glibc's per-thread malloc arenas
/// would reserve address space without using it: two are plenty).
fn limited(args: &[&str]) -> Ran {
    let mut cmd = Command::new("prlimit");
    cmd.arg(ONE_GIB).arg("--").arg(env!("CARGO_BIN_EXE_rcaflow")).args(args);
    cmd.env_remove("RUST_LOG").env_remove("RCAFLOW_FAULT").env("MALLOC_ARENA_MAX", "2");
    Ran::of(&mut cmd)
}

/// The error line of a failed command: exactly one line on stderr, starting with "error: ".
fn one_error_line(ran: &Ran) -> &str {
    let lines: Vec<&str> = ran.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {}", ran.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    lines[0]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load_err(path: &Path) -> String {
    let e = WeightMap::load(path, &Device::Cpu).expect_err("a hostile file must not load").to_string();
    assert!(e.starts_with(&format!("weights {}: ", path.display())), "names the file: {e}");
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

// ---- crafted pickles (the saved object, without PROTO/STOP) ----

/// `_rebuild_from_type_v2(*L)` where `L = [_rebuild_from_type_v2, None, L]`: a list containing
/// itself, which a recursive reader follows until the stack overflows.
fn self_referencing_rebuild() -> P {
    let mut p = P::new();
    p.op(b"}(").str("w");
    p.global("torch._tensor", "_rebuild_from_type_v2");
    p.op(b"]").put(0).op(b"(").global("torch._tensor", "_rebuild_from_type_v2").op(b"N").get(0).op(b"e");
    p.op(b"Ru");
    p
}

/// A one-tuple nested `depth` deep (2 bytes a level).
fn deep_tuple(depth: usize) -> P {
    let mut p = P::new();
    p.op(b"N");
    p.0.extend(std::iter::repeat_n(0x85u8, depth));
    p
}

/// `{name_i: tensor over storage "0"}` for `names` names, all the whole storage of `numel` f32.
fn aliases(names: usize, numel: i64, legacy: bool) -> P {
    let mut p = P::new();
    p.op(b"}(");
    for i in 0..names {
        p.str(&format!("alias{i}")).tensor("FloatStorage", "0", numel, 0, &[numel], &[1], legacy);
    }
    p.op(b"u");
    p
}

/// One tensor `w` of `size` and `stride` over storage "0" of `numel` f32.
fn one_tensor(numel: i64, size: &[i64], stride: &[i64], legacy: bool) -> P {
    let mut p = P::new();
    p.op(b"}(").str("w").tensor("FloatStorage", "0", numel, 0, size, stride, legacy).op(b"u");
    p
}

/// A memoised list of `pairs` (key, value) pairs, then `OrderedDict(list)` called `calls` times.
fn ordered_dict_repeated(pairs: usize, calls: usize) -> P {
    let mut p = P::new();
    p.op(b"]").put(0).op(b"(");
    for i in 0..pairs {
        p.op(&[b'K', (i % 256) as u8, b'K', 1, 0x86]);
    }
    p.op(b"e0");
    p.global("collections", "OrderedDict").put(1).op(b"0");
    for _ in 0..calls {
        p.get(1).get(0).op(&[0x85, b'R', b'0']);
    }
    p.op(b"}");
    p
}

#[test]
fn legacy_self_referencing_list_is_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "selfref.pth", &legacy_file(&self_referencing_rebuild(), &[], &[]));
    assert!(std::fs::metadata(&path).unwrap().len() < 200);
    let e = load_err(&path);
    assert!(e.contains("_rebuild_from_type_v2 nested more than 16 deep in the saved object pickle"), "{e}");
}

#[test]
fn legacy_tuple_nested_a_million_deep_is_dropped_without_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "deep.pth", &legacy_file(&deep_tuple(1_000_000), &[], &[]));
    let e = load_err(&path);
    assert!(e.ends_with("legacy (pre-zip) torch checkpoint: the saved object is a tuple of 1 items, not a dict; expected a state_dict saved with torch.save(model.state_dict(), path)"), "{e}");
    // Inside a dict, beside a real tensor: the whole value is dropped iteratively too.
    let mut p = P::new();
    p.op(b"}(").str("deep");
    p.0.extend_from_slice(&deep_tuple(1_000_000).0);
    p.str("w").tensor("FloatStorage", "0", 2, 0, &[2], &[1], true).op(b"u");
    let path = write(dir.path(), "deep_in_dict.pth", &legacy_file(&p, &["0"], &[(2, &f32_bytes(&[1.0, 2.0]))]));
    let w = WeightMap::load(&path, &Device::Cpu).unwrap();
    assert_eq!(w.get(&[2], "w").unwrap().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
}

#[test]
fn legacy_huge_declared_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let one = f32_bytes(&[7.0]);
    // Stride 0 over one element, declaring a terabyte: refused against the copy budget.
    let path = write(dir.path(), "stride0.pth", &legacy_file(&one_tensor(1, &[1 << 38], &[0], true), &["0"], &[(1, &one)]));
    assert!(std::fs::metadata(&path).unwrap().len() < 300);
    let e = load_err(&path);
    assert!(e.contains("tensor \"w\": copying its 274877906944 strided elements would take the strided copies of this file past"), "{e}");
    // A contiguous tensor larger than its storage.
    let path = write(dir.path(), "past_end.pth", &legacy_file(&one_tensor(1, &[1 << 38], &[1], true), &["0"], &[(1, &one)]));
    assert!(load_err(&path)
        .contains("tensor \"w\": size [274877906944], stride [1] and offset 0 reach past the end of its storage of 1 float32 elements"));
    // A storage declaring a terabyte that the file does not hold.
    let n = 1i64 << 38;
    let path = write(dir.path(), "huge_storage.pth", &legacy_file(&one_tensor(n, &[n], &[1], true), &["0"], &[(n, &one)]));
    let e = load_err(&path);
    assert!(e.contains("truncated: the file ends at byte"), "{e}");
    assert!(e.contains("inside the data of storage \"0\" (reading 1099511627776 bytes"), "{e}");
}

#[test]
fn legacy_aliased_storages_are_shared_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let numel = 1 << 20;
    let data: Vec<f32> = (0..numel).map(|i| i as f32).collect();
    let path =
        write(dir.path(), "aliases.pth", &legacy_file(&aliases(400, numel as i64, true), &["0"], &[(numel as i64, &f32_bytes(&data))]));
    let w = WeightMap::load(&path, &Device::Cpu).unwrap();
    assert_eq!(w.keys().len(), 400);
    let t = w.get(&[numel], "alias399").unwrap();
    assert_eq!(t.dtype(), DType::F32);
    assert_eq!(t.narrow(0, numel - 2, 2).unwrap().to_vec1::<f32>().unwrap(), [(numel - 2) as f32, (numel - 1) as f32]);
    // Through the CLI under 1 GiB: 400 copies of 4 MB would not fit; one shared storage does.
    // The file is no Inception, so the load ends with a clean "missing tensor" (exit 2).
    let images = tiny_image_folder(dir.path());
    let stats = write(dir.path(), "stats.npz", &stats_npz(&[0.0, 1.0], &[1.0, 0.0, 0.0, 1.0], &[]));
    let ran = limited(&["fid", images.to_str().unwrap(), stats.to_str().unwrap(), "--inception", path.to_str().unwrap()]);
    assert_eq!(ran.code(), Some(2), "{ran:?}");
    let line = one_error_line(&ran);
    assert!(line.starts_with(&format!("error: weights {}: tensor \"", path.display())), "{line}");
    assert!(line.ends_with("is missing"), "{line}");
}

#[test]
fn legacy_ordered_dict_repeated_over_one_list_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "odict.pth", &legacy_file(&ordered_dict_repeated(2000, 8000), &[], &[]));
    assert!(std::fs::metadata(&path).unwrap().len() < 100_000);
    let e = load_err(&path);
    assert!(e.contains("the pickle creates or copies more container items than a file of its size can hold"), "{e}");
    // Through the CLI, under 1 GiB.
    let images = tiny_image_folder(dir.path());
    let stats = write(dir.path(), "stats.npz", &stats_npz(&[0.0, 1.0], &[1.0, 0.0, 0.0, 1.0], &[]));
    let ran = limited(&["fid", images.to_str().unwrap(), stats.to_str().unwrap(), "--inception", path.to_str().unwrap()]);
    assert_eq!(ran.code(), Some(2), "{ran:?}");
    assert!(one_error_line(&ran).contains(&format!("weights {}: legacy (pre-zip) torch checkpoint: the pickle creates", path.display())));
}

#[test]
fn zip_checkpoints_load_stored_and_deflated_and_share_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut p = P::new();
    p.op(b"}(").str("a").tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1], false);
    p.str("t").tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3], false).op(b"u");
    for deflate in [false, true] {
        let path = write(dir.path(), &format!("ok{deflate}.pth"), &zip_file(&p, &[("0", &data)], deflate));
        let w = WeightMap::load(&path, &Device::Cpu).unwrap();
        assert_eq!(w.get(&[2, 3], "a").unwrap().to_vec2::<f32>().unwrap(), [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        assert_eq!(w.get(&[3, 2], "t").unwrap().to_vec2::<f32>().unwrap(), [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]);
    }
}

#[test]
fn zip_checkpoints_hostile_pickles_and_members_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(&write(dir.path(), "selfref.pth", &zip_file(&self_referencing_rebuild(), &[], false)));
    assert!(e.contains("cannot read: zip torch checkpoint: _rebuild_from_type_v2 nested more than 16 deep"), "{e}");
    let e = load_err(&write(dir.path(), "deep.pth", &zip_file(&deep_tuple(1_000_000), &[], true)));
    assert!(e.contains("the saved object is a tuple of 1 items, not a dict"), "{e}");
    let e = load_err(&write(dir.path(), "odict.pth", &zip_file(&ordered_dict_repeated(2000, 8000), &[], false)));
    assert!(e.contains("more container items than a file of its size can hold"), "{e}");
    // The pickle declares 10 floats; the member holds 8 bytes.
    let e = load_err(&write(dir.path(), "short.pth", &zip_file(&one_tensor(10, &[10], &[1], false), &[("0", &[0u8; 8])], false)));
    assert!(
        e.contains("storage \"0\" is 10 float32 elements (40 bytes) in the pickle but its member archive/data/0 declares 8 bytes"),
        "{e}"
    );
    // A storage the archive lacks.
    let e = load_err(&write(dir.path(), "nostorage.pth", &zip_file(&one_tensor(1, &[1], &[1], false), &[], false)));
    assert!(e.contains("storage \"0\" has no member archive/data/0 in the archive"), "{e}");
    // 64 MB of zeros deflated to a few kB: out of proportion, refused before inflating.
    let numel = 16 << 20;
    let zeros = vec![0u8; numel * 4];
    let bomb = write(dir.path(), "bomb.pth", &zip_file(&one_tensor(numel as i64, &[numel as i64], &[1], false), &[("0", &zeros)], true));
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1_000_000);
    let e = load_err(&bomb);
    assert!(e.contains("member \"archive/data/0\" declares 67108864 bytes from"), "{e}");
    assert!(e.contains("out of proportion"), "{e}");
    // No data.pkl: not a torch checkpoint.
    let e = load_err(&write(dir.path(), "other.pth", &zip_of(&[("readme.txt", b"hello", false)])));
    assert!(e.contains("no <name>/data.pkl in the archive"), "{e}");
}

// ---- .npz statistics ----

/// An `.npz` of `mu` (d) and `sigma` (d x d), deflated, with `extra` members beside them.
fn stats_npz(mu: &[f64], sigma: &[f64], extra: &[(&str, &[u8])]) -> Vec<u8> {
    let d = mu.len();
    let (mu, sigma) = (npy(&[d], mu), npy(&[d, d], sigma));
    let mut members: Vec<(&str, &[u8], bool)> = vec![("mu.npy", &mu, true), ("sigma.npy", &sigma, true)];
    members.extend(extra.iter().map(|(n, b)| (*n, *b, true)));
    zip_of(&members)
}

#[test]
fn npz_with_a_bomb_beside_the_arrays_reads_the_arrays_only() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 256 << 20];
    let path = write(dir.path(), "bomb.npz", &stats_npz(&[1.0, 2.0], &[2.0, 0.5, 0.5, 1.0], &[("junk.npy", &zeros)]));
    drop(zeros);
    assert!(std::fs::metadata(&path).unwrap().len() < 1_000_000);
    let s = FidStats::read(&path).unwrap();
    assert_eq!(s, FidStats { mu: vec![1.0, 2.0], sigma: vec![2.0, 0.5, 0.5, 1.0] });
    // Through the CLI under 1 GiB: the FID of the two statistics (mu differs by (1, 2), equal
    // sigma: FID = |mu1 - mu2|^2 = 5), not an error and not 0.
    let other = write(dir.path(), "zero_mu.npz", &stats_npz(&[0.0, 0.0], &[2.0, 0.5, 0.5, 1.0], &[]));
    let ran = limited(&["fid", path.to_str().unwrap(), other.to_str().unwrap()]);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    let fid: f64 = ran.stdout.trim().strip_prefix("FID: ").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{ran:?}"));
    assert!((fid - 5.0).abs() < 1e-6, "{fid}");
}

#[test]
fn npz_members_that_lie_or_do_not_fit_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let sigma = [2.0, 0.5, 0.5, 1.0];
    // sigma.npy's headers declare its 160 bytes, but it inflates to 160 + 1 MB.
    let mut long_sigma = npy(&[2, 2], &sigma);
    let declared = long_sigma.len() as u32;
    long_sigma.extend(std::iter::repeat_n(0u8, 1 << 20));
    let mu = npy(&[2], &[1.0, 2.0]);
    let mut lying = zip_of(&[("mu.npy", &mu, true), ("sigma.npy", &long_sigma, true)]);
    patch_declared_size(&mut lying, "sigma.npy", declared);
    let path = write(dir.path(), "lying.npz", &lying);
    let e = FidStats::read(&path).unwrap_err().to_string();
    // Caught while inflating, by the capped reader (one byte past the declared size) or by the
    // zip reader's own check of the declared size: an error either way, never the arrays.
    let ours = format!(
        "fid statistics \"{}\": member \"sigma.npy\" inflates to more bytes, not the {declared} its header declares",
        path.display()
    );
    let zips = format!("fid statistics \"{}\": member \"sigma.npy\": File is larger than its declared uncompressed size", path.display());
    assert!(e == ours || e == zips, "{e}");
    // A member declaring 4 GB from a few bytes: refused before inflating.
    let mut huge = zip_of(&[("mu.npy", &mu, true), ("sigma.npy", &npy(&[2, 2], &sigma), true)]);
    // (u32::MAX itself would mean "see the zip64 field".)
    patch_declared_size(&mut huge, "sigma.npy", u32::MAX - 1);
    let path = write(dir.path(), "huge.npz", &huge);
    let e = FidStats::read(&path).unwrap_err().to_string();
    assert!(e.contains("member \"sigma.npy\" declares 4294967294 bytes from") && e.contains("out of proportion"), "{e}");
    // The header's shape disagrees with mu, or its dtype is not a float.
    // A header declaring more data than its member holds.
    let path = write(dir.path(), "short.npz", &stats_npz(&[1.0, 2.0, 3.0], &sigma, &[]));
    let e = FidStats::read(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "fid statistics \"{}\": \"sigma\": member sigma.npy declares 160 bytes, but its header's shape [3, 3] needs 200",
            path.display()
        )
    );
    let mu3 = npy(&[3], &[1.0, 2.0, 3.0]);
    let path = write(dir.path(), "shape.npz", &zip_of(&[("mu.npy", &mu3, true), ("sigma.npy", &npy(&[2, 2], &sigma), true)]));
    let e = FidStats::read(&path).unwrap_err().to_string();
    assert_eq!(e, format!("fid statistics \"{}\": \"sigma\" has shape [2, 2], expected [3, 3] to match \"mu\"", path.display()));
    let mut int_mu = npy(&[2], &[1.0, 2.0]);
    int_mu[21..24].copy_from_slice(b"<i8");
    let path = write(dir.path(), "dtype.npz", &zip_of(&[("mu.npy", &int_mu, false), ("sigma.npy", &npy(&[2, 2], &sigma), false)]));
    let e = FidStats::read(&path).unwrap_err().to_string();
    assert!(e.contains("\"mu\": dtype '<i8'"), "{e}");
    // Through the CLI under 1 GiB: exit 2, one line naming the file.
    let good = write(dir.path(), "good.npz", &stats_npz(&[0.0, 0.0], &sigma, &[]));
    let lying = dir.path().join("lying.npz");
    let ran = limited(&["fid", lying.to_str().unwrap(), good.to_str().unwrap()]);
    assert_eq!(ran.code(), Some(2), "{ran:?}");
    assert!(one_error_line(&ran).starts_with(&format!("error: fid statistics \"{}\": member \"sigma.npy\"", lying.display())));
    assert!(ran.stdout.is_empty(), "no FID printed: {}", ran.stdout);
}

// ---- images ----

/// A folder of two 4x4 PNGs (what `fid` needs to reach its weights).
fn tiny_image_folder(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..2u8 {
        image::save_buffer(images.join(format!("{i}.png")), &[i * 40; 48], 4, 4, image::ExtendedColorType::Rgb8).unwrap();
    }
    images
}

#[test]
fn a_png_declaring_16000_squared_pixels_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    // 31 KB of (incomplete) image data behind a header declaring 16000x16000 1-bit pixels.
    let path = write(dir.path(), "huge.png", &png_header(16000, 16000, 1, &vec![0u8; 31_000]));
    let e = decode_rgb_planar(&path).unwrap_err();
    assert!(e.starts_with("image is 16000x16000 pixels, larger than the "), "{e}");
    assert!(e.contains("limit (images.max_width and images.max_height in the config file)"), "{e}");
}

#[test]
fn decoding_goes_straight_to_planar_rgb_for_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let grey = dir.path().join("grey.png");
    image::save_buffer(&grey, &[10, 200], 2, 1, image::ExtendedColorType::L8).unwrap();
    assert_eq!(decode_rgb_planar(&grey).unwrap(), (1, 2, vec![10, 200, 10, 200, 10, 200]));
    let rgba = dir.path().join("rgba.png");
    image::save_buffer(&rgba, &[1, 2, 3, 0, 4, 5, 6, 255], 2, 1, image::ExtendedColorType::Rgba8).unwrap();
    assert_eq!(decode_rgb_planar(&rgba).unwrap(), (1, 2, vec![1, 4, 2, 5, 3, 6]));
    let grey16 = dir.path().join("grey16.png");
    let px: Vec<u8> = [0u16, 65535].iter().flat_map(|v| v.to_ne_bytes()).collect();
    image::save_buffer(&grey16, &px, 2, 1, image::ExtendedColorType::L16).unwrap();
    assert_eq!(decode_rgb_planar(&grey16).unwrap(), (1, 2, vec![0, 255, 0, 255, 0, 255]));
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_in_an_image_folder_ends_the_walk() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("alice");
    std::fs::create_dir_all(class.join("sub")).unwrap();
    image::save_buffer(class.join("a.png"), &[0; 3], 1, 1, image::ExtendedColorType::Rgb8).unwrap();
    image::save_buffer(class.join("sub/b.png"), &[0; 3], 1, 1, image::ExtendedColorType::Rgb8).unwrap();
    // sub/back -> .. (the class folder itself), and a second link to sub.
    std::os::unix::fs::symlink("..", class.join("sub/back")).unwrap();
    std::os::unix::fs::symlink("sub", class.join("again")).unwrap();
    let files = list_images(&class).unwrap();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["a.png", "b.png"], "each image once: {files:?}");
}

#[test]
fn the_image_size_limit_is_a_setting() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("raw/alice");
    std::fs::create_dir_all(&class).unwrap();
    for i in 0..3u8 {
        image::save_buffer(class.join(format!("small{i}.png")), &[i; 12], 2, 2, image::ExtendedColorType::Rgb8).unwrap();
    }
    image::save_buffer(class.join("big.png"), &[0; 48], 4, 4, image::ExtendedColorType::Rgb8).unwrap();
    let config = write(dir.path(), "rcaflow.toml", b"[images]\nmax_width = 3\nmax_height = 3\n");
    let (raw, out) = (dir.path().join("raw"), dir.path().join("out"));
    let ran = common::bin::run([
        "--config",
        config.to_str().unwrap(),
        "prep",
        "--input",
        raw.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "8",
        "--eval-fraction",
        "0.5",
    ]);
    assert!(ran.success(), "{ran:?}");
    let big = class.join("big.png");
    let expected = format!(
        "prep: skipping unreadable image \"{}\": image is 4x4 pixels, larger than the 3x3 limit (images.max_width and images.max_height in the config file)",
        big.display()
    );
    assert!(ran.stderr.lines().any(|l| l == expected), "{}", ran.stderr);
    // A limit of 0 is refused with the settings, before anything runs.
    let zero = write(dir.path(), "zero.toml", b"[images]\nmax_alloc_mib = 0\n");
    let ran =
        common::bin::run(["--config", zero.to_str().unwrap(), "prep", "--input", raw.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(ran.code(), Some(2), "{ran:?}");
    assert!(one_error_line(&ran)
        .contains("images.max_width, images.max_height and images.max_alloc_mib must be positive, found 8192, 8192 and 0"));
}
