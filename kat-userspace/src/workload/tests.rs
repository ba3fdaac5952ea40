use super::*;

const ID: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";
const UID: &str = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9";

fn uid_in_slice() -> String {
    UID.replace('-', "_")
}

fn workload(f: impl FnOnce(&mut Workload)) -> Option<Workload> {
    let mut w = Workload::default();
    f(&mut w);
    Some(w)
}

#[test]
fn kubelets_systemd_driver_names_the_pod_and_the_container() {
    let path = format!(
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
        uid_in_slice()
    );
    let pod = workload(|w| {
        w.runtime = Some("containerd".into());
        w.container_id = Some(ID.into());
        w.pod_uid = Some(UID.into());
    });
    assert_eq!(from_cgroup(&path), pod);
    // Seen from kat's own cgroup namespace in its pod.
    assert_eq!(from_cgroup(&format!("/../../..{path}")), pod);
    // Guaranteed pods sit right under kubepods.slice; CRI-O names its scope crio-.
    let path = format!(
        "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
        uid_in_slice()
    );
    let w = from_cgroup(&path).expect("a pod");
    assert_eq!(w.runtime.as_deref(), Some("crio"));
    assert_eq!(w.pod_uid.as_deref(), Some(UID));
}

#[test]
fn kubelets_cgroupfs_driver_and_plain_docker() {
    let w = from_cgroup(&format!("/kubepods/burstable/pod{UID}/{ID}")).expect("a pod");
    assert_eq!(
        (w.pod_uid.as_deref(), w.container_id.as_deref(), w.runtime),
        (Some(UID), Some(ID), None)
    );
    assert_eq!(
        from_cgroup(&format!("/docker/{ID}")),
        workload(|w| {
            w.runtime = Some("docker".into());
            w.container_id = Some(ID.into());
        })
    );
    let w = from_cgroup(&format!("/system.slice/docker-{ID}.scope")).expect("docker");
    assert_eq!((w.runtime.as_deref(), w.unit), (Some("docker"), None));
    let w = from_cgroup(&format!("/machine.slice/libpod-{ID}.scope/container")).expect("podman");
    assert_eq!(w.runtime.as_deref(), Some("podman"));
}

#[test]
fn outside_containers_the_unit_is_the_owner() {
    assert_eq!(
        from_cgroup("/system.slice/nginx.service"),
        workload(|w| w.unit = Some("nginx.service".into()))
    );
    // A user's service, deepest unit wins.
    assert_eq!(
        from_cgroup("/user.slice/user-1000.slice/user@1000.service/app.slice/psql.service")
            .and_then(|w| w.unit),
        Some("psql.service".into())
    );
    // The runtime's monitor is not its container; a scope is a unit too.
    assert_eq!(
        from_cgroup(&format!("/system.slice/crio-conmon-{ID}.scope")).and_then(|w| w.unit),
        Some(format!("crio-conmon-{ID}.scope"))
    );
    assert_eq!(from_cgroup("/"), None);
    assert_eq!(
        from_cgroup("/process_api/0ec1e982e044ccf60d400e4063bbc132"),
        None
    );
    // A bad pod UID is not a pod.
    assert_eq!(
        from_cgroup("/kubepods.slice/kubepods-podnotauid.slice").and_then(|w| w.pod_uid),
        None
    );
}

#[test]
fn the_unified_hierarchy_comes_first_then_systemds_then_any() {
    let v1_and_v2 = "9:name=systemd:/system.slice/a.service\n8:pids:/system.slice/b.service\n0::/system.slice/c.service\n";
    assert_eq!(
        cgroup_paths(v1_and_v2),
        [
            "/system.slice/c.service",
            "/system.slice/a.service",
            "/system.slice/b.service"
        ]
    );
    // Root paths and broken lines say nothing.
    assert_eq!(
        cgroup_paths("0::/\n9:name=systemd:/\nnonsense\n4:memory:/x"),
        ["/x"]
    );
}

#[test]
fn names_and_labels_say_what_is_known() {
    let mut w = from_cgroup(&format!("/kubepods/pod{UID}/{ID}")).expect("a pod");
    assert_eq!(w.pod_name(), Some(format!("pod {UID}")));
    assert_eq!(w.label(), Some("4f1b2c3d4e5f".into()));
    w.pod = Some("web-7d9f".into());
    w.namespace = Some("shop".into());
    w.container = Some("nginx".into());
    assert_eq!(w.label(), Some("shop/web-7d9f/nginx".into()));
    assert_eq!(w.by(By::Pod), Some("shop/web-7d9f".into()));
    assert_eq!(w.by(By::Unit), None);
}

/// A node's files under a temporary root: /proc, the runtimes' and the
/// kubelet's.
struct Node(tempfile::TempDir);

impl Node {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("tempdir"))
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.0.path().join(path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("dirs");
        std::fs::write(p, text).expect("write");
    }

    fn process(&self, pid: u32, cgroup: &str) {
        self.write(&format!("proc/{pid}/cgroup"), &format!("0::{cgroup}\n"));
    }

    fn attributor(&self) -> Attributor {
        Attributor::new(&self.0.path().join("proc"), self.0.path())
    }
}

fn pod_cgroup(id: &str) -> String {
    format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid_in_slice()
    )
}

#[test]
fn containerds_bundle_names_the_container_pod_and_namespace() {
    let node = Node::new();
    node.process(10, &pod_cgroup(ID));
    node.write(
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
        &serde_json::json!({"ociVersion": "1.1.0", "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "nginx",
            "io.kubernetes.cri.sandbox-name": "web-7d9f",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-uid": UID,
        }})
        .to_string(),
    );
    let found = node.attributor().resolve_all([10, 10, 11]);
    assert_eq!(found.len(), 1, "pid 11 has no cgroup file: {found:?}");
    let w = &found[&10];
    assert_eq!(w.label(), Some("shop/web-7d9f/nginx".into()));
    assert_eq!(w.runtime.as_deref(), Some("containerd"));
}

#[test]
fn crios_bundle_and_the_kubelets_logs_name_the_rest() {
    let node = Node::new();
    let other = ID.replace('4', "5");
    node.process(
        10,
        &format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            uid_in_slice()
        ),
    );
    node.write(
        &format!("run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
        &serde_json::json!({"annotations": {
            "io.kubernetes.container.name": "api",
            "io.kubernetes.pod.name": "api-5c8",
            "io.kubernetes.pod.namespace": "billing",
        }})
        .to_string(),
    );
    // No bundle: the kubelet's container log names it.
    node.process(11, &pod_cgroup(&other));
    node.write(
        &format!("var/log/containers/api-5c8_billing_sidecar-{other}.log"),
        "",
    );
    // The pod's sandbox (no container names anywhere): the pod log directory.
    node.process(
        12,
        &format!("/kubepods.slice/kubepods-pod{}.slice", uid_in_slice()),
    );
    node.write(&format!("var/log/pods/billing_api-5c8_{UID}/api/0.log"), "");
    let found = node.attributor().resolve_all([10, 11, 12]);
    assert_eq!(found[&10].label(), Some("billing/api-5c8/api".into()));
    assert_eq!(found[&11].label(), Some("billing/api-5c8/sidecar".into()));
    assert_eq!(found[&12].label(), Some("billing/api-5c8".into()));
}

#[test]
fn broken_metadata_leaves_the_ids() {
    let node = Node::new();
    node.process(10, &pod_cgroup(ID));
    node.write(
        &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
        "{not json",
    );
    node.write("proc/11/cgroup", "garbage without colons\n\u{0}\u{1}");
    let found = node.attributor().resolve_all([10, 11]);
    assert_eq!(found[&10].container_id.as_deref(), Some(ID));
    assert_eq!(found[&10].container, None);
    assert!(!found.contains_key(&11));
}

#[test]
fn the_caches_keep_only_what_is_still_held() {
    let node = Node::new();
    node.process(10, &pod_cgroup(ID));
    let mut a = node.attributor();
    a.resolve_all([10]);
    assert_eq!((a.containers.len(), a.pods.len()), (1, 1));
    std::fs::remove_dir_all(node.0.path().join("proc/10")).expect("exit");
    a.resolve_all([10]);
    assert_eq!((a.containers.len(), a.pods.len()), (0, 0));
}
