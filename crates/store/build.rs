//! `sqlx::migrate!` embeds `migrations/` when this crate compiles: a new or changed migration must
//! compile it again, or a daemon built before it would never apply it.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
