//! Pure metric maths: no threads, no I/O, so each formula is tested on its own.
pub mod diversity;
pub mod fid;
pub mod inception_score;
pub mod kid;
pub mod prc;
pub mod rca;
