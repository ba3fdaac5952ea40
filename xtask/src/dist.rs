//! `cargo xtask dist`: kat as it is released. A static (musl) binary with
//! the eBPF programs embedded, and a Debian package of it with the man
//! pages and shell completions (made by that binary from its own clap
//! definitions), the systemd unit of `kat record` (disabled) and its
//! directory.
//!
//! Both land in `dist/` under cargo's target directory: `kat`, the tree
//! `kat_<version>_amd64/` the package is built from, and
//! `kat_<version>_amd64.deb`.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, run};

/// The unit, as it is in the repository: one file, no copy in the tree.
const UNIT: &str = "deploy/systemd/kat-record.service";

/// `kat record`'s default directory (kat-userspace/src/record.rs); the
/// unit's StateDirectory makes it 0700 too, the package has it from the
/// start.
const STATE_DIR: &str = "var/lib/kat";

const MAINTAINER: &str = "kat maintainers <maintainers@kat-project.invalid>";
const HOMEPAGE: &str = "https://github.com/kat-project/kat";

/// systemd reads unit files at start-up and on daemon-reload: the unit is
/// loaded (not enabled, not started) once installed, and forgotten once
/// removed. On a host not booted with systemd (a container, a chroot)
/// there is nothing to tell.
const POSTINST: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
";

/// An enabled and started `kat record` is stopped before its binary goes.
const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop kat-record.service || true
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
";

/// What `cargo xtask dist` made.
pub struct Dist {
    /// The static binary, also `usr/bin/kat` in the package.
    pub binary: PathBuf,
    pub deb: PathBuf,
}

/// Debian's form of a Cargo version: a pre-release sorts before its
/// release with `~` (`0.2.0~rc.1` < `0.2.0`), with `-` it would sort after
/// and mean a Debian revision.
fn debian_version(cargo: &str) -> String {
    cargo.replacen('-', "~", 1)
}

fn control(version: &str, installed_kib: u64) -> String {
    // No Depends: the binary is static.
    format!(
        "Package: kat
Version: {version}
Architecture: amd64
Maintainer: {MAINTAINER}
Installed-Size: {installed_kib}
Section: net
Priority: optional
Homepage: {HOMEPAGE}
Description: TCP keepalive tracer (eBPF)
 Which TCP connections are sending keepalive probes right now, does the
 peer answer, and why did each connection die: keepalive timeout, peer
 reset, retransmission timeout, local abort. kat trace prints every probe
 and abnormal death, kat top is a live dashboard, kat record keeps a
 journal on disk (the kat-record service, disabled until enabled) and
 kat report reads it. Needs a kernel with BTF; kat doctor says whether
 this one can run it.
"
    )
}

/// Kibibytes the files under `dir` take, as dpkg counts Installed-Size.
fn installed_kib(dir: &Path) -> Result<u64> {
    let mut kib = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        kib += if meta.is_dir() {
            installed_kib(&entry.path())?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(kib)
}

/// Writes `contents` to `root/rel` with `mode`, making the directories
/// above it 0755.
fn install(root: &Path, rel: &str, contents: &[u8], mode: u32) -> Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        make_dirs(root, parent)?;
    }
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `dir` and the directories between `root` and it, 0755 whatever the
/// umask: their modes are what the package installs.
fn make_dirs(root: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut d = dir;
    while d.starts_with(root) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    Ok(())
}

/// `kat ARGS`'s stdout.
fn kat_output(kat: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(kat)
        .args(args)
        .output()
        .with_context(|| format!("cannot start {}", kat.display()))?;
    if !out.status.success() {
        bail!(
            "kat {} failed: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The man pages `kat man` writes, gzipped as Debian ships them (`-n`: no
/// name or time stamp inside, so the same page gives the same file).
fn man_pages(kat: &Path, stage: &Path, work: &Path) -> Result<()> {
    if work.exists() {
        fs::remove_dir_all(work)?;
    }
    let listed = kat_output(kat, &["man", "--dir", &work.to_string_lossy()])?;
    let man1 = "usr/share/man/man1";
    make_dirs(stage, &stage.join(man1))?;
    let mut pages = 0;
    for page in String::from_utf8_lossy(&listed).lines() {
        let page = Path::new(page);
        let name = page.file_name().context("a man page without a name")?;
        let gz = Command::new("gzip").args(["-9nc"]).arg(page).output()?;
        if !gz.status.success() {
            bail!("gzip {} failed: {}", page.display(), gz.status);
        }
        let rel = format!("{man1}/{}.gz", name.to_string_lossy());
        install(stage, &rel, &gz.stdout, 0o644)?;
        pages += 1;
    }
    if pages == 0 {
        bail!("kat man wrote no page");
    }
    Ok(())
}

/// Builds the static binary and the package; prints where they are.
pub fn build() -> Result<Dist> {
    let ws = cargo::workspace()?;
    let version = debian_version(&ws.kat_version);
    let built = cargo::build_static(&["kat-userspace"], &["kat"])?;
    let out = ws.target_dir.join("dist");
    fs::create_dir_all(&out)?;

    let kat = fs::read(built.bin("kat")?)?;
    let binary = out.join("kat");
    install(&out, "kat", &kat, 0o755)?;

    let name = format!("kat_{version}_amd64");
    let stage = out.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    install(&stage, "usr/bin/kat", &kat, 0o755)?;
    man_pages(&binary, &stage, &out.join("man"))?;
    for (shell, rel) in [
        ("bash", "usr/share/bash-completion/completions/kat"),
        ("zsh", "usr/share/zsh/vendor-completions/_kat"),
        ("fish", "usr/share/fish/vendor_completions.d/kat.fish"),
    ] {
        install(
            &stage,
            rel,
            &kat_output(&binary, &["completions", shell])?,
            0o644,
        )?;
    }
    let unit = fs::read(ws.root.join(UNIT)).with_context(|| format!("reading {UNIT}"))?;
    install(
        &stage,
        "lib/systemd/system/kat-record.service",
        &unit,
        0o644,
    )?;
    let state = stage.join(STATE_DIR);
    make_dirs(&stage, &state)?;
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700))?;

    // No conffiles: nothing goes under /etc (a unit in /lib/systemd/system
    // is the package's; an administrator overrides it in /etc/systemd).
    let kib = installed_kib(&stage)?;
    install(
        &stage,
        "DEBIAN/control",
        control(&version, kib).as_bytes(),
        0o644,
    )?;
    install(&stage, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    install(&stage, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    install(&stage, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;

    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    println!("binary: {}", binary.display());
    println!("package: {}", deb.display());
    Ok(Dist { binary, deb })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_sort_pre_releases_first() {
        assert_eq!(debian_version("0.1.0"), "0.1.0");
        assert_eq!(debian_version("0.2.0-rc.1"), "0.2.0~rc.1");
        assert_eq!(debian_version("1.0.0-alpha-2"), "1.0.0~alpha-2");
    }

    #[test]
    fn control_has_the_fields_dpkg_needs_and_no_libc() {
        let control = control("0.1.0", 12345);
        for field in [
            "Package: kat\n",
            "Version: 0.1.0\n",
            "Architecture: amd64\n",
            "Installed-Size: 12345\n",
            "Section: net\n",
            "Priority: optional\n",
        ] {
            assert!(control.contains(field), "{field}");
        }
        assert!(!control.contains("Depends"), "a static binary");
        // Continuation lines of the description start with a space, and
        // none is empty (an empty one ends the paragraph).
        let description: Vec<&str> = control
            .lines()
            .skip_while(|l| !l.starts_with("Description:"))
            .skip(1)
            .collect();
        assert!(!description.is_empty());
        assert!(description
            .iter()
            .all(|l| l.starts_with(' ') && l.len() > 1));
    }
}
