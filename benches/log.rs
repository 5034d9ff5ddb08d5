//! Log store benchmark (placeholder, replaced below).
fn main() {}
