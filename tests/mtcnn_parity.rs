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

#[test]
fn detect_command_writes_the_csv_and_names_missing_weights() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("faces.csv");
    let bin = env!("CARGO_BIN_EXE_rcaflow");
    let st = std::process::Command::new(bin)
        .args(["detect", "--input"])
        .arg(fixtures().join("photos"))
        .arg("--mtcnn-weights")
        .arg(fixtures())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let csv = std::fs::read_to_string(&out).expect("csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("file,x,y,w,h,score,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y"));
    let rows: Vec<&str> = lines.collect();
    // astronaut 1, camera 1, group 2, brick and gravel none (detections.json).
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows.iter().all(|r| r.split(',').count() == 16));
    assert_eq!(rows.iter().filter(|r| r.starts_with("group.png,")).count(), 2);

    let st = std::process::Command::new(bin)
        .args(["detect", "--input"])
        .arg(fixtures().join("photos"))
        .arg("--mtcnn-weights")
        .arg(tmp.path())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("pnet.pt") && !err.contains("panicked"), "{err}");
}
