//! `kat doctor`: what this kernel offers kat, which hooks attach in which
//! lane, and whether kat can run here.

use anyhow::Result;
use kat_common::Offsets;
use serde::Serialize;

use crate::exit::Failure;
use crate::loader::{self, Attempt, Hook, Lane, HOOKS, LANES};
use crate::{btf, kernel};

#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// One JSON object, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Sysctls {
    tcp_keepalive_time_s: Option<u64>,
    tcp_keepalive_intvl_s: Option<u64>,
    tcp_keepalive_probes: Option<u64>,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    btf: bool,
    hz: Option<u32>,
    keepalive_timer_address: Option<String>,
    /// Reset reason names (without SK_RST_REASON_); null before 6.10.
    reset_reasons: Option<Vec<String>>,
    /// The socket member that holds the keepalive timer.
    keepalive_timer_member: Option<&'static str>,
    /// The one that holds the retransmission timer; null where kat finds
    /// none (a CLOSE the kernel skips is then told at the socket's free).
    retransmit_timer_member: Option<&'static str>,
    offsets: Option<Offsets>,
    /// kat's own network namespace (each namespace has its own).
    sysctls: Sysctls,
    /// Every hook tried in every lane.
    attempts: Vec<Attempt>,
    /// The lane kat picks for each hook.
    lanes: Vec<(Hook, Lane)>,
    /// How sockets' owners are found: "iterator" (kat's task_file
    /// iterator in the kernel) or "proc" (a walk of /proc/*/fd).
    owners: &'static str,
    /// Why the iterator cannot load, where it cannot.
    owners_problem: Option<String>,
    /// Why the connections census's tcp iterator cannot load (`kat record
    /// --metrics`'s kat_connections), where it cannot; null: it loads.
    connections_census_problem: Option<String>,
    /// sock_diag dumps both families in one walk (TCPDIAG_GETSOCK with
    /// AF_UNSPEC); false: one dump per family; null: no dump worked.
    one_dump_for_both_families: Option<bool>,
    /// Why `--conntrack` cannot be told of expired flows here (ctnetlink's
    /// destroy events), where it cannot; null: it can.
    conntrack_problem: Option<String>,
    /// This namespace's net.netfilter.nf_conntrack_events: 2 (the
    /// default) tells only flows tracked after kat subscribed, 1 all, 0
    /// none; null: no conntrack here.
    conntrack_events: Option<u64>,
    can_run: bool,
    problem: Option<String>,
}

fn sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn report() -> Report {
    let mut r = Report {
        kernel: kernel::release(),
        btf: std::path::Path::new(btf::VMLINUX).exists(),
        hz: kernel::hz().ok(),
        keepalive_timer_address: kernel::kallsyms()
            .and_then(|k| kernel::keepalive_timer_address(&k))
            .ok()
            .map(|a| format!("{a:#x}")),
        reset_reasons: None,
        keepalive_timer_member: None,
        retransmit_timer_member: None,
        offsets: None,
        sysctls: Sysctls {
            tcp_keepalive_time_s: sysctl("tcp_keepalive_time"),
            tcp_keepalive_intvl_s: sysctl("tcp_keepalive_intvl"),
            tcp_keepalive_probes: sysctl("tcp_keepalive_probes"),
        },
        attempts: Vec::new(),
        lanes: Vec::new(),
        owners: "proc",
        owners_problem: None,
        connections_census_problem: None,
        one_dump_for_both_families: crate::diag::Diag::one_walk_for_both_families().ok(),
        conntrack_problem: crate::conntrack::available()
            .err()
            .map(|e| format!("{e:#}")),
        conntrack_events: std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_events")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        can_run: false,
        problem: None,
    };
    let facts = match loader::kernel_facts(&[]) {
        Ok(f) => f,
        Err(e) => {
            r.problem = Some(format!("{e:#}"));
            return r;
        }
    };
    r.reset_reasons = facts
        .reset_reasons
        .as_ref()
        .map(|m| m.values().cloned().collect());
    r.offsets = Some(facts.config.offsets);
    r.keepalive_timer_member = facts.btf.keepalive_timer_member().ok().map(|(m, _)| m);
    r.retransmit_timer_member = facts.btf.retransmit_timer_member().map(|(m, _)| m);
    match loader::probe_all(&facts) {
        Ok(attempts) => r.attempts = attempts,
        Err(e) => {
            r.problem = Some(format!("{e:#}"));
            return r;
        }
    }
    match loader::probe_iterator(&facts, &loader::OWNER_ITERATOR) {
        Ok(()) => r.owners = "iterator",
        Err(e) => r.owners_problem = Some(format!("{e:#}")),
    }
    if let Err(e) = loader::probe_iterator(&facts, &loader::CONN_ITERATOR) {
        r.connections_census_problem = Some(format!("{e:#}"));
    }
    r.lanes = loader::choose(&LANES, |hook, lane| {
        r.attempts
            .iter()
            .any(|a| a.hook == hook && a.lane == lane && a.error.is_none())
    });
    let missing: Vec<&str> = loader::missing(&r.lanes)
        .into_iter()
        .map(Hook::name)
        .collect();
    r.can_run = missing.is_empty();
    if !r.can_run {
        r.problem = Some(format!("no lane attaches {}", missing.join(", ")));
    }
    r
}

fn yes_no<T>(v: &Option<T>, show: impl Fn(&T) -> String) -> String {
    v.as_ref().map_or_else(|| "not found".to_string(), show)
}

fn text(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
    line("kernel", r.kernel.clone());
    line(
        "BTF",
        if r.btf {
            btf::VMLINUX.to_string()
        } else {
            "missing (CONFIG_DEBUG_INFO_BTF)".into()
        },
    );
    line("CONFIG_HZ", yes_no(&r.hz, |h| h.to_string()));
    line(
        "tcp_keepalive_timer",
        yes_no(&r.keepalive_timer_address, Clone::clone),
    );
    line(
        "reset reasons",
        match &r.reset_reasons {
            Some(names) => format!("{} from the kernel's BTF", names.len()),
            None => "none (kernel before 6.10): told from the stack".into(),
        },
    );
    if let Some(member) = r.keepalive_timer_member {
        line(
            "keepalive timer",
            if member == "sock.sk_timer" {
                format!("{member} (no icsk_keepalive_timer: before 6.19 and its backports)")
            } else {
                member.to_string()
            },
        );
    }
    if r.offsets.is_some() {
        line(
            "retransmission timer",
            r.retransmit_timer_member.map_or_else(
                || "not found: a CLOSE the kernel skips after a retransmission timeout is told at the socket's free".into(),
                |m| format!("{m} (its exit tells a CLOSE the kernel skipped)"),
            ),
        );
    }
    let s = &r.sysctls;
    let v = |x: Option<u64>| x.map_or("?".into(), |x| x.to_string());
    line(
        "keepalive sysctls",
        format!(
            "time {} s, intvl {} s, probes {} (this network namespace)",
            v(s.tcp_keepalive_time_s),
            v(s.tcp_keepalive_intvl_s),
            v(s.tcp_keepalive_probes)
        ),
    );
    line(
        "sock_diag dump",
        match r.one_dump_for_both_families {
            Some(true) => "both families in one walk".into(),
            Some(false) => "one walk per family (TCPDIAG_GETSOCK refused)".into(),
            None => "failed (kat top lists no sockets)".into(),
        },
    );
    line(
        "conntrack expiry",
        match (&r.conntrack_problem, r.conntrack_events) {
            (Some(why), _) => format!("not available to --conntrack ({why})"),
            (None, Some(0)) => "ctnetlink, but net.netfilter.nf_conntrack_events is 0 here: no events".into(),
            (None, Some(2)) => "ctnetlink destroy events (--conntrack); nf_conntrack_events 2: flows tracked before kat started are not told".into(),
            (None, _) => "ctnetlink destroy events (--conntrack)".into(),
        },
    );
    if !r.attempts.is_empty() {
        line(
            "socket owners",
            match &r.owners_problem {
                None => "task_file iterator in the kernel".into(),
                Some(why) => format!("walk of /proc/*/fd (no iterator: {why})"),
            },
        );
        line(
            "connections census",
            match &r.connections_census_problem {
                None => "tcp iterator in the kernel".into(),
                Some(why) => format!("none: kat_connections stays empty ({why})"),
            },
        );
        out.push_str(&format!("\n{:<18}", "hook"));
        for lane in LANES {
            out.push_str(&format!("{:<12}", lane.name()));
        }
        out.push_str("kat uses\n");
        let mut notes = Vec::new();
        for hook in HOOKS {
            out.push_str(&format!("{:<18}", hook.name()));
            for lane in LANES {
                let cell = match r.attempts.iter().find(|a| a.hook == hook && a.lane == lane) {
                    None => "-".to_string(),
                    Some(Attempt { error: None, .. }) => "yes".to_string(),
                    Some(Attempt { error: Some(e), .. }) => {
                        notes.push(e.clone());
                        format!("no ({})", notes.len())
                    }
                };
                out.push_str(&format!("{cell:<12}"));
            }
            let uses = r
                .lanes
                .iter()
                .find(|(h, _)| *h == hook)
                .map_or("-", |(_, l)| l.name());
            out.push_str(&format!("{uses}\n"));
        }
        for (i, n) in notes.iter().enumerate() {
            out.push_str(&format!("  ({}) {n}\n", i + 1));
        }
    }
    if let Some(o) = &r.offsets {
        out.push_str("\nkernel fields kat reads (byte offset, width; from BTF):\n");
        for row in o.each().chunks(3) {
            let cells: Vec<String> = row
                .iter()
                .map(|(name, offset, width)| format!("{name:<17} {offset:>5} {width:>2}"))
                .collect();
            out.push_str(&format!("  {}\n", cells.join("   ")));
        }
    }
    out.push('\n');
    match &r.problem {
        None => out.push_str("kat can run here.\n"),
        Some(p) => out.push_str(&format!("kat cannot run here: {p}\n")),
    }
    out
}

pub fn run(args: &DoctorArgs) -> Result<()> {
    kernel::require_root("doctor")?;
    let r = report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", text(&r));
    }
    match r.problem {
        Some(p) if !r.can_run => Err(Failure::Unsupported(p).into()),
        _ => Ok(()),
    }
}
