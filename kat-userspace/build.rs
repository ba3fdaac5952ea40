use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The eBPF crate is built by aya-build, not by cargo's dependency graph:
    // rebuild when the records it shares with us change too.
    println!("cargo:rerun-if-changed=../kat-common/src");
    let metadata_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&metadata_dir)
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
