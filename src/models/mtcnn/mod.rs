//! MTCNN face detection, as facenet-pytorch 2.6.0's `facenet_pytorch.models.mtcnn` (issue 18).
//!
//! - [`nets`]: P-Net, R-Net and O-Net with facenet-pytorch's layer names, read from the
//!   `pnet.pt` / `rnet.pt` / `onet.pt` its wheel ships under `facenet_pytorch/data/`.
//! - [`detect`]: the cascade of facenet-pytorch's `detect_face` on RGB images, batched across
//!   images as it does.
pub mod detect;
pub mod nets;

pub use detect::{Detection, Mtcnn, MtcnnConfig, RgbView, MIN_FACE};
pub use nets::{MtcnnError, ONet, PNet, RNet};
