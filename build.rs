//! `#[sqlx::test]` embeds `migrations/` in the test binaries when they compile: a new or changed
//! migration must compile them again, or their databases would miss it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
