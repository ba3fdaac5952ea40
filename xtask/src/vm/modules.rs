//! The kernel modules a VM needs for the NAT lab (veth, nftables'
//! masquerade, conntrack and its netlink events) and for sock_diag's TCP
//! dumps (which a host loads on demand): Debian's cloud kernels build them
//! as modules. Each is found in the unpacked kernel, its
//! dependencies read from its own `.modinfo`, and the lot copied
//! uncompressed in load order, for the VM's init to `insmod` one by one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// What the VMs load; their dependencies come with them.
pub const NEEDED: [&str; 6] = [
    "tcp_diag",
    "veth",
    "nft_chain_nat",
    "nft_masq",
    "nft_ct",
    "nf_conntrack_netlink",
];

/// A module's name as the kernel knows it: `nf-nat` and `nf_nat` are one.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The module's name from its file name (`veth.ko`, `veth.ko.xz`).
fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_string_lossy().into_owned();
    let stem = name.split(".ko").next()?;
    (name.len() > stem.len()).then(|| canonical(stem))
}

/// Every module file under `dir`, by name.
fn index(dir: &Path, found: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index(&path, found)?;
        } else if let Some(name) = module_name(&path) {
            found.insert(name, path);
        }
    }
    Ok(())
}

/// The module's ELF: as it is (`.ko`) or unpacked (`.ko.xz`, Debian's
/// packing from 6.12); any other packing is an error, not bytes `insmod`
/// would refuse in the VM.
fn read(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return fs::read(path).with_context(|| name.to_string());
    }
    if !name.ends_with(".ko.xz") {
        bail!("{name}: a module packing the VM build does not read");
    }
    let out = Command::new("xz")
        .arg("-dc")
        .arg(path)
        .output()
        .context("cannot run xz (xz-utils)")?;
    if !out.status.success() {
        bail!("xz -dc {name} failed");
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo`: NUL-separated
/// `key=value` strings.
fn depends(elf: &[u8]) -> Vec<String> {
    elf.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(canonical)
                .collect()
        })
        .unwrap_or_default()
}

/// The modules under `dir` that `wanted` needs, each after its
/// dependencies: (name, uncompressed ELF). A name with no file is built
/// into the kernel and skipped.
pub fn resolve(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = BTreeMap::new();
    index(dir, &mut files)?;
    let mut order = Vec::new();
    for name in wanted {
        visit(&canonical(name), &files, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    order: &mut Vec<(String, Vec<u8>)>,
) -> Result<()> {
    if order.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let Some(path) = files.get(name) else {
        return Ok(());
    };
    let elf = read(path)?;
    for dep in depends(&elf) {
        visit(&dep, files, order)?;
    }
    order.push((name.to_string(), elf));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_files_packed_or_not() {
        assert_eq!(
            module_name(Path::new("a/nf_nat.ko.xz")).as_deref(),
            Some("nf_nat")
        );
        assert_eq!(
            module_name(Path::new("nft-masq.ko")).as_deref(),
            Some("nft_masq")
        );
        assert_eq!(module_name(Path::new("modules.dep")), None);
    }

    #[test]
    fn dependencies_are_read_from_modinfo() {
        let elf = b"\x7fELF\0license=GPL\0depends=nf_conntrack,nf-defrag-ipv4\0vermagic=6.1\0";
        assert_eq!(depends(elf), ["nf_conntrack", "nf_defrag_ipv4"]);
        assert!(depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn packed_modules_are_unpacked_and_unknown_packings_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("veth.ko");
        fs::write(&plain, b"\0depends=\0").expect("write");
        let xz = Command::new("xz")
            .args(["-k", "-c"])
            .arg(&plain)
            .output()
            .expect("xz");
        let packed = dir.path().join("veth.ko.xz");
        fs::write(&packed, xz.stdout).expect("write");
        assert_eq!(read(&packed).expect("xz"), b"\0depends=\0");
        assert_eq!(read(&plain).expect("plain"), b"\0depends=\0");
        let zst = dir.path().join("veth.ko.zst");
        fs::write(&zst, b"?").expect("write");
        assert!(read(&zst).is_err());
    }

    #[test]
    fn each_module_comes_after_what_it_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, deps: &str| {
            let path = dir.path().join(format!("{name}.ko"));
            fs::write(path, format!("\0depends={deps}\0")).expect("write");
        };
        write("nft_masq", "nf_tables,nf_nat");
        write("nf_nat", "nf_conntrack");
        write("nf_conntrack", "");
        write("nf_tables", "");
        write("veth", "");
        let order: Vec<String> = resolve(dir.path(), &["nft_masq", "veth", "nf-nat"])
            .expect("resolve")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            order,
            ["nf_tables", "nf_conntrack", "nf_nat", "nft_masq", "veth"]
        );
    }
}
