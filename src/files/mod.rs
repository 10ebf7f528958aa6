//! Writing files safely, shared by every layer that writes (a bottom module: it imports nothing
//! from the rest of rcaflow except [`crate::fault`], another bottom module):
//! - [`atomic`]: the one atomic writer (exclusive temporary, every I/O error surfaced, rename,
//!   fsync) and the start-up cleanup of its own temporaries;
//! - [`name`]: the check that a class name is one harmless path component;
//! - [`png`]: PNG encoding in memory, so a PNG reaches disk only through [`atomic`].

pub mod atomic;
pub mod name;
pub mod png;
