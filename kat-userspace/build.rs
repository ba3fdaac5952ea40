use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The eBPF crate is built by aya-build, not by cargo's dependency graph:
    // rebuild when the records it shares with us change too.
    println!("cargo:rerun-if-changed=../kat-common/src");
    let metadata_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let manifest_dir = Path::new(&metadata_dir);
    version(manifest_dir)?;
    let root = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("kat-userspace has no parent directory"))?
        .join("kat-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "kat-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}

/// `git ARGS` in `dir`, its output trimmed; None when git or the
/// repository is missing (a source tarball) or says nothing.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// KAT_COMMIT and KAT_BUILD_DATE for `kat --version`.
fn version(dir: &Path) -> anyhow::Result<()> {
    let commit = git(dir, &["rev-parse", "--short", "HEAD"]);
    println!(
        "cargo:rustc-env=KAT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // A new commit or checkout moves HEAD or the branch it points at. Asked
    // of git, not guessed under .git: in a worktree .git is a file, HEAD is
    // the worktree's and the branch is in the main repository. Only files
    // that exist: cargo reruns the script every time for a missing one.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", &name],
        ) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    // Reproducible builds set SOURCE_DATE_EPOCH.
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => {
            let secs: i64 = epoch.trim().parse().with_context(|| {
                format!("SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds")
            })?;
            chrono::DateTime::from_timestamp(secs, 0)
                .ok_or_else(|| anyhow!("SOURCE_DATE_EPOCH={epoch} is out of range"))?
        }
        Err(_) => chrono::Utc::now(),
    };
    println!("cargo:rustc-env=KAT_BUILD_DATE={}", date.format("%Y-%m-%d"));
    Ok(())
}
