pub mod placement;
pub mod url;
