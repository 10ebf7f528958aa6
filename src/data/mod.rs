//! Images and datasets on disk: image folders (list, decode, write PNG), the synthetic identity
//! set (`synth`), `.npy`/`.npz` encoding (`npy`), preparation of raw photo folders (`prep`; detected faces, their CSV and drawings: `faces`,
//! `face_drawing`), and the seeded generator both use.
//! Pure functions over files; no actors.

pub mod face_drawing;
pub mod faces;
pub mod fid_stats;
pub mod image_folder;
pub mod npy;
pub mod prep;
pub mod raster;
pub mod rng;
pub mod synth;
