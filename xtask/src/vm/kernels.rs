//! The matrix's kernels: Debian's cloud kernels fetched with apt, once,
//! into a cache outside the repository. Suites other than the machine's
//! come through a private sources list of the xtask's own (its own lists
//! and state under the cache), never the machine's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};

use crate::run;

/// Kernel packages and their unpacked trees.
pub const VM_CACHE: &str = "/var/cache/kat-vm";
/// Lists of another suite older than this are fetched again, so that
/// "the newest of sid" moves with sid.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where apt finds a kernel: the machine's own sources (Debian 12), or a
/// suite of Debian's through a private sources list of the xtask's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Machine,
    Bullseye,
    Sid,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Machine => "machine",
            Suite::Bullseye => "bullseye",
            Suite::Sid => "sid",
        }
    }
}

/// One kernel of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// What KAT_VM_KERNEL matches, and the cache's name for it.
    pub label: &'static str,
    suite: Suite,
    /// The package with the kernel image and config; None: the newest
    /// cloud kernel of the suite, looked up when its lists are fetched.
    package: Option<&'static str>,
}

/// Oldest first: Debian 11's 5.10 (no reset reasons, `sk_timer`, the
/// oldest verifier kat supports), Debian 12's 6.1 (no reset reasons) and
/// 6.12 (with), and the newest of Debian unstable.
pub const KERNELS: [Kernel; 4] = [
    Kernel {
        label: "5.10",
        suite: Suite::Bullseye,
        package: Some("linux-image-5.10.0-32-cloud-amd64-unsigned"),
    },
    Kernel {
        label: "6.1",
        suite: Suite::Machine,
        package: Some("linux-image-6.1.0-56-cloud-amd64-unsigned"),
    },
    Kernel {
        label: "6.12",
        suite: Suite::Machine,
        package: Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
    },
    Kernel {
        label: "sid",
        suite: Suite::Sid,
        package: None,
    },
];
/// The private apt of a suite: its sources list and lists under the
/// cache. The machine's own suite uses the machine's apt as it is.
fn apt(tool: &str, suite: Suite) -> Result<Command> {
    let mut cmd = Command::new(tool);
    cmd.arg("-q");
    if suite == Suite::Machine {
        return Ok(cmd);
    }
    let dir = Path::new(VM_CACHE).join("apt").join(suite.name());
    let lists = dir.join("lists");
    fs::create_dir_all(lists.join("partial"))?;
    fs::create_dir_all(dir.join("cache/archives/partial"))?;
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian {} main\n",
            suite.name()
        ),
    )?;
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    cmd.arg("-o")
        .arg(opt("Dir::Etc::sourcelist", &sources))
        .args(["-o", "Dir::Etc::sourceparts=-"])
        .arg("-o")
        .arg(opt("Dir::State::Lists", &lists))
        .arg("-o")
        .arg(opt("Dir::Cache", &dir.join("cache")));
    Ok(cmd)
}

/// Fetches the suite's package lists when they are missing or stale (the
/// machine's own are fetched only when a download fails).
fn update_lists(suite: Suite) -> Result<()> {
    if suite == Suite::Machine {
        return Ok(());
    }
    // apt leaves a list's file as it was when the server's is unchanged:
    // a stamp of our own says when the lists were last fetched.
    let stamp = Path::new(VM_CACHE)
        .join("apt")
        .join(suite.name())
        .join("updated");
    let fresh = fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < LISTS_MAX_AGE);
    if !fresh {
        eprintln!("xtask: fetching Debian {}'s package lists", suite.name());
        run(apt("apt-get", suite)?.arg("update"))?;
        fs::write(&stamp, "")?;
    }
    Ok(())
}

/// The kernel ABI name (`7.2.13+deb14-cloud-amd64`) that a suite's
/// `linux-image-cloud-amd64` depends on, from `apt-cache show`'s text.
fn newest_abi(show: &str) -> Option<String> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends: "))?;
    depends
        .split([',', '|'])
        .map(str::trim)
        .filter_map(|d| d.split_whitespace().next()?.strip_prefix("linux-image-"))
        .find(|abi| abi.ends_with("-cloud-amd64"))
        .map(str::to_string)
}

/// Whether the suite has a package of this name.
fn has_package(suite: Suite, package: &str) -> Result<bool> {
    Ok(apt("apt-cache", suite)?
        .args(["show", package])
        .output()?
        .status
        .success())
}

/// The packages holding the kernel image, its config and its modules: one
/// `-unsigned` image package up to Debian 13; from 7.x, sid splits the
/// image (`linux-binary-*`) from the config (`linux-base-*`) and the
/// modules (`linux-modules-*`).
fn packages(k: &Kernel) -> Result<Vec<String>> {
    if let Some(p) = k.package {
        return Ok(vec![p.to_string()]);
    }
    update_lists(k.suite)?;
    let out = apt("apt-cache", k.suite)?
        .args(["show", "linux-image-cloud-amd64"])
        .output()?;
    let abi = newest_abi(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!(
            "Debian {} lists no linux-image-cloud-amd64 with a kernel",
            k.suite.name()
        )
    })?;
    let split = [
        format!("linux-binary-{abi}"),
        format!("linux-base-{abi}"),
        format!("linux-modules-{abi}"),
    ];
    if has_package(k.suite, &split[0])? {
        Ok(split.to_vec())
    } else {
        Ok(vec![format!("linux-image-{abi}-unsigned")])
    }
}

/// The package's .deb in the cache, downloaded if missing.
fn deb(suite: Suite, package: &str) -> Result<PathBuf> {
    let cache = Path::new(VM_CACHE);
    let prefix = format!("{package}_");
    let find = || {
        fs::read_dir(cache).ok().and_then(|entries| {
            entries.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
        })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    eprintln!("xtask: downloading {package} (Debian {})", suite.name());
    update_lists(suite)?;
    let download = |cmd: &mut Command| -> Result<bool> {
        Ok(cmd
            .args(["download", package])
            .current_dir(cache)
            .status()?
            .success())
    };
    if !download(&mut apt("apt-get", suite)?)? {
        // The machine's lists may predate the package; another suite's
        // were just fetched.
        if suite != Suite::Machine {
            bail!(
                "apt-get download {package} from Debian {} failed",
                suite.name()
            );
        }
        run(apt("apt-get", suite)?.arg("update"))?;
        run(apt("apt-get", suite)?
            .args(["download", package])
            .current_dir(cache))?;
    }
    find().with_context(|| format!("{package} did not download"))
}

/// A kernel unpacked in the cache.
pub struct Unpacked {
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// `uname -r` of the kernel.
    pub release: String,
    /// Its modules (`lib/modules/R` or `usr/lib/modules/R`).
    pub modules: PathBuf,
}

/// Where an unpacked tree keeps the image and config: `boot/vmlinuz-R`
/// and `boot/config-R`, or (sid's split packages) `usr/lib/modules/R/`.
fn find_in(tree: &Path) -> Result<Unpacked> {
    let boot = tree.join("boot");
    if let Ok(entries) = fs::read_dir(&boot) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(release) = name.strip_prefix("vmlinuz-") {
                let modules = ["lib/modules", "usr/lib/modules"]
                    .map(|d| tree.join(d).join(release))
                    .into_iter()
                    .find(|d| d.is_dir())
                    .unwrap_or_else(|| tree.join("lib/modules").join(release));
                return Ok(Unpacked {
                    vmlinuz: e.path(),
                    config: boot.join(format!("config-{release}")),
                    release: release.to_string(),
                    modules,
                });
            }
        }
    }
    let modules = tree.join("usr/lib/modules");
    if let Ok(entries) = fs::read_dir(&modules) {
        for e in entries.flatten() {
            if e.path().join("vmlinuz").is_file() {
                return Ok(Unpacked {
                    vmlinuz: e.path().join("vmlinuz"),
                    config: e.path().join("config"),
                    release: e.file_name().to_string_lossy().into_owned(),
                    modules: e.path(),
                });
            }
        }
    }
    bail!("no kernel image in {}", tree.display())
}

/// The kernel, downloaded and unpacked once.
pub fn fetch(k: &Kernel) -> Result<Unpacked> {
    fs::create_dir_all(VM_CACHE)?;
    let packages = packages(k)?;
    let tree = Path::new(VM_CACHE).join(&packages[0]);
    for package in &packages {
        // A tree unpacked before a package joined the list gets it too.
        let unpacked = tree.join(format!(".unpacked-{package}"));
        if !unpacked.exists() {
            let deb = deb(k.suite, package)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
            fs::write(&unpacked, "")?;
        }
    }
    let unpacked = find_in(&tree)?;
    if !unpacked.config.is_file() {
        bail!("{} has no kernel config", tree.display());
    }
    Ok(unpacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_abi_is_read_from_the_meta_package() {
        // apt-cache show linux-image-cloud-amd64, sid, 2026-12-03.
        let show = "Package: linux-image-cloud-amd64\n\
Source: linux-signed-amd64 (7.2.13+1)\n\
Version: 7.2.13-1\n\
Depends: linux-base-cloud-amd64 (= 7.2.13-1), linux-image-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)\n\
Description: Linux for x86-64 cloud (meta-package)\n";
        assert_eq!(
            newest_abi(show).as_deref(),
            Some("7.2.13+deb14-cloud-amd64")
        );
        assert_eq!(newest_abi("Package: x\n"), None);
    }

    #[test]
    fn both_layouts_of_an_unpacked_kernel_are_found() {
        let tmp = std::env::temp_dir().join(format!("kat-xtask-kernels-{}", std::process::id()));
        let old = tmp.join("old");
        fs::create_dir_all(old.join("boot")).expect("mkdir");
        fs::write(old.join("boot/vmlinuz-5.10.0-32-cloud-amd64"), "").expect("write");
        fs::write(old.join("boot/config-5.10.0-32-cloud-amd64"), "").expect("write");
        let found = find_in(&old).expect("old layout");
        assert_eq!(found.release, "5.10.0-32-cloud-amd64");
        assert!(found.config.ends_with("boot/config-5.10.0-32-cloud-amd64"));
        assert_eq!(found.modules, old.join("lib/modules/5.10.0-32-cloud-amd64"));

        let split = tmp.join("split");
        let dir = split.join("usr/lib/modules/7.2.13+deb14-cloud-amd64");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("vmlinuz"), "").expect("write");
        let found = find_in(&split).expect("split layout");
        assert_eq!(found.release, "7.2.13+deb14-cloud-amd64");
        assert_eq!(found.config, dir.join("config"));
        assert_eq!(found.modules, dir);

        assert!(find_in(&tmp.join("none")).is_err());
        fs::remove_dir_all(&tmp).expect("cleanup");
    }
}
