//! The MTCNN cascade, step for step as facenet-pytorch 2.6.0's `detect_face`
//! (facenet_pytorch/models/utils/detect_face.py) followed by `MTCNN.detect`'s ordering: the
//! image pyramid, P-Net proposals with per-scale and cross-scale NMS, R-Net and O-Net on
//! area-resampled crops, box regression, squaring and landmarks. The box maths runs on the host
//! in f32, in the reference's order of operations, so the boxes match to rounding; the nets run
//! on the device their weights were loaded on. Several images are detected together as
//! `detect_face` does for a batch: P-Net once per level over the images of one size, R-Net and
//! O-Net over the crops of all images.
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::nets::{weight_paths, MtcnnError, ONet, PNet, RNet};

/// facenet-pytorch's `MTCNN(min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709)`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MtcnnConfig {
    pub min_face: f64,
    pub thresholds: [f32; 3],
    pub factor: f64,
}

impl Default for MtcnnConfig {
    fn default() -> Self {
        Self { min_face: 20.0, thresholds: [0.6, 0.7, 0.7], factor: 0.709 }
    }
}

/// One face: `[x1, y1, x2, y2]` in pixels (floats, as facenet-pytorch returns them), O-Net's
/// face probability, and the five landmarks (left eye, right eye, nose, mouth left, mouth
/// right) as (x, y).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

/// The three nets, on one device.
pub struct Mtcnn {
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    device: Device,
}

/// An RGB image as f32 planes `[3][h][w]` (0..255), as `imgs.permute(0, 3, 1, 2).float()`.
struct Planes {
    data: Vec<f32>,
    h: usize,
    w: usize,
}

impl Planes {
    fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.h + y) * self.w + x]
    }
}

/// torch's `F.interpolate(mode="area")` (adaptive average pooling) of the window
/// `[y0, y1) x [x0, x1)` of `img` to `oh x ow`, then facenet-pytorch's `(x - 127.5) * 0.0078125`;
/// appended to `out` as CHW.
fn area_resample(img: &Planes, (y0, y1, x0, x1): (usize, usize, usize, usize), oh: usize, ow: usize, out: &mut Vec<f32>) {
    let (ih, iw) = (y1 - y0, x1 - x0);
    // adaptive pooling windows: [floor(i * in / out), ceil((i + 1) * in / out))
    let win = |i: usize, n_in: usize, n_out: usize| ((i * n_in) / n_out, ((i + 1) * n_in).div_ceil(n_out));
    for c in 0..3 {
        for oy in 0..oh {
            let (ys, ye) = win(oy, ih, oh);
            for ox in 0..ow {
                let (xs, xe) = win(ox, iw, ow);
                let mut sum = 0f32;
                for y in ys..ye {
                    for x in xs..xe {
                        sum += img.at(c, y0 + y, x0 + x);
                    }
                }
                let v = sum / ((ye - ys) * (xe - xs)) as f32;
                out.push((v - 127.5) * 0.0078125);
            }
        }
    }
}

/// A candidate: box, score, and the regression (or landmarks) that go with it.
#[derive(Debug, Clone)]
struct Cand {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
    points: [[f32; 2]; 5],
}

/// torchvision's `nms` (IoU without the +1, suppress where IoU > `thresh`), returning the kept
/// indices in descending score order, as `batched_nms` does for one image.
fn nms_union(c: &[Cand], thresh: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&a, &b| c[b].score.total_cmp(&c[a].score));
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let mut suppressed = vec![false; c.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &c[i].b;
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &c[j].b;
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            if inter / (area(bi) + area(bj) - inter) > thresh {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// facenet-pytorch's `nms_numpy(..., 'Min')`: the +1 pixel convention, overlap over the smaller
/// area, keep where overlap <= `thresh`.
fn nms_min(c: &[Cand], thresh: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..c.len()).collect();
    // np.argsort ascending, then repeatedly taking the last: highest score first.
    order.sort_by(|&a, &b| c[a].score.total_cmp(&c[b].score));
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut keep = Vec::new();
    while let Some(i) = order.pop() {
        keep.push(i);
        let bi = &c[i].b;
        order.retain(|&j| {
            let bj = &c[j].b;
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + 1.0).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + 1.0).max(0.0);
            w * h / area(bi).min(area(bj)) <= thresh
        });
    }
    keep
}

/// `rerec`: squares a box about its centre on its longer side.
fn rerec(b: &mut [f32; 4]) {
    let h = b[3] - b[1];
    let w = b[2] - b[0];
    let l = w.max(h);
    b[0] = b[0] + w * 0.5 - l * 0.5;
    b[1] = b[1] + h * 0.5 - l * 0.5;
    b[2] = b[0] + l;
    b[3] = b[1] + l;
}

/// `bbreg`: regression relative to the box's size with the +1 convention.
fn bbreg(b: &mut [f32; 4], reg: &[f32; 4]) {
    let w = b[2] - b[0] + 1.0;
    let h = b[3] - b[1] + 1.0;
    b[0] += reg[0] * w;
    b[1] += reg[1] * h;
    b[2] += reg[2] * w;
    b[3] += reg[3] * h;
}

/// `pad`: the 1-based inclusive crop window, truncated and clipped to the image; `None` where
/// it is empty (facenet-pytorch skips those crops).
fn pad(b: &[f32; 4], w: usize, h: usize) -> Option<(usize, usize, usize, usize)> {
    let x = (b[0].trunc() as i64).max(1);
    let y = (b[1].trunc() as i64).max(1);
    let ex = (b[2].trunc() as i64).min(w as i64);
    let ey = (b[3].trunc() as i64).min(h as i64);
    (ey > y - 1 && ex > x - 1).then(|| ((y - 1) as usize, ey as usize, (x - 1) as usize, ex as usize))
}

/// An RGB image, row-major `h x w x 3` bytes.
#[derive(Debug, Clone, Copy)]
pub struct RgbView<'a> {
    pub data: &'a [u8],
    pub w: usize,
    pub h: usize,
}

/// Crops per R-Net / O-Net forward, as facenet-pytorch's `fixed_batch_process` (512).
const REFINE_BATCH: usize = 512;
/// Input pixels per P-Net forward: images of one size are stacked up to this many pixels per
/// pyramid level (bounding the activations: conv1 keeps 10 floats per pixel), at least one.
const PNET_PIXELS: usize = 1 << 22;

impl MtcnnConfig {
    /// Refuses settings the cascade cannot run with (a factor of 1 or more, or a minimum face
    /// of zero, would build an endless pyramid).
    pub fn check(&self) -> Result<(), MtcnnError> {
        if !(self.min_face.is_finite() && self.min_face >= MIN_FACE) {
            return Err(MtcnnError::Config(format!("min face {}: expected at least {MIN_FACE} pixels", self.min_face)));
        }
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(MtcnnError::Config(format!("factor {}: expected a number in (0, 1)", self.factor)));
        }
        if let Some(t) = self.thresholds.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
            return Err(MtcnnError::Config(format!("threshold {t}: expected numbers in (0, 1)")));
        }
        Ok(())
    }
}

/// The smallest `min_face` accepted: the pyramid's first scale is `12 / min_face`, so below 4
/// pixels the image would be upsampled more than 3x.
pub const MIN_FACE: f64 = 4.0;

impl Mtcnn {
    /// Loads `pnet.pt`, `rnet.pt` and `onet.pt` from `dir` onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, MtcnnError> {
        let [p, r, o] = weight_paths(dir);
        Ok(Self { pnet: PNet::load(&p, device)?, rnet: RNet::load(&r, device)?, onet: ONet::load(&o, device)?, device: device.clone() })
    }

    /// Every face in the RGB image `rgb` (`h x w x 3`, row-major), largest box first, as
    /// `MTCNN(keep_all=True).detect(img, landmarks=True)`.
    pub fn detect(&self, rgb: &[u8], w: usize, h: usize, cfg: &MtcnnConfig) -> Result<Vec<Detection>, MtcnnError> {
        Ok(self.detect_batch(&[RgbView { data: rgb, w, h }], cfg)?.pop().unwrap_or_default())
    }

    /// [`Mtcnn::detect`] on several images at once, as facenet-pytorch's `detect_face` on a
    /// batch: P-Net runs once per pyramid level on every image of the same size stacked, and
    /// R-Net and O-Net on the crops of all images together (512 per forward). Each image's
    /// faces are what it alone gives (the NMS never mixes images).
    pub fn detect_batch(&self, images: &[RgbView<'_>], cfg: &MtcnnConfig) -> Result<Vec<Vec<Detection>>, MtcnnError> {
        cfg.check()?;
        let mut planes = Vec::with_capacity(images.len());
        for im in images {
            if im.data.len() != 3 * im.w * im.h || im.w == 0 || im.h == 0 {
                return Err(MtcnnError::Image { len: im.data.len(), w: im.w, h: im.h });
            }
            let mut data = vec![0f32; 3 * im.h * im.w];
            for (i, px) in im.data.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    data[c * im.h * im.w + i] = f32::from(px[c]);
                }
            }
            planes.push(Planes { data, h: im.h, w: im.w });
        }

        // Stage 1: P-Net on each level, NMS 0.5 within the level, then 0.7 across levels.
        let mut cands: Vec<Vec<Cand>> = vec![Vec::new(); planes.len()];
        let mut by_size: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, p) in planes.iter().enumerate() {
            by_size.entry((p.h, p.w)).or_default().push(i);
        }
        for (&(h, w), members) in &by_size {
            for s in pyramid(h, w, cfg) {
                let (sh, sw) = ((h as f64 * s + 1.0) as usize, (w as f64 * s + 1.0) as usize);
                let per_forward = (PNET_PIXELS / (sh * sw)).max(1);
                for group in members.chunks(per_forward) {
                    let mut buf = Vec::with_capacity(group.len() * 3 * sh * sw);
                    for &i in group {
                        area_resample(&planes[i], (0, h, 0, w), sh, sw, &mut buf);
                    }
                    let x = Tensor::from_vec(buf, (group.len(), 3, sh, sw), &self.device)?;
                    let (reg, prob) = self.pnet.forward(&x)?;
                    let (_, _, oh, ow) = prob.dims4()?;
                    let prob = prob.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                    let reg = reg.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                    for (k, &i) in group.iter().enumerate() {
                        let level = proposals(
                            &prob[k * 2 * oh * ow..(k + 1) * 2 * oh * ow],
                            &reg[k * 4 * oh * ow..(k + 1) * 4 * oh * ow],
                            oh,
                            ow,
                            s,
                            cfg.thresholds[0],
                        );
                        cands[i].extend(nms_union(&level, 0.5).into_iter().map(|j| level[j].clone()));
                    }
                }
            }
        }
        let boxes: Vec<Vec<Cand>> = cands
            .into_iter()
            .map(|cands| {
                let mut boxes: Vec<Cand> = nms_union(&cands, 0.7).into_iter().map(|i| cands[i].clone()).collect();
                for c in &mut boxes {
                    let regw = c.b[2] - c.b[0];
                    let regh = c.b[3] - c.b[1];
                    c.b = [c.b[0] + c.reg[0] * regw, c.b[1] + c.reg[1] * regh, c.b[2] + c.reg[2] * regw, c.b[3] + c.reg[3] * regh];
                    rerec(&mut c.b);
                }
                boxes
            })
            .collect();

        // Stage 2: R-Net on 24x24 crops.
        let boxes = self.refine(&planes, boxes, 24, |x| {
            let (reg, prob) = self.rnet.forward(x)?;
            Ok((reg, None, prob))
        })?;
        let boxes: Vec<Vec<Cand>> = boxes
            .into_iter()
            .map(|boxes| {
                let boxes: Vec<Cand> = boxes.into_iter().filter(|c| c.score > cfg.thresholds[1]).collect();
                let mut boxes: Vec<Cand> = nms_union(&boxes, 0.7).into_iter().map(|i| boxes[i].clone()).collect();
                for c in &mut boxes {
                    let reg = c.reg;
                    bbreg(&mut c.b, &reg);
                    rerec(&mut c.b);
                }
                boxes
            })
            .collect();

        // Stage 3: O-Net on 48x48 crops, landmarks, regression, NMS 0.7 "Min".
        let boxes = self.refine(&planes, boxes, 48, |x| {
            let (reg, lm, prob) = self.onet.forward(x)?;
            Ok((reg, Some(lm), prob))
        })?;
        Ok(boxes
            .into_iter()
            .map(|boxes| {
                let mut boxes: Vec<Cand> = boxes.into_iter().filter(|c| c.score > cfg.thresholds[2]).collect();
                for c in &mut boxes {
                    let wi = c.b[2] - c.b[0] + 1.0;
                    let hi = c.b[3] - c.b[1] + 1.0;
                    for p in &mut c.points {
                        *p = [wi * p[0] + c.b[0] - 1.0, hi * p[1] + c.b[1] - 1.0];
                    }
                    let reg = c.reg;
                    bbreg(&mut c.b, &reg);
                }
                let mut out: Vec<Detection> = nms_min(&boxes, 0.7)
                    .into_iter()
                    .map(|i| Detection { bbox: boxes[i].b, score: boxes[i].score, landmarks: boxes[i].points })
                    .collect();
                // MTCNN.detect with select_largest=True (its default): largest area first.
                out.sort_by(|a, b| {
                    let area = |d: &Detection| (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]);
                    area(b).total_cmp(&area(a))
                });
                out
            })
            .collect())
    }

    /// Crops every candidate of every image (dropping those whose window is empty, as the
    /// reference skips them), resamples to `side x side`, runs `net` on batches of
    /// [`REFINE_BATCH`] crops and writes back each crop's score (`prob[:, 1]`), regression
    /// and, for O-Net, raw landmarks.
    fn refine(
        &self,
        imgs: &[Planes],
        boxes: Vec<Vec<Cand>>,
        side: usize,
        net: impl Fn(&Tensor) -> Result<(Tensor, Option<Tensor>, Tensor), MtcnnError>,
    ) -> Result<Vec<Vec<Cand>>, MtcnnError> {
        let mut kept: Vec<Vec<Cand>> = vec![Vec::new(); boxes.len()];
        let mut owner = Vec::new();
        let mut buf = Vec::new();
        for (i, cands) in boxes.into_iter().enumerate() {
            for c in cands {
                if let Some(win) = pad(&c.b, imgs[i].w, imgs[i].h) {
                    area_resample(&imgs[i], win, side, side, &mut buf);
                    owner.push((i, kept[i].len()));
                    kept[i].push(c);
                }
            }
        }
        let per_crop = 3 * side * side;
        for (chunk, owners) in buf.chunks(REFINE_BATCH * per_crop).zip(owner.chunks(REFINE_BATCH)) {
            let x = Tensor::from_slice(chunk, (owners.len(), 3, side, side), &self.device)?;
            let (reg, lm, prob) = net(&x)?;
            let reg = reg.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
            let prob = prob.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
            let lm = match lm {
                Some(t) => Some(t.to_device(&Device::Cpu)?.to_vec2::<f32>()?),
                None => None,
            };
            for (k, &(i, j)) in owners.iter().enumerate() {
                let c = &mut kept[i][j];
                c.score = prob[k][1];
                c.reg = [reg[k][0], reg[k][1], reg[k][2], reg[k][3]];
                if let Some(lm) = &lm {
                    c.points = std::array::from_fn(|m| [lm[k][m], lm[k][m + 5]]);
                }
            }
        }
        Ok(kept)
    }
}

/// The pyramid's scales, in f64 as the reference's Python floats.
fn pyramid(h: usize, w: usize, cfg: &MtcnnConfig) -> Vec<f64> {
    let m = 12.0 / cfg.min_face;
    let mut minl = h.min(w) as f64 * m;
    let mut scale = m;
    let mut scales = Vec::new();
    while minl >= 12.0 {
        scales.push(scale);
        scale *= cfg.factor;
        minl *= cfg.factor;
    }
    scales
}

/// `generateBoundingBox`: P-Net's cells at or above `threshold` (stride 2, cell 12) of one
/// image's level, `prob` [2, oh, ow] and `reg` [4, oh, ow].
fn proposals(prob: &[f32], reg: &[f32], oh: usize, ow: usize, s: f64, threshold: f32) -> Vec<Cand> {
    let sf = s as f32;
    let mut level = Vec::new();
    for yy in 0..oh {
        for xx in 0..ow {
            let p = prob[oh * ow + yy * ow + xx];
            if p >= threshold {
                let (bx, by) = (xx as f32, yy as f32);
                let b = [
                    ((2.0 * bx + 1.0) / sf).floor(),
                    ((2.0 * by + 1.0) / sf).floor(),
                    ((2.0 * bx + 12.0) / sf).floor(),
                    ((2.0 * by + 12.0) / sf).floor(),
                ];
                let r = std::array::from_fn(|k| reg[k * oh * ow + yy * ow + xx]);
                level.push(Cand { b, score: p, reg: r, points: [[0.0; 2]; 5] });
            }
        }
    }
    level
}
