//! Where the workspace's binaries are, for tests that run them as separate processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .expect("tests/support sits two levels below the workspace root")
            .to_path_buf()
    })
}

/// Builds every binary of the workspace (`cargo build --bins`) once per test process and
/// returns the directory holding them: `$CARGO_TARGET_DIR/debug`, or `target/debug`.
///
/// Panics when the build fails: a test that runs binaries cannot go on without them.
pub fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--bins", "--quiet"])
            .current_dir(root)
            .status()
            .expect("running cargo build --bins");
        assert!(status.success(), "cargo build --bins failed: {status}");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug")
    })
}

/// The path of the workspace binary `name`, built by [`binaries`].
pub fn binary(name: &str) -> PathBuf {
    binaries().join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_the_workspace() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"), "{manifest}");
        assert!(workspace_root().join("tests/support/Cargo.toml").is_file());
    }
}
