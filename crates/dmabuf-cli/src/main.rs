//! The `dmabuf` command.
fn main() {}
