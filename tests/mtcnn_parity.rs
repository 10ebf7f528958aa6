//! MTCNN (src/models/mtcnn/) against facenet-pytorch 2.6.0, on the fixtures of
//! scripts/make_mtcnn_fixtures.py: the wheel's real weights, seeded inputs, the nets' outputs.
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rcaflow::models::mtcnn::{ONet, PNet, RNet};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mtcnn")
}

/// A little-endian float32 C-order `.npy` as numpy's `np.save` writes it (format 1.0).
fn read_npy(name: &str) -> Tensor {
    let bytes = std::fs::read(fixtures().join("nets").join(name)).expect("fixture");
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).expect("header");
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).expect("shape");
    let shape: Vec<usize> = shape_txt.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().expect("dim")).collect();
    let data: Vec<f32> = bytes[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn nets_equal_facenet_pytorch_on_the_shipped_weights() {
    let dev = Device::Cpu;
    let pnet = PNet::load(&fixtures().join("pnet.pt"), &dev).expect("pnet");
    let (reg, prob) = pnet.forward(&read_npy("pnet_in.npy")).expect("pnet forward");
    assert!(max_abs(&reg, &read_npy("pnet_reg.npy")) <= 1e-4);
    assert!(max_abs(&prob, &read_npy("pnet_prob.npy")) <= 1e-4);

    let rnet = RNet::load(&fixtures().join("rnet.pt"), &dev).expect("rnet");
    let (reg, prob) = rnet.forward(&read_npy("rnet_in.npy")).expect("rnet forward");
    assert!(max_abs(&reg, &read_npy("rnet_reg.npy")) <= 1e-4);
    assert!(max_abs(&prob, &read_npy("rnet_prob.npy")) <= 1e-4);

    let onet = ONet::load(&fixtures().join("onet.pt"), &dev).expect("onet");
    let (reg, lm, prob) = onet.forward(&read_npy("onet_in.npy")).expect("onet forward");
    assert!(max_abs(&reg, &read_npy("onet_reg.npy")) <= 1e-4);
    assert!(max_abs(&lm, &read_npy("onet_landmarks.npy")) <= 1e-4);
    assert!(max_abs(&prob, &read_npy("onet_prob.npy")) <= 1e-4);
}

#[test]
fn wrong_files_and_inputs_are_named() {
    let dev = Device::Cpu;
    // R-Net's file is not P-Net's: the first mis-shaped tensor is named.
    let msg = PNet::load(&fixtures().join("rnet.pt"), &dev).err().expect("refused").to_string();
    assert!(msg.contains("rnet.pt") && msg.contains("conv1.weight") && msg.contains("[10, 3, 3, 3]"), "{msg}");
    let msg = ONet::load(&fixtures().join("missing.pt"), &dev).err().expect("refused").to_string();
    assert!(msg.contains("missing.pt"), "{msg}");
    let rnet = RNet::load(&fixtures().join("rnet.pt"), &dev).expect("rnet");
    let x = Tensor::zeros((1, 3, 48, 48), candle_core::DType::F32, &dev).unwrap();
    let msg = rnet.forward(&x).err().expect("refused").to_string();
    assert!(msg.contains("rnet") && msg.contains("[1, 3, 48, 48]") && msg.contains("[N, 3, 24, 24]"), "{msg}");
}

fn iou(a: &[f32; 4], b: &[f64]) -> f64 {
    let (ax1, ay1, ax2, ay2) = (a[0] as f64, a[1] as f64, a[2] as f64, a[3] as f64);
    let w = (ax2.min(b[2]) - ax1.max(b[0])).max(0.0);
    let h = (ay2.min(b[3]) - ay1.max(b[1])).max(0.0);
    let inter = w * h;
    inter / ((ax2 - ax1) * (ay2 - ay1) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[test]
fn detections_equal_facenet_pytorch_on_the_photos() {
    use rcaflow::models::mtcnn::{Mtcnn, MtcnnConfig, RgbView};
    let mtcnn = Mtcnn::load(&fixtures(), &Device::Cpu).expect("weights");
    let text = std::fs::read_to_string(fixtures().join("detections.json")).expect("detections.json");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("json");
    let photos = reference.as_object().expect("object");
    assert!(photos.len() >= 5);
    // One batch of every photo, the astronaut twice: P-Net stacks the two 256x256 images,
    // R-Net and O-Net see the crops of all of them; each image must still get its own faces.
    let mut names: Vec<&String> = photos.keys().collect();
    names.push(names.iter().copied().find(|n| n.as_str() == "astronaut.png").expect("astronaut"));
    let imgs: Vec<image::RgbImage> =
        names.iter().map(|n| image::open(fixtures().join("photos").join(n)).expect("photo").to_rgb8()).collect();
    let views: Vec<RgbView> = imgs.iter().map(|i| RgbView { data: i.as_raw(), w: i.width() as usize, h: i.height() as usize }).collect();
    let all = mtcnn.detect_batch(&views, &MtcnnConfig::default()).expect("detect");
    assert_eq!(all.len(), names.len());
    for (name, got) in names.iter().zip(&all) {
        let want = &photos[name.as_str()];
        let boxes = want["boxes"].as_array().expect("boxes");
        assert_eq!(got.len(), boxes.len(), "{name}: face count");
        for (i, d) in got.iter().enumerate() {
            let b: Vec<f64> = boxes[i].as_array().expect("box").iter().map(|v| v.as_f64().expect("f")).collect();
            assert!(iou(&d.bbox, &b) >= 0.99, "{name} face {i}: box {:?} vs {b:?}", d.bbox);
            let p = want["probs"][i].as_f64().expect("prob");
            assert!((d.score as f64 - p).abs() <= 1e-4, "{name} face {i}: score {} vs {p}", d.score);
            for k in 0..5 {
                for c in 0..2 {
                    let r = want["landmarks"][i][k][c].as_f64().expect("landmark");
                    assert!((d.landmarks[k][c] as f64 - r).abs() <= 1.0, "{name} face {i} landmark {k}: {:?} vs {r}", d.landmarks[k]);
                }
            }
        }
    }
    // Settings the cascade cannot run with are refused, not looped on.
    for (cfg, says) in [
        (MtcnnConfig { factor: 1.0, ..Default::default() }, "factor 1"),
        (MtcnnConfig { min_face: 0.0, ..Default::default() }, "min face 0"),
        (MtcnnConfig { thresholds: [0.6, 1.0, 0.7], ..Default::default() }, "threshold 1"),
    ] {
        let msg = mtcnn.detect_batch(&views[..1], &cfg).err().expect("refused").to_string();
        assert!(msg.contains(says), "{msg}");
    }
    let msg = mtcnn.detect(&[0u8; 10], 2, 2, &MtcnnConfig::default()).err().expect("refused").to_string();
    assert!(msg.contains("10 bytes") && msg.contains("2x2"), "{msg}");
}

/// The raw set of `prep_boxes.csv` (scripts/make_mtcnn_fixtures.py's RAW_SET): an ImageFolder
/// of the committed photos, laid out in `root`.
fn raw_set(root: &Path) -> PathBuf {
    let raw = root.join("raw");
    for (rel, photo) in
        [("a/astronaut.png", "astronaut.png"), ("a/camera.png", "camera.png"), ("b/brick.png", "brick.png"), ("b/group.png", "group.png")]
    {
        std::fs::create_dir_all(raw.join(rel).parent().expect("class")).expect("mkdir");
        std::fs::copy(fixtures().join("photos").join(photo), raw.join(rel)).expect("copy");
    }
    raw
}

fn rcaflow(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rcaflow")).args(args).output().expect("run")
}

/// (source, crop square, output pixels) of every image a prep run wrote, by source.
fn crops(out: &Path) -> (Vec<(String, serde_json::Value, Vec<u8>)>, serde_json::Value) {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    let mut v: Vec<_> = m["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|e| {
            let px = image::open(out.join(e["output"].as_str().expect("output"))).expect("png").to_rgb8().into_raw();
            (e["source"].as_str().expect("source").to_string(), e["crop"].clone(), px)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    (v, m)
}

#[test]
fn detect_and_prep_mtcnn_equal_facenet_pytorch_boxes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let raw = raw_set(tmp.path());
    let w = fixtures();
    let os = |s: &str| std::ffi::OsString::from(s);
    let p = |p: &Path| p.as_os_str().to_owned();

    // detect, with its flags at facenet-pytorch's defaults, and the drawings.
    let (csv, drawn) = (tmp.path().join("faces.csv"), tmp.path().join("drawn"));
    let args = [os("detect"), os("--input"), p(&raw), os("--mtcnn-weights"), p(&w), os("--out"), p(&csv), os("--draw"), p(&drawn)];
    let extra =
        [os("--min-face"), os("20"), os("--thresholds"), os("0.6,0.7,0.7"), os("--factor"), os("0.709"), os("--detect-batch"), os("3")];
    let st = rcaflow(&args.iter().chain(&extra).map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("file,x,y,w,h,score,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y"));
    let rows: Vec<&str> = lines.collect();
    // astronaut 1, camera 1, group 2, brick none (detections.json).
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows.iter().all(|r| r.split(',').count() == 16));
    assert_eq!(rows.iter().filter(|r| r.starts_with("b/group.png,")).count(), 2);
    for f in ["a/astronaut.png", "a/camera.png", "b/brick.png", "b/group.png"] {
        let d = image::open(drawn.join(f)).expect("drawing").to_rgb8();
        assert_eq!(d.dimensions(), image::open(raw.join(f)).expect("photo").to_rgb8().dimensions());
    }

    // prep --crop mtcnn against --crop boxes on facenet-pytorch's kept boxes.
    let (mt, saved, fb) = (tmp.path().join("mtcnn"), tmp.path().join("saved.csv"), tmp.path().join("facenet"));
    let prep = |out: &Path, crop: &[std::ffi::OsString]| {
        let mut a = vec![os("prep"), os("--input"), p(&raw), os("--out"), p(out), os("--size"), os("32"), os("--eval-fraction"), os("0")];
        a.extend_from_slice(crop);
        let st = rcaflow(&a.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        crops(out)
    };
    let (ours, m) = prep(&mt, &[os("--crop"), os("mtcnn"), os("--mtcnn-weights"), p(&w), os("--save-boxes"), p(&saved)]);
    let (theirs, _) = prep(&fb, &[os("--crop"), os("boxes"), os("--boxes"), p(&w.join("prep_boxes.csv"))]);
    assert_eq!(ours.len(), 3);
    assert!(
        ours == theirs,
        "crops differ: {:?} vs {:?}",
        ours.iter().map(|c| &c.1).collect::<Vec<_>>(),
        theirs.iter().map(|c| &c.1).collect::<Vec<_>>()
    );
    assert_eq!(m["no_face"], serde_json::json!(["b/brick.png"]));
    assert_eq!(m["config"]["mtcnn"]["select"], "largest");
    let group = m["images"].as_array().expect("images").iter().find(|e| e["source"] == "b/group.png").expect("group");
    assert_eq!(group["faces"]["detections"].as_array().expect("detections").len(), 2);
    assert_eq!((group["faces"]["selected"].as_u64(), group["faces"]["runner_up"].as_u64()), (Some(0), Some(1)));
    assert_eq!(group["faces"]["detections"][0]["landmarks"].as_array().expect("landmarks").len(), 5);
    // --save-boxes round trip: --crop boxes on the saved CSV gives the same crops.
    let (again, m2) = prep(&tmp.path().join("again"), &[os("--crop"), os("boxes"), os("--boxes"), p(&saved)]);
    assert!(again == ours);
    assert_eq!(m2["no_face"], serde_json::json!(["b/brick.png"]));

    // Bad flags: one line each, exit 2, nothing loaded; missing weights say how to get them.
    for (flag, value, says) in [
        ("--thresholds", "0.6,0.7", "--thresholds 0.6,0.7: expected three numbers in (0, 1)"),
        ("--factor", "1.2", "--factor 1.2: expected a number in (0, 1)"),
        ("--select", "middle", "--select middle: unknown rule \"middle\""),
        ("--margin", "-0.1", "--margin -0.1: expected a number in [0, 2]"),
        ("--mtcnn-weights", "/nonexistent", "pnet.pt"),
    ] {
        let a =
            [os("prep"), os("--input"), p(&raw), os("--out"), p(&tmp.path().join("bad")), os("--crop"), os("mtcnn"), os(flag), os(value)];
        let st = rcaflow(&a.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&st.stderr);
        assert_eq!(st.status.code(), Some(2), "{err}");
        assert!(err.lines().count() == 1 && err.contains(says), "{flag} {value}: {err}");
    }
    let a = [os("prep"), os("--input"), p(&raw), os("--out"), p(&tmp.path().join("bad")), os("--min-face"), os("40")];
    let st = rcaflow(&a.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert_eq!(String::from_utf8_lossy(&st.stderr).trim(), "error: --min-face is only used with --crop mtcnn");
    let empty = tempfile::tempdir().expect("tmp");
    let st = rcaflow(&[&os("detect"), &os("--input"), &p(&raw), &os("--mtcnn-weights"), &p(empty.path()), &os("--out"), &p(&csv)]);
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("pnet.pt") && !err.contains("panicked"), "{err}");
}
