//! What a process belongs to beyond its pid and command: the systemd
//! unit, the container, the Kubernetes pod. Read from the process's cgroup
//! (named by systemd, docker, containerd, CRI-O, podman and the kubelet
//! in well-known ways) and, for names, from the runtime's own files on the
//! node: the OCI bundle's annotations (containerd, CRI-O) and the kubelet's
//! log directories (any runtime). Runs on the owner walker's thread, never
//! on the path that drains the ring.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The owner's place on the host. Absent fields are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    /// The systemd unit (service or scope) of a process outside containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `docker`, `containerd`, `crio` or `podman`, when the cgroup says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container's name (Kubernetes' container name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The groupings `kat report --by` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Pod,
    Container,
    Unit,
}

impl Workload {
    /// `namespace/pod`, the pod's UID where its name is unknown.
    pub fn pod_name(&self) -> Option<String> {
        match (&self.namespace, &self.pod, &self.pod_uid) {
            (Some(ns), Some(pod), _) => Some(format!("{ns}/{pod}")),
            (_, _, Some(uid)) => Some(format!("pod {uid}")),
            _ => None,
        }
    }

    /// The container's name (in its pod), else its short ID.
    pub fn container_name(&self) -> Option<String> {
        let short = || {
            self.container_id
                .as_ref()
                .map(|id| id.chars().take(12).collect::<String>())
        };
        match (self.pod_name(), &self.container) {
            (Some(pod), Some(c)) => Some(format!("{pod}/{c}")),
            (None, Some(c)) => Some(c.clone()),
            (_, None) => short(),
        }
    }

    /// The name to group by, where there is one.
    pub fn by(&self, by: By) -> Option<String> {
        match by {
            By::Pod => self.pod_name(),
            By::Container => self.container_name(),
            By::Unit => self.unit.clone(),
        }
    }

    /// One short label for a line or a column: the container in its pod,
    /// else the container, else the unit.
    pub fn label(&self) -> Option<String> {
        self.container_name()
            .or_else(|| self.pod_name())
            .or_else(|| self.unit.clone())
    }
}

/// The paths of /proc/PID/cgroup worth reading, best first: the unified
/// hierarchy's, then systemd's named v1 hierarchy, then any controller's.
fn cgroup_paths(text: &str) -> Vec<&str> {
    let mut unified = Vec::new();
    let mut systemd = Vec::new();
    let mut others = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if path == "/" || path.is_empty() {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            unified.push(path);
        } else if controllers == "name=systemd" {
            systemd.push(path);
        } else {
            others.push(path);
        }
    }
    unified.into_iter().chain(systemd).chain(others).collect()
}

/// A container ID: 64 hex digits.
fn container_id(s: &str) -> Option<&str> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// The container scope systemd makes for each runtime, e.g.
/// `cri-containerd-<ID>.scope`; the runtime's own process (conmon) is not
/// the container.
fn container_scope(segment: &str) -> Option<(&'static str, &str)> {
    let stem = segment.strip_suffix(".scope")?;
    [
        ("cri-containerd-", "containerd"),
        ("crio-", "crio"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ]
    .into_iter()
    .find_map(|(prefix, runtime)| Some((runtime, container_id(stem.strip_prefix(prefix)?)?)))
}

/// The pod UID in a kubelet cgroup segment: `kubepods-besteffort-pod<UID>.slice`
/// (systemd driver, `_` for `-`) or `pod<UID>` (cgroupfs driver).
fn pod_uid(segment: &str) -> Option<String> {
    let uid = match segment.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => segment.strip_prefix("pod")?.to_string(),
    };
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// What one cgroup path says, without the runtime's names.
pub fn from_cgroup(path: &str) -> Option<Workload> {
    // In a cgroup namespace of its own (kat in a pod), other processes'
    // paths start with `..`: what follows is the same.
    let segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .collect();
    let in_kubepods = segments.first().is_some_and(|s| {
        *s == "kubepods" || s.starts_with("kubepods.") || s.starts_with("kubepods-")
    });
    let mut w = Workload::default();
    for (i, segment) in segments.iter().enumerate() {
        if in_kubepods && w.pod_uid.is_none() {
            w.pod_uid = pod_uid(segment);
        }
        if let Some((runtime, id)) = container_scope(segment) {
            w.runtime = Some(runtime.to_string());
            w.container_id = Some(id.to_string());
        } else if let Some(id) = container_id(segment) {
            // cgroupfs layouts: /kubepods/<qos>/pod<UID>/<ID>, /docker/<ID>.
            let parent = i.checked_sub(1).map(|p| segments[p]);
            if parent == Some("docker") {
                w.runtime = Some("docker".to_string());
            }
            w.container_id = Some(id.to_string());
        }
    }
    if w.container_id.is_none() && w.pod_uid.is_none() {
        w.unit = segments
            .iter()
            .rev()
            .find(|s| s.ends_with(".service") || s.ends_with(".scope"))
            .map(|s| (*s).to_string());
    }
    (w != Workload::default()).then_some(w)
}

/// The names a runtime keeps for a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Names {
    container: Option<String>,
    pod: Option<String>,
    namespace: Option<String>,
    pod_uid: Option<String>,
}

/// The OCI bundle annotations containerd's CRI plugin and CRI-O write.
#[derive(Deserialize)]
struct Bundle {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

fn from_bundle(path: &Path) -> Option<Names> {
    let text = std::fs::read(path).ok()?;
    let bundle: Bundle = serde_json::from_slice(&text).ok()?;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| bundle.annotations.get(*k).cloned())
    };
    let names = Names {
        container: get(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]),
        pod: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        namespace: get(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        pod_uid: get(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]),
    };
    (names != Names::default()).then_some(names)
}

/// The kubelet's `/var/log/containers/<pod>_<namespace>_<container>-<ID>.log`.
fn from_container_logs(dir: &Path, id: &str) -> Option<Names> {
    let suffix = format!("-{id}.log");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name();
        let stem = name.to_str()?.strip_suffix(&suffix)?.to_string();
        let mut parts = stem.splitn(3, '_');
        Some(Names {
            pod: Some(parts.next()?.to_string()),
            namespace: Some(parts.next()?.to_string()),
            container: Some(parts.next()?.to_string()),
            pod_uid: None,
        })
    })
}

/// The kubelet's `/var/log/pods/<namespace>_<pod>_<UID>/`.
fn from_pod_logs(dir: &Path, uid: &str) -> Option<Names> {
    let suffix = format!("_{uid}");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name();
        let (namespace, pod) = name.to_str()?.strip_suffix(&suffix)?.split_once('_')?;
        Some(Names {
            pod: Some(pod.to_string()),
            namespace: Some(namespace.to_string()),
            ..Names::default()
        })
    })
}

/// A container or pod whose names were not found is looked up again after
/// this long: the runtime may not have written them yet.
const RETRY_MISSING: Duration = Duration::from_secs(30);

/// What a lookup of names found, and when.
type Cached = (Instant, Option<Names>);

/// A cached answer, unless it is a miss old enough to ask again.
fn fresh(cache: &HashMap<String, Cached>, key: &str) -> Option<Option<Names>> {
    match cache.get(key)? {
        (at, None) if at.elapsed() >= RETRY_MISSING => None,
        (_, names) => Some(names.clone()),
    }
}

/// Workloads of processes, with the runtimes' names cached per container
/// and per pod for as long as they are seen.
pub struct Attributor {
    proc_root: PathBuf,
    host_root: PathBuf,
    containers: HashMap<String, Cached>,
    pods: HashMap<String, Cached>,
}

impl Attributor {
    /// `proc_root` is normally /proc; `host_root` is where the node's
    /// /run and /var/log are (/ on the host, /host in kat's pod).
    pub fn new(proc_root: &Path, host_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_path_buf(),
            host_root: host_root.to_path_buf(),
            containers: HashMap::new(),
            pods: HashMap::new(),
        }
    }

    fn host(&self, path: &str) -> PathBuf {
        self.host_root.join(path)
    }

    fn container_names(&mut self, id: &str) -> Option<Names> {
        if let Some(known) = fresh(&self.containers, id) {
            return known;
        }
        let found = [
            format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"),
            format!("run/containers/storage/overlay-containers/{id}/userdata/config.json"),
        ]
        .iter()
        .find_map(|p| from_bundle(&self.host(p)))
        .or_else(|| from_container_logs(&self.host("var/log/containers"), id));
        self.containers
            .insert(id.to_string(), (Instant::now(), found.clone()));
        found
    }

    fn pod_names(&mut self, uid: &str) -> Option<Names> {
        if let Some(known) = fresh(&self.pods, uid) {
            return known;
        }
        let found = from_pod_logs(&self.host("var/log/pods"), uid);
        self.pods
            .insert(uid.to_string(), (Instant::now(), found.clone()));
        found
    }

    /// The workload of one process, with names where the node has them.
    fn resolve(&mut self, pid: u32) -> Option<Workload> {
        let text = std::fs::read_to_string(self.proc_root.join(format!("{pid}/cgroup"))).ok()?;
        let mut w = cgroup_paths(&text).into_iter().find_map(from_cgroup)?;
        let mut names = Names::default();
        if let Some(id) = w.container_id.clone() {
            names = self.container_names(&id).unwrap_or_default();
        }
        let uid = w.pod_uid.clone().or_else(|| names.pod_uid.clone());
        if names.pod.is_none() {
            if let Some(from_pod) = uid.as_deref().and_then(|u| self.pod_names(u)) {
                names.pod = from_pod.pod;
                names.namespace = from_pod.namespace;
            }
        }
        w.pod_uid = uid;
        w.container = names.container;
        w.pod = names.pod;
        w.namespace = names.namespace;
        Some(w)
    }

    /// The workloads of these processes; the caches then keep only what
    /// they still hold.
    pub fn resolve_all(
        &mut self,
        pids: impl IntoIterator<Item = u32>,
    ) -> HashMap<u32, Arc<Workload>> {
        let mut out = HashMap::new();
        // Each process once, found or not: a walk names the owner of every
        // socket, and a process without a workload had its cgroup file read
        // again for each of its sockets (200 000 reads a walk at scale).
        let distinct: std::collections::HashSet<u32> = pids.into_iter().collect();
        for pid in distinct {
            if let Some(w) = self.resolve(pid) {
                out.insert(pid, Arc::new(w));
            }
        }
        let seen_ids: std::collections::HashSet<&str> = out
            .values()
            .filter_map(|w| w.container_id.as_deref())
            .collect();
        self.containers
            .retain(|id, _| seen_ids.contains(id.as_str()));
        let seen_uids: std::collections::HashSet<&str> =
            out.values().filter_map(|w| w.pod_uid.as_deref()).collect();
        self.pods.retain(|uid, _| seen_uids.contains(uid.as_str()));
        out
    }
}

#[cfg(test)]
mod tests;
