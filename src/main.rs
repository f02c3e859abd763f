//! The wspush server binary: CLI and start-up only.
fn main() {}
