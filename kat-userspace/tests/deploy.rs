//! The deployment files in deploy/ checked for real (docs/deploy.md), no
//! root needed:
//!
//! - the systemd unit passes `systemd-analyze verify` (on a copy whose
//!   ExecStart names the kat just built, every other line unchanged), and
//!   its command line is one kat parses;
//! - the Kubernetes manifests pass a schema validator (PyPI's
//!   `kubernetes-validate`, which carries the API's schemas, installed by
//!   `cargo xtask setup`), and their fields that matter are what kat needs;
//! - every PromQL expression of the Grafana dashboard names only metric
//!   families that kat serves (from a real `Metrics` registry, encoded) and
//!   groups by labels docs/metrics.md gives them;
//! - the image recipe copies the static binary `cargo xtask dist` releases.
//!
//! A missing `systemd-analyze` or validator skips its check, except under
//! `CI=true`, where it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kat_scenarios::output_text as text;
use kat_userspace::metrics::{Build, Metrics};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace above kat-userspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// A tool the check needs is missing.
fn missing(tool: &str, why: &str) {
    kat_scenarios::skip(&format!(
        "{tool} is missing ({why}); `cargo xtask setup` installs it"
    ));
}

/// kat run with these arguments as an ordinary user: arguments it cannot
/// parse exit 2 (usage); good ones get as far as the root check (exit 1).
fn assert_kat_parses(args: &[String], whose: &str) {
    let o = if nix::unistd::geteuid().is_root() {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_kat"))
            .args(args)
            .output()
            .expect("run kat under setpriv")
    } else {
        Command::new(env!("CARGO_BIN_EXE_kat"))
            .args(args)
            .output()
            .expect("run kat")
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && err.contains("needs root"),
        "{whose}: kat {args:?} should parse and stop at the root check\n{}",
        text(&o)
    );
}

// ---------------------------------------------------------------- systemd

const UNIT: &str = "deploy/systemd/kat-record.service";

/// `[Section] Key=value` lines of a unit file, in order.
fn unit_entries(unit: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn unit_value(entries: &[(String, String, String)], section: &str, key: &str) -> Option<String> {
    entries
        .iter()
        .rev()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
}

/// The capabilities the unit leaves kat, without `CAP_`.
fn unit_capabilities() -> BTreeSet<String> {
    let entries = unit_entries(&read(UNIT));
    unit_value(&entries, "Service", "CapabilityBoundingSet")
        .expect("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.strip_prefix("CAP_").expect("CAP_ names").to_string())
        .collect()
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let original = read(UNIT);
    let exec: Vec<&str> = original
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(exec.len(), 1, "one ExecStart: {exec:?}");
    let Some(args) = exec[0].strip_prefix("ExecStart=/usr/bin/kat ") else {
        panic!("ExecStart runs /usr/bin/kat: {}", exec[0]);
    };

    // systemd-analyze verify checks that ExecStart's binary exists: the
    // copy runs the kat just built, and nothing else changes.
    let built = env!("CARGO_BIN_EXE_kat");
    let copy: String = original
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={built} {args}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let changed: Vec<(usize, &str, &str)> = original
        .lines()
        .zip(copy.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, a, b))
        .collect();
    assert_eq!(original.lines().count(), copy.lines().count());
    assert_eq!(changed.len(), 1, "only ExecStart differs: {changed:?}");
    assert!(changed[0].1.starts_with("ExecStart="));

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kat-record.service");
    std::fs::write(&path, &copy).expect("write the unit's copy");
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Err(e) => missing("systemd-analyze", &e.to_string()),
        Ok(o) => {
            // verify exits 0 on unknown keys and bad values, saying so on
            // stderr: any line about the unit is a failure.
            let err = String::from_utf8_lossy(&o.stderr);
            let about: Vec<&str> = err
                .lines()
                .filter(|l| l.contains("kat-record") || l.contains(&*path.to_string_lossy()))
                .collect();
            assert!(o.status.success() && about.is_empty(), "{}", text(&o));
        }
    }

    // The command line is one kat accepts.
    let argv: Vec<String> = args.split_whitespace().map(String::from).collect();
    assert_eq!(argv[0], "record");
    assert!(args.contains("--dir /var/lib/kat"), "{args}");
    assert_kat_parses(&argv, UNIT);
}

#[test]
fn systemd_unit_is_hardened_and_keeps_what_kat_needs() {
    let entries = unit_entries(&read(UNIT));
    let service = |k: &str| unit_value(&entries, "Service", k);
    for (key, want) in [
        ("Restart", "on-failure"),
        ("StateDirectory", "kat"),
        ("StateDirectoryMode", "0700"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
    ] {
        assert_eq!(service(key).as_deref(), Some(want), "{key}");
    }
    // These would break kat: /proc/kallsyms made inaccessible, CAP_SYSLOG
    // dropped, other processes' /proc hidden.
    for (key, breaks) in [
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProcSubset", "pid"),
        ("ProtectProc", "invisible"),
        ("PrivateNetwork", "yes"),
    ] {
        assert_ne!(service(key).as_deref(), Some(breaks), "{key}={breaks}");
    }
    // setns into network namespaces (sock_diag) must stay allowed.
    if let Some(ns) = service("RestrictNamespaces") {
        assert!(
            ns.split_whitespace().any(|n| n == "net"),
            "RestrictNamespaces={ns}"
        );
    }
    let caps = unit_capabilities();
    for needed in ["BPF", "PERFMON", "SYSLOG"] {
        assert!(caps.contains(needed), "CAP_{needed} in {caps:?}");
    }
    // Disabled until enabled: no alias or Also= that would start it.
    assert_eq!(
        unit_value(&entries, "Install", "WantedBy").as_deref(),
        Some("multi-user.target")
    );
    assert!(unit_value(&entries, "Install", "Alias").is_none());
}

// ------------------------------------------------------------- Kubernetes

const MANIFEST: &str = "deploy/kubernetes/kat.yaml";

fn manifests() -> Vec<Yaml> {
    let text = read(MANIFEST);
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_else(|| panic!("a string: {v:?}"))
}

fn seq(v: &Yaml) -> &Vec<Yaml> {
    v.as_sequence().unwrap_or_else(|| panic!("a list: {v:?}"))
}

/// `256Mi`, `1Gi` in MiB.
fn mebibytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().expect("a quantity");
    match unit {
        "Mi" => n,
        "Gi" => n * 1024,
        other => panic!("unit {other:?} in {q}"),
    }
}

#[test]
fn kubernetes_manifests_give_kat_what_it_needs_and_no_more() {
    let docs = manifests();
    assert_eq!(docs.len(), 3, "Namespace, ServiceAccount, DaemonSet");
    assert_eq!(kind(&docs, "Namespace")["metadata"]["name"], "kat");
    let sa = kind(&docs, "ServiceAccount");
    assert_eq!(sa["metadata"]["namespace"], "kat");
    let ds = kind(&docs, "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], "kat");

    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "hostPID");
    assert_ne!(pod["hostNetwork"], true, "hostNetwork is not needed");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let containers = seq(&pod["containers"]);
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(
        s(&c["image"]).ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "the image is tagged with kat's version: {:?}",
        c["image"]
    );

    // The command line: record, metrics, stdout, host root; and kat takes it.
    let args: Vec<String> = seq(&c["args"]).iter().map(|a| s(a).to_string()).collect();
    assert_eq!(args[0], "record");
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("{flag} VALUE in {args:?}"))
            .clone()
    };
    let metrics = after("--metrics");
    assert_eq!(after("--host-root"), "/host");
    assert!(args.iter().any(|a| a == "--stdout"), "{args:?}");
    assert!(
        !args.iter().any(|a| a == "--dir"),
        "no journal on a pod's disk"
    );
    assert_kat_parses(&args, MANIFEST);

    // The metrics port: named, annotated, probed on /healthz.
    let port: u64 = metrics
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("--metrics :PORT");
    let ports = seq(&c["ports"]);
    let named = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(named["containerPort"].as_u64(), Some(port));
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string().as_str());
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert!(
            get["port"] == "metrics" || get["port"].as_u64() == Some(port),
            "{probe} on the metrics port: {:?}",
            get["port"]
        );
    }

    // Memory: above kat's measured peak (77 MiB under 100k connections).
    let limits = &c["resources"]["limits"];
    let requests = &c["resources"]["requests"];
    assert!(mebibytes(s(&limits["memory"])) >= 128, "{limits:?}");
    assert!(mebibytes(s(&requests["memory"])) >= 25, "{requests:?}");
    assert!(!limits["cpu"].is_null(), "a CPU limit");

    // Privilege: capabilities, not privileged; the same set as the unit.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsUser"].as_u64(), Some(0), "kat checks for uid 0");
    let drop: Vec<&str> = seq(&sc["capabilities"]["drop"]).iter().map(s).collect();
    assert_eq!(drop, ["ALL"]);
    let add: BTreeSet<String> = seq(&sc["capabilities"]["add"])
        .iter()
        .map(|a| s(a).to_string())
        .collect();
    assert_eq!(
        add,
        unit_capabilities(),
        "the DaemonSet and the systemd unit give kat the same capabilities"
    );

    // Host paths: the node's, read-only, under /host (BTF where kat reads it).
    let volumes: BTreeMap<&str, &str> = seq(&pod["volumes"])
        .iter()
        .map(|v| (s(&v["name"]), s(&v["hostPath"]["path"])))
        .collect();
    let mut mounted = BTreeSet::new();
    for m in seq(&c["volumeMounts"]) {
        let name = s(&m["name"]);
        let host = volumes
            .get(name)
            .unwrap_or_else(|| panic!("mount {name} is a hostPath volume"));
        assert_eq!(m["readOnly"], true, "{name} is mounted read-only");
        let expected = if *host == "/sys/kernel/btf" {
            host.to_string()
        } else {
            format!("/host{host}")
        };
        assert_eq!(s(&m["mountPath"]), expected, "{name}");
        mounted.insert(*host);
    }
    for needed in [
        "/sys/kernel/btf",
        "/run/containerd",
        "/run/containers",
        "/var/log/pods",
    ] {
        assert!(mounted.contains(needed), "{needed} in {mounted:?}");
    }
}

/// `python3 -m kubernetes_validate` (PyPI's kubernetes-validate, schemas
/// included: no network), or None where it is not installed.
fn validator() -> Option<Command> {
    let ok = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| {
        let mut c = Command::new("python3");
        c.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
        c
    })
}

#[test]
fn kubernetes_manifests_pass_the_schema_validator() {
    let Some(mut validate) = validator() else {
        missing("kubernetes-validate", "python3 -m kubernetes_validate");
        return;
    };
    let o = validate
        .arg(repo().join(MANIFEST))
        .output()
        .expect("run kubernetes-validate");
    assert!(o.status.success(), "{}", text(&o));

    // The validator does refuse a manifest with a field the API lacks.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.yaml");
    let text_in =
        read(MANIFEST).replacen("hostPID: true", "hostPID: true\n      hostPIDs: true", 1);
    std::fs::write(&bad, text_in).expect("write the bad copy");
    let o = validator()
        .expect("still installed")
        .arg(&bad)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        !o.status.success() && text(&o).contains("hostPIDs"),
        "an unknown field must fail: {}",
        text(&o)
    );
}

// ---------------------------------------------------------------- Grafana

/// The samples kat serves and the labels of each, from its own registry
/// fed a death (with a kernel RST reason and a silence), an answered probe,
/// losses and a census of the connections, encoded as Prometheus reads it.
fn served() -> BTreeMap<String, BTreeSet<String>> {
    use kat_userspace::event::{Reason, Silence, What};
    use kat_userspace::testkit::{addr, at, conn, death, event};

    let (metrics, registry) = Metrics::new(
        &Build {
            version: "0.0.0",
            kernel: "test",
            lanes: "test",
        },
        1000,
    );
    let k = conn(addr("198.18.0.1"), 40000, addr("198.18.0.2"), 6699);
    let mut died = death(Reason::KeepaliveTimeout, Some("ETIMEDOUT"), 3, Some(5.0));
    if let What::Death {
        kernel_reset_reason,
        silence,
        ..
    } = &mut died
    {
        *kernel_reset_reason = Some("TCP_KEEPALIVE_TIMEOUT".into());
        *silence = Some(Silence {
            idle_before_s: 2.0,
            verdict: None,
            survived_idle_s: None,
        });
    }
    // Owned by a pod's container and (for its label) a unit.
    let mut died = event(k, at(5.0), died);
    died.workload = Some(std::sync::Arc::new(kat_userspace::workload::Workload {
        namespace: Some("shop".into()),
        pod: Some("web-7d9f".into()),
        container: Some("nginx".into()),
        unit: Some("nginx.service".into()),
        ..Default::default()
    }));
    metrics.observe(&[event(k, at(1.0), What::ProbeAnswered { probe: 1 }), died]);
    // And one census of the connections open: one with keepalive on.
    let mut census = kat_userspace::conns::Census::default();
    census
        .counts
        .insert((true, kat_userspace::event::Origin::Socket), 1);
    census.idle_s.push(60.0);
    metrics.conn_gauges().publish(&census);
    let mut lost = kat_userspace::source::LostCounts::default();
    lost.by_kind[0] = 1;
    lost.skipped_runs = 1;
    metrics.lost(&lost.by_kind());

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode the registry");
    let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let end = line.find(['{', ' ']).expect("NAME{LABELS} VALUE");
        let labels = samples.entry(line[..end].to_string()).or_default();
        if let Some(set) = line[end..].strip_prefix('{') {
            let set = &set[..set.rfind('}').expect("a closing brace")];
            labels.extend(
                set.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, _)| k.trim().to_string()),
            );
        }
    }
    // Every family has samples: a sample name per family kind at least.
    for family in [
        "kat_connection_deaths_total",
        "kat_keepalive_probes_total",
        "kat_tcp_resets_sent_total",
        "kat_idle_before_death_seconds_bucket",
        "kat_events_lost_total",
        "kat_connections",
        "kat_keepalive_idle_seconds_bucket",
        "kat_build_info",
    ] {
        assert!(samples.contains_key(family), "{family} in\n{text}");
    }
    samples
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and
/// `_count` are one.
fn family(sample: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| sample.strip_suffix(s))
        .unwrap_or(sample)
}

/// Labels every series has from the scrape (Prometheus' target labels).
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// PromQL without its string literals, so that identifiers can be read.
fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    let mut escaped = false;
    for ch in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == q {
                    quote = None;
                    out.push_str("\"\"");
                }
            }
            None if ch == '"' || ch == '\'' || ch == '`' => quote = Some(ch),
            None => out.push(ch),
        }
    }
    out
}

/// Identifiers of an expression, with the character before each; `$`
/// variables and `[...]` ranges left out.
fn identifiers(expr: &str) -> Vec<(Option<char>, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut before = None;
    let mut prev = None;
    let mut in_range = false;
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch == '[' {
            in_range = true;
        } else if ch == ']' {
            in_range = false;
        }
        let word = ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
        if word && !in_range {
            if current.is_empty() {
                before = prev;
            }
            current.push(ch);
        } else if !current.is_empty() {
            if before != Some('$') && !current.starts_with(|c: char| c.is_ascii_digit()) {
                out.push((before, std::mem::take(&mut current)));
            }
            current.clear();
        }
        prev = Some(ch);
    }
    out
}

/// The label names an expression uses: in `by (...)`, `without (...)` and
/// matchers `{label op "..."}`.
fn label_names(expr: &str) -> BTreeSet<String> {
    let e = without_strings(expr);
    let mut labels = BTreeSet::new();
    for kw in ["by", "without"] {
        let mut rest = e.as_str();
        while let Some(i) = rest.find(kw) {
            let boundary =
                i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            let after = rest[i + kw.len()..].trim_start();
            if boundary && after.starts_with('(') {
                let inner = &after[1..after.find(')').expect("a closing parenthesis")];
                labels.extend(
                    inner
                        .split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
            }
            rest = &rest[i + kw.len()..];
        }
    }
    let mut rest = e.as_str();
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("a closing brace") + open;
        for matcher in rest[open + 1..close].split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                labels.insert(name);
            }
        }
        rest = &rest[close + 1..];
    }
    labels
}

/// Every `expr` in the dashboard (panels, rows' panels), with its panel.
fn exprs(dash: &Json) -> Vec<(String, String)> {
    fn walk(panels: &Json, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

#[test]
fn grafana_dashboard_queries_only_what_kat_serves() {
    let dash: Json =
        serde_json::from_str(&read("deploy/grafana/kat.json")).expect("the dashboard is JSON");
    let served = served();

    // The variables: a Prometheus data source and the instances.
    let vars = dash["templating"]["list"].as_array().expect("variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let instance_query = var("instance")["query"]["query"]
        .as_str()
        .or_else(|| var("instance")["query"].as_str())
        .expect("the instance variable's query");
    let mut all = vec![("instance variable".to_string(), instance_query.to_string())];

    let panel_exprs = exprs(&dash);
    assert!(panel_exprs.len() >= 8, "{panel_exprs:?}");
    for (title, e) in &panel_exprs {
        assert!(
            e.contains("instance=~\"$instance\""),
            "{title}: filtered on $instance: {e}"
        );
    }
    all.extend(panel_exprs);

    let mut used = BTreeSet::new();
    for (title, e) in &all {
        let stripped = without_strings(e);
        let metrics: Vec<String> = identifiers(&stripped)
            .into_iter()
            .map(|(_, w)| w)
            .filter(|w| w.starts_with("kat_"))
            .collect();
        assert!(!metrics.is_empty(), "{title}: no kat metric in {e}");
        for m in &metrics {
            assert!(
                served.contains_key(m),
                "{title}: {m} is not served by kat ({:?})",
                served.keys()
            );
            used.insert(m.clone());
        }
        // Every label it names is one every sample it reads has.
        for label in label_names(e) {
            let ok = TARGET_LABELS.contains(&label.as_str())
                || metrics.iter().all(|m| served[m].contains(&label));
            assert!(ok, "{title}: label {label} is not on {metrics:?}: {e}");
        }
    }
    // Every family kat serves is on the dashboard.
    let families: BTreeSet<&str> = served.keys().map(|m| family(m)).collect();
    for f in families {
        assert!(used.iter().any(|m| family(m) == f), "no panel shows {f}");
    }
    // Every target names the data source variable.
    let text = read("deploy/grafana/kat.json");
    assert!(
        !text.contains("\"uid\": \"prometheus\""),
        "a hard-coded data source"
    );
}

#[test]
fn promql_helpers_read_metric_and_label_names() {
    let e = r#"sum by (namespace, pod) (increase(kat_x_total{instance=~"$instance", reason!="a{b}"}[$__range]))"#;
    let ids: Vec<String> = identifiers(&without_strings(e))
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    assert!(ids.contains(&"kat_x_total".to_string()), "{ids:?}");
    assert!(!ids.iter().any(|i| i.contains("range")), "{ids:?}");
    let labels: Vec<String> = label_names(e).into_iter().collect();
    assert_eq!(labels, ["instance", "namespace", "pod", "reason"]);
}

// -------------------------------------------------------------- the image

#[test]
fn containerfile_copies_the_binary_xtask_dist_releases() {
    let recipe = read("deploy/container/Containerfile");
    let lines: Vec<&str> = recipe
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(lines.contains(&"FROM scratch"), "{lines:?}");
    assert!(lines.contains(&r#"ENTRYPOINT ["/kat"]"#), "{lines:?}");
    let copy = lines
        .iter()
        .find(|l| l.starts_with("COPY "))
        .expect("a COPY line");
    // dist writes the binary as dist/kat under the target directory, and
    // builds it for the static target.
    let dist = read("xtask/src/dist.rs");
    assert!(dist.contains(r#"let out = ws.target_dir.join("dist");"#));
    assert!(dist.contains(r#"install(&out, "kat", &kat, 0o755)?;"#));
    assert!(dist.contains("cargo::build_static("));
    assert!(read("xtask/src/cargo.rs")
        .contains(r#"pub const MUSL: &str = "x86_64-unknown-linux-musl";"#));
    assert_eq!(*copy, "COPY target/dist/kat /kat");
    assert!(
        recipe.contains("#   cargo xtask dist\n"),
        "the recipe says how the binary is built"
    );
}
