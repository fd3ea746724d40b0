//! The committed contract artifacts are exactly what the pinned compiler makes of the sources.

use std::process::Command;

#[test]
fn committed_artifacts_match_a_fresh_compile() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{repo}/scripts/contracts"))
        .arg("check")
        .current_dir(repo)
        .output()
        .expect("run scripts/contracts check");
    assert!(
        out.status.success(),
        "artifacts differ from a fresh compile (run scripts/contracts build):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
