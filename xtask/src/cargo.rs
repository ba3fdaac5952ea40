//! Where things are, as cargo says: the workspace and target directories
//! from `cargo metadata`, and each binary a build made from its artifact
//! messages. Guessed `target/...` paths break under a CARGO_TARGET_DIR, a
//! `--target` or a run from a subdirectory.

use std::collections::BTreeMap;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use cargo_metadata::{Message, MetadataCommand};

/// The cargo running xtask, so every build shares its toolchain.
pub fn command() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The static (musl) target: kat as released (`cargo xtask dist`) and the
/// VM matrix's scenario runner.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    /// kat's version (kat-userspace's, the workspace's).
    pub kat_version: String,
}

pub fn workspace() -> Result<Workspace> {
    // Reads $CARGO itself, as `command` does.
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let kat = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "kat-userspace")
        .context("no kat-userspace package in the workspace")?;
    Ok(Workspace {
        root: metadata.workspace_root.clone().into_std_path_buf(),
        target_dir: metadata.target_directory.clone().into_std_path_buf(),
        kat_version: kat.version.to_string(),
    })
}

/// The binaries one build made: name → executable.
pub struct Built(BTreeMap<String, PathBuf>);

impl Built {
    pub fn bin(&self, name: &str) -> Result<&Path> {
        self.0
            .get(name)
            .map(PathBuf::as_path)
            .with_context(|| format!("cargo built no binary {name}"))
    }
}

/// `cargo build ARGS`, failing when cargo fails. Diagnostics still reach
/// the terminal: cargo renders them on stderr.
pub fn build(args: &[&str]) -> Result<Built> {
    let mut cmd = command();
    cmd.arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut stdout = BufReader::new(child.stdout.take().context("cargo build stdout")?);
    let mut bins = BTreeMap::new();
    let mut unreadable = None;
    for message in Message::parse_stream(&mut stdout) {
        match message {
            Ok(Message::CompilerArtifact(artifact))
                if artifact.target.is_bin() || artifact.target.is_example() =>
            {
                if let Some(executable) = artifact.executable {
                    bins.insert(artifact.target.name, executable.into_std_path_buf());
                }
            }
            Ok(Message::TextLine(line)) => println!("{line}"),
            Ok(_) => {}
            Err(e) => {
                unreadable = Some(e);
                break;
            }
        }
    }
    // Drained, so cargo never blocks on a full pipe and its exit status is
    // what decides.
    let drained = io::copy(&mut stdout, &mut io::sink());
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    if let Some(e) = unreadable {
        return Err(e).context("reading cargo build's messages");
    }
    drained.context("reading cargo build's messages")?;
    Ok(Built(bins))
}

/// Release builds of `bins` from `packages`, static (musl): they run on
/// any x86_64 Linux, in an initramfs or an empty image alike.
pub fn build_static(packages: &[&str], bins: &[&str]) -> Result<Built> {
    let mut args = vec!["--release", "--target", MUSL];
    for package in packages {
        args.extend(["--package", package]);
    }
    for bin in bins {
        args.extend(["--bin", bin]);
    }
    build(&args)
}
