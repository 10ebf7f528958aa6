//! The run report: the result types stages hand to it, JSON (stable schema), Markdown, and PNG
//! figures; and the baseline files `rcaflow baseline` writes.
pub mod baseline;
pub mod cas;
pub mod figures;
pub mod json;
pub mod markdown;
pub mod results;

pub use results::Summary;
