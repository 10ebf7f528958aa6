//! Pure metric maths: no threads, no I/O, so each formula is tested on its own.
pub mod diversity;
pub mod rca;
