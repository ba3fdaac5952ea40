//! Attribution on the running kernel (root): this test process moves
//! itself into cgroups named as the kubelet and containerd name them, then
//! as systemd names a service, and opens a keepalive connection in each.
//! `kat trace` must name the pod, namespace and container (from a
//! containerd bundle written as the node's runtime would), then the unit;
//! `kat report --by` must group the recorded deaths by them. One test in
//! its own binary: moving the process moves every thread of it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kat_scenarios::kat::{self, Kat};
use kat_scenarios::net::keepalive;
use kat_scenarios::KatCmd;
use serde_json::Value;
use socket2::{Domain, Socket, Type};

const POD_PORT: u16 = 6871;
const UNIT_PORT: u16 = 6873;
const POD_UID: &str = "7c0ffee0-1d2e-4f3a-8b4c-5d6e7f8a9b0c";
const CONTAINER_ID: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
const UNIT: &str = "kat-attribution-test.service";

/// Where the unified (v2) cgroup hierarchy is mounted.
fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?;
            fs.starts_with("cgroup2 ").then(|| PathBuf::from(point))
        })
        .expect("a cgroup2 hierarchy is mounted")
}

/// This process in a cgroup of the unified hierarchy made for the test;
/// back where it was, and the cgroup removed, when dropped.
struct InCgroup {
    made: Vec<PathBuf>,
    home: PathBuf,
}

impl InCgroup {
    fn enter(root: &Path, path: &str) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let home = own.lines().find_map(|l| l.strip_prefix("0::")).map_or_else(
            || root.to_path_buf(),
            |p| root.join(p.trim_start_matches('/')),
        );
        let mut made = Vec::new();
        let mut dir = root.to_path_buf();
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            dir.push(segment);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
                made.push(dir.clone());
            }
        }
        let entered = Self { made, home };
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("moving into {dir:?}: {e}"));
        entered
    }
}

impl Drop for InCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The node's runtime files: containerd's bundle for the container.
fn node() -> tempfile::TempDir {
    let node = tempfile::tempdir().expect("tempdir");
    let bundle = node
        .path()
        .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
        .join(CONTAINER_ID);
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    let config = serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {"args": ["nginx"]},
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "nginx",
            "io.kubernetes.cri.sandbox-name": "web-7d9f",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-uid": POD_UID,
        }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
    node
}

/// A keepalive connection on loopback (idle 1 s, 1 s apart, 3 probes)
/// opened and held by this process; the server's end too.
fn connection(port: u16) -> (TcpListener, std::net::TcpStream, std::net::TcpStream) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).expect("listen");
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    keepalive(&s, 1, 1, 3);
    s.connect(&addr.into()).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (listener, s.into(), server)
}

fn probe_from(kat: &mut Kat, port: u16) -> Value {
    kat.wait_for("a probe", Duration::from_secs(10), |v| {
        v["type"] == "probe" && v["dport"] == port
    })
}

fn by(cmd: &KatCmd, journal: &Path, what: &str) -> Vec<(String, u64)> {
    let report = kat::report(cmd, journal, &["--by", what]);
    report["by_owner"]
        .as_array()
        .unwrap_or_else(|| panic!("no by_owner: {report}"))
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_string(),
                w["deaths"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn probes_and_deaths_name_their_pod_container_and_unit() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let cmd = KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    };
    let node = node();
    let host_root = node.path().to_string_lossy().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    let filter = [
        "--port",
        &POD_PORT.to_string(),
        "--port",
        &UNIT_PORT.to_string(),
        "--host-root",
        &host_root,
    ]
    .map(str::to_string);
    let filter: Vec<&str> = filter.iter().map(String::as_str).collect();
    // Started before this process moves, so kat stays where it was. The
    // recorder's lines come on stdout too, to wait for.
    let mut tracer = Kat::trace(&cmd, &filter, &[]);
    let journal_arg = journal.to_string_lossy().to_string();
    let mut recorder_args = vec!["--dir", journal_arg.as_str()];
    recorder_args.extend(&filter);
    let mut recorder = Kat::record_to_stdout(&cmd, &recorder_args);
    let root = cgroup2_mount();

    let pod_slice = format!("kubepods-besteffort-pod{}.slice", POD_UID.replace('-', "_"));
    let in_pod = InCgroup::enter(
        &root,
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/{pod_slice}/cri-containerd-{CONTAINER_ID}.scope"
        ),
    );
    let (_l1, client, _server) = connection(POD_PORT);
    let probe = probe_from(&mut tracer, POD_PORT);
    let w = &probe["workload"];
    assert_eq!(w["pod"], "web-7d9f", "{probe}");
    assert_eq!(w["namespace"], "shop", "{probe}");
    assert_eq!(w["container"], "nginx", "{probe}");
    assert_eq!(w["pod_uid"], POD_UID, "{probe}");
    assert_eq!(w["container_id"], CONTAINER_ID, "{probe}");
    assert_eq!(w["runtime"], "containerd", "{probe}");
    assert_eq!(probe["pid"], std::process::id(), "{probe}");
    // The first probe may come before kat's next census of owners; the
    // next one is owned.
    recorder.wait_for("the pod's probe recorded", Duration::from_secs(10), |v| {
        v["type"] == "probe" && v["workload"]["pod"] == "web-7d9f"
    });
    kat_scenarios::net::abort(client);
    drop(in_pod);

    let in_unit = InCgroup::enter(&root, &format!("system.slice/{UNIT}"));
    let (_l2, client, _server) = connection(UNIT_PORT);
    let probe = probe_from(&mut tracer, UNIT_PORT);
    assert_eq!(
        probe["workload"],
        serde_json::json!({ "unit": UNIT }),
        "{probe}"
    );
    recorder.wait_for("the unit's probe recorded", Duration::from_secs(10), |v| {
        v["type"] == "probe" && v["workload"]["unit"] == UNIT
    });
    kat_scenarios::net::abort(client);
    tracer.wait_for("the second death", Duration::from_secs(10), |v| {
        v["type"] == "death" && (v["sport"] == UNIT_PORT || v["dport"] == UNIT_PORT)
    });
    drop(in_unit);

    let (status, _, _) = recorder.stop();
    assert!(status.success(), "kat record exited with {status}");
    let (status, _, _) = tracer.stop();
    assert!(status.success(), "kat trace exited with {status}");
    let pods = by(&cmd, &journal, "pod");
    assert!(
        pods.iter().any(|(n, d)| n == "shop/web-7d9f" && *d >= 1),
        "{pods:?}"
    );
    let containers = by(&cmd, &journal, "container");
    assert!(
        containers
            .iter()
            .any(|(n, d)| n == "shop/web-7d9f/nginx" && *d >= 1),
        "{containers:?}"
    );
    let units = by(&cmd, &journal, "unit");
    assert!(units.iter().any(|(n, d)| n == UNIT && *d >= 1), "{units:?}");
}
