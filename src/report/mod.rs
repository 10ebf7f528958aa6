//! The run report: JSON (stable schema), Markdown, and PNG figures.
pub mod figures;
pub mod json;
pub mod markdown;
