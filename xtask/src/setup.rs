//! Build and test prerequisites, installed only when missing.

use std::process::Command;

use anyhow::Result;

use crate::run;

/// Debian packages: LLVM 22 for bpf-linker; iproute2 and nftables for the
/// kernel tests' lab namespaces; tmux for the dashboard's end-to-end test;
/// QEMU, busybox and cpio for the VM matrix; a Prometheus server for the
/// metrics test; nginx, wrk and time (for `/usr/bin/time`) for `cargo
/// xtask bench`; debootstrap for the package's install test
/// (kat-userspace/tests/dist.rs: the root it makes has man-db,
/// bash-completion and systemd of its own).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "nftables",
    "tmux",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // The VM kernels' modules come packed as .ko.xz from 6.12 on.
    "xz-utils",
    "prometheus",
    "nginx-light",
    "wrk",
    "time",
    "debootstrap",
];

/// The bpf-linker release known to build against LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_src() -> Result<()> {
    let has = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"));
    if has {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// Static builds: kat as released (`cargo xtask dist`) and the VM
/// matrix's scenario runner.
fn musl_target() -> Result<()> {
    let has = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("x86_64-unknown-linux-musl"));
    if has {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))
}

fn bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if current {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes, once)"
    );
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path)
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

/// The kubernetes-validate release the deployment test was written against.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// PyPI's kubernetes-validate, with the Kubernetes API's schemas inside:
/// the deployment test (kat-userspace/tests/deploy.rs) validates
/// deploy/kubernetes against them, offline.
fn kubernetes_validate() -> Result<()> {
    let has = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has {
        return Ok(());
    }
    eprintln!("xtask: installing kubernetes-validate (PyPI)");
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet", KUBERNETES_VALIDATE]))
}

pub fn all() -> Result<()> {
    apt_packages()?;
    kubernetes_validate()?;
    rust_src()?;
    musl_target()?;
    bpf_linker()
}
