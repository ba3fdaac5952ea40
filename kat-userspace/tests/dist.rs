//! The Debian package `cargo xtask dist` builds, installed as the README
//! says (`apt install ./kat_<version>_amd64.deb`) into a fresh Debian 12
//! root made for the test (`debootstrap --variant=minbase`, with systemd,
//! man-db and bash-completion, the tools the checks use), then used in it
//! (chrooted, with the host's /proc, /sys and /dev):
//!
//! - dpkg has it installed, without dependencies; `/var/lib/kat` is
//!   there, root's, 0700; `systemctl is-enabled` says the unit is disabled;
//! - `kat --version` names the version, the commit and the build date;
//!   `kat` alone says what to try first and exits 2;
//! - `kat doctor` says kat can run here and exits 0;
//! - `man -l` renders every page, one per subcommand of this tree's CLI,
//!   each with its name and EXIT STATUS, kat(1) with the death reasons,
//!   and `man kat` finds kat(1) by name;
//! - the installed unit passes `systemd-analyze verify`;
//! - bash-completion finds the installed script by itself and completes
//!   `kat tr<TAB>` to `trace`; the zsh and fish scripts are where those
//!   shells look;
//! - `apt remove` takes the binary and the unit away.
//!
//! It needs the package (`KAT_DEB`, set by `cargo xtask test` once it has
//! built it), root (debootstrap, chroot, kat doctor), debootstrap and
//! unshare (`cargo xtask setup` installs debootstrap), and the Debian
//! mirror (packages are cached between runs). Without one of them it
//! skips, saying why; under `CI=true` that is a failure.

use std::borrow::BorrowMut;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::process::{Command, Output};

use clap::CommandFactory as _;
use kat_scenarios::{output_text as text, skip};
use kat_userspace::cli::Cli;
use kat_userspace::event::Reason;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// debootstrap's downloads, kept for the next run (outside the repository,
/// as the VM matrix's kernels are).
const CACHE: &str = "/var/cache/kat-dist/debootstrap";

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// A command run to its end (a `Command` or a `&mut Command`).
fn output(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn succeeds(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    let o = output(&mut *cmd);
    assert!(o.status.success(), "{cmd:?}\n{}", text(&o));
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A Debian root made for this test, removed with it.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn debootstrap() -> Root {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(CACHE).expect("debootstrap's cache directory");
        succeeds(
            Command::new("debootstrap")
                .args([
                    "--variant=minbase",
                    "--include=systemd,man-db,bash-completion",
                    &format!("--cache-dir={CACHE}"),
                    SUITE,
                ])
                .arg(dir.path())
                .arg(MIRROR),
        );
        Root { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    /// `args` run chrooted in the root, with the host's /proc, /sys and
    /// /dev mounted in a mount namespace of their own: they go when the
    /// command ends, however the test ends.
    fn chroot(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"root="$1"; shift
mount -t proc proc "$root/proc" && mount --rbind /sys "$root/sys" && mount --rbind /dev "$root/dev" &&
exec chroot "$root" "$@""#,
            )
            .arg("sh")
            .arg(self.dir.path())
            .args(args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }
}

/// The pages a package of this tree's CLI holds: kat.1 and one per
/// visible subcommand.
fn expected_pages() -> Vec<String> {
    let mut pages = vec!["kat.1.gz".to_string()];
    pages.extend(
        Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("kat-{}.1.gz", s.get_name())),
    );
    pages.sort();
    pages
}

#[test]
fn the_package_installs_into_a_fresh_debian_and_everything_in_it_works() {
    let Some(deb) = std::env::var_os("KAT_DEB").map(PathBuf::from) else {
        return skip("KAT_DEB is not set (`cargo xtask test` builds the package and sets it)");
    };
    assert!(deb.is_file(), "KAT_DEB={} is no file", deb.display());
    if !kat_scenarios::root_or_skip() {
        return;
    }
    for tool in ["debootstrap", "unshare"] {
        if !on_path(tool) {
            return skip(&format!(
                "{tool} is missing (`cargo xtask setup` installs it)"
            ));
        }
    }
    let name = deb
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let version = name
        .strip_prefix("kat_")
        .and_then(|n| n.strip_suffix("_amd64.deb"))
        .unwrap_or_else(|| panic!("{name} is named kat_<version>_amd64.deb"))
        .to_string();

    let root = Root::debootstrap();
    std::fs::copy(&deb, root.path(&format!("tmp/{name}"))).expect("copy the package in");
    // The README's command.
    succeeds(root.chroot(&["sh", "-c", "cd /tmp && apt install -y ./kat_*.deb"]));

    // dpkg has it; the directory and the unit are as the package says.
    let status = stdout(&succeeds(root.chroot(&["dpkg", "-s", "kat"])));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains(&format!("Version: {version}\n")),
        "{status}"
    );
    assert!(!status.contains("Depends:"), "a static binary: {status}");
    let state = std::fs::metadata(root.path("/var/lib/kat")).expect("/var/lib/kat");
    assert!(state.is_dir());
    assert_eq!(state.permissions().mode() & 0o7777, 0o700);
    assert_eq!((state.uid(), state.gid()), (0, 0));
    let unit = root.path("/lib/systemd/system/kat-record.service");
    assert!(unit.is_file());
    let enabled = output(root.chroot(&["systemctl", "is-enabled", "kat-record.service"]));
    assert_eq!(stdout(&enabled).trim(), "disabled", "{}", text(&enabled));

    // kat --version: version (Cargo's form of the package's: a `~`
    // there is a pre-release's `-`), commit, build date.
    let cargo_version = version.replacen('~', "-", 1);
    let v = stdout(&succeeds(root.chroot(&["kat", "--version"])));
    let v = v.trim();
    let rest = v
        .strip_prefix(&format!("kat {cargo_version} (commit "))
        .unwrap_or_else(|| panic!("version {cargo_version} and a commit: {v}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("commit and build date: {v}"));
    assert!(
        commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "a git commit (dist builds in a checkout): {v}"
    );
    assert!(
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(),
        "{v}"
    );

    // kat alone: what to try first, exit 2 (usage).
    let alone = output(root.chroot(&["kat"]));
    let err = String::from_utf8_lossy(&alone.stderr);
    assert_eq!(alone.status.code(), Some(2), "{}", text(&alone));
    assert!(
        err.contains("kat doctor") && err.contains("sudo kat top"),
        "{err}"
    );

    // kat doctor as root: this kernel runs kat.
    let doctor = succeeds(root.chroot(&["kat", "doctor"]));
    assert!(
        stdout(&doctor).contains("kat can run here."),
        "{}",
        text(&doctor)
    );

    // Every page renders, and there is one per subcommand.
    let files = stdout(&succeeds(root.chroot(&["dpkg", "-L", "kat"])));
    let mut pages: Vec<String> = files
        .lines()
        .filter_map(|f| f.strip_prefix("/usr/share/man/man1/"))
        .map(String::from)
        .collect();
    pages.sort();
    assert_eq!(pages, expected_pages());
    for page in &pages {
        let path = format!("/usr/share/man/man1/{page}");
        let rendered = succeeds(root.chroot(&["man", "-l", &path]).env("MANWIDTH", "80"));
        let shown = stdout(&rendered);
        let command = page.trim_end_matches(".1.gz");
        assert!(shown.contains(command), "{page} names {command}:\n{shown}");
        assert!(shown.contains("EXIT STATUS"), "{page}:\n{shown}");
        let err = String::from_utf8_lossy(&rendered.stderr);
        assert!(err.trim().is_empty(), "{page}: {err}");
        if page == "kat.1.gz" {
            assert!(shown.contains("DEATH REASONS"), "{shown}");
            for reason in Reason::ALL {
                assert!(shown.contains(reason.name()), "{}:\n{shown}", reason.name());
            }
        }
    }
    let by_name = stdout(&succeeds(
        root.chroot(&["man", "kat"]).env("MANWIDTH", "80"),
    ));
    assert!(by_name.contains("DEATH REASONS"), "man kat:\n{by_name}");

    // verify exits 0 on unknown keys and bad values, saying so on stderr:
    // any line about the unit is a failure. It checks that ExecStart's
    // binary is there too.
    let verify = output(root.chroot(&[
        "systemd-analyze",
        "verify",
        "/lib/systemd/system/kat-record.service",
    ]));
    let err = String::from_utf8_lossy(&verify.stderr);
    let about: Vec<&str> = err.lines().filter(|l| l.contains("kat-record")).collect();
    assert!(
        verify.status.success() && about.is_empty(),
        "{}",
        text(&verify)
    );

    // bash-completion loads the script from where the package put it, as
    // on the first <TAB>, and completes.
    let script = r#"source /usr/share/bash-completion/bash_completion
__load_completion kat || exit 3
COMP_WORDS=(kat tr); COMP_CWORD=1; COMP_LINE="kat tr"; COMP_POINT=${#COMP_LINE}
_kat kat tr kat
printf '%s\n' "${COMPREPLY[@]}"
COMP_WORDS=(kat ""); COMP_CWORD=1; COMP_LINE="kat "; COMP_POINT=${#COMP_LINE}
_kat kat "" kat
printf 'all %s\n' "${COMPREPLY[@]}""#;
    let out = stdout(&succeeds(root.chroot(&["bash", "--norc", "-c", script])));
    let lines: Vec<&str> = out.lines().collect();
    let tr: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("all "))
        .collect();
    assert_eq!(tr, ["trace"], "kat tr<TAB>: {out}");
    assert!(!lines.contains(&"all man"), "the hidden man command: {out}");
    assert!(lines.contains(&"all completions"), "{out}");
    let zsh = std::fs::read_to_string(root.path("/usr/share/zsh/vendor-completions/_kat"))
        .expect("zsh completion");
    assert!(zsh.starts_with("#compdef kat"), "{zsh}");
    let fish = std::fs::read_to_string(root.path("/usr/share/fish/vendor_completions.d/kat.fish"))
        .expect("fish completion");
    assert!(fish.contains("complete -c kat"), "{fish}");

    // And it goes away.
    succeeds(root.chroot(&["apt", "remove", "-y", "kat"]));
    assert!(!root.path("/usr/bin/kat").exists());
    assert!(!unit.exists());
}
