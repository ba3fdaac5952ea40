//! A journal that cannot be written never stops `kat record` (root): on a
//! small tmpfs filled to the last byte, then in a directory made read-only
//! (kat has no CAP_DAC_OVERRIDE once attached), kat keeps tracing, tells
//! what happened once, counts every record it could not write (`lost`
//! lines of kind `journal`, its last line) and writes again as soon as it
//! can.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kat_scenarios::netns::Lab;
use kat_scenarios::{keepalive, Kat, KatCmd, Net};
use serde_json::Value;

const PORT: u16 = 6945;

/// A tmpfs of `size` mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("mount");
        assert!(status.success(), "mount tmpfs: {status}");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the file system has no byte left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    // The last partial block, byte by byte.
    while f.write_all(&[0]).is_ok() {}
}

fn lines(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("journal")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("read")
                .lines()
                .map(|l| serde_json::from_str(l).expect("a whole JSON line"))
                .collect::<Vec<Value>>()
        })
        .collect()
}

#[test]
fn a_full_disk_and_a_read_only_directory_are_survived_and_counted() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let parent = tempfile::tempdir().expect("tempdir");
    let _tmpfs = Tmpfs::mount(parent.path(), "256k");
    let dir = parent.path().join("journal");
    let lab = Lab::new();
    let kat_cmd = KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    };
    let port = PORT.to_string();
    let mut kat = Kat::record(
        &kat_cmd,
        &dir,
        &[
            "--stdout",
            "--port",
            &port,
            "--file-size",
            "4KiB",
            "--max-size",
            "64KiB",
        ],
    );
    // Ten connections probing every second: a few records a second.
    let server = std::net::SocketAddr::new(lab.server_addr(false), PORT);
    let listener = lab.listen(server);
    let _conns: Vec<_> = (0..10)
        .map(|_| {
            let client = lab.connect(server, Box::new(|s| keepalive(s, 1, 1, 3)));
            (client, listener.accept().expect("accept"))
        })
        .collect();
    kat.collect_for(Duration::from_secs(3));

    let filler = parent.path().join("filler");
    fill(&filler);
    kat.collect_for(Duration::from_secs(4));
    std::fs::remove_file(&filler).expect("rm filler");
    kat.collect_for(Duration::from_secs(3));
    let resumed = kat_scenarios::kat::now();
    kat.collect_for(Duration::from_secs(3));

    // Rotation needs a new file in the directory: refused.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    kat.collect_for(Duration::from_secs(5));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    kat.collect_for(Duration::from_secs(3));

    let (status, seen, stderr) = kat.stop();
    assert!(status.success(), "kat exited with {status}: {stderr:?}");
    let told = stderr.join("\n");
    assert!(told.contains("No space left on device"), "{told}");
    assert!(told.contains("Permission denied"), "{told}");
    assert_eq!(
        told.matches("counted as unwritten").count(),
        2,
        "each trouble told once: {told}"
    );
    assert_eq!(
        told.matches("records could not be written").count(),
        2,
        "{told}"
    );

    let journal = lines(&dir);
    let lost: Vec<u64> = journal
        .iter()
        .filter(|l| l["type"] == "lost")
        .filter_map(|l| l["by_kind"]["journal"].as_u64())
        .collect();
    let last = *lost.last().expect("a lost line of kind journal");
    assert!(last > 0);
    assert!(
        told.contains(&format!("{last} records unwritten")),
        "the journal's last count is kat's: {last} in {told}"
    );
    // Every record kat saw is in the journal or counted.
    let events = |v: &[Value]| v.iter().filter(|l| l["type"] == "probe_answered").count();
    let written = events(&journal) as u64;
    assert!(
        written < events(&seen) as u64,
        "some records could not be written"
    );
    let after: Vec<&Value> = journal
        .iter()
        .filter(|l| l["type"] == "probe_answered" && kat_scenarios::kat::ts(l) > resumed)
        .collect();
    assert!(!after.is_empty(), "written again once the disk had room");
}
