use super::*;

const SK: u64 = 0xffff_8880_0000_1000;
const HZ: u32 = 250;
const KEEPALIVE_TIMEOUT: u32 = 15;
const ABORT_ON_CLOSE: u32 = 3;
const TCP_STATE: u32 = 9;

fn tracker() -> Tracker {
    let reasons = [
        (KEEPALIVE_TIMEOUT, "TCP_KEEPALIVE_TIMEOUT"),
        (ABORT_ON_CLOSE, "TCP_ABORT_ON_CLOSE"),
        (TCP_STATE, "TCP_STATE"),
    ]
    .into_iter()
    .map(|(v, n)| (v, n.to_string()))
    .collect();
    Tracker::new(Setup {
        hz: HZ,
        reset_reasons: Some(reasons),
        realtime_offset_ns: 1_700_000_000_000_000_000,
    })
}

fn rec(kind: u8, ts_s: f64) -> Record {
    let mut r = Record {
        ts_ns: (ts_s * 1e9) as u64,
        sk: SK,
        kind,
        family: AF_INET,
        sport: 6699,
        dport: 40000,
        netns: 4026531840,
        uid: 1000,
        sock_ino: 777,
        state: tcp_state::ESTABLISHED,
        flags: flag::KEEPOPEN,
        ka_time: 2 * HZ,
        ka_intvl: HZ,
        ka_probes: 3,
        sysctl_time: 7200 * HZ,
        sysctl_intvl: 75 * HZ,
        sysctl_probes: 9,
        ..Default::default()
    };
    r.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
    r.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
    r
}

fn timer(ts_s: f64, before: u8, after: u8) -> Record {
    let mut r = rec(kind::TIMER_RUN, ts_s);
    r.probes_before = before;
    r.probes_after = after;
    r.idle_jiffies = (ts_s * f64::from(HZ)) as u32;
    r
}

fn close(ts_s: f64, old: u8, sk_err: i32, probes_out: u8) -> Record {
    let mut r = rec(kind::STATE_CHANGE, ts_s);
    r.state = tcp_state::CLOSE;
    r.old_state = old;
    r.sk_err = sk_err;
    r.probes_after = probes_out;
    r.sport = 6699;
    r
}

fn reset_sent(ts_s: f64, reason: u32, flags: u8) -> Record {
    let mut r = rec(kind::RESET_SENT, ts_s);
    r.reset_reason = reason;
    r.flags |= flag::HAS_RESET_REASON | flags;
    r.pid = 4242;
    r.comm[..6].copy_from_slice(b"server");
    r
}

fn feed(t: &mut Tracker, recs: impl IntoIterator<Item = Record>) -> Vec<Event> {
    recs.into_iter()
        .flat_map(|r| t.update(Msg::Record(r)))
        .collect()
}

fn probes(events: &[Event]) -> Vec<(&'static str, u8)> {
    events
        .iter()
        .filter_map(|e| match e.what {
            What::Probe { probe, .. } => Some(("probe", probe)),
            What::ProbeAnswered { probe } => Some(("answered", probe)),
            What::Death { .. } => None,
        })
        .collect()
}

fn death(events: &[Event]) -> &Event {
    let deaths: Vec<_> = events.iter().filter(|e| e.reason().is_some()).collect();
    assert_eq!(deaths.len(), 1, "expected one death in {events:#?}");
    deaths[0]
}

#[test]
fn numbers_probes_and_sees_answers_at_the_next_timer_run() {
    let mut t = tracker();
    let ev = feed(
        &mut t,
        [
            timer(2.0, 0, 1),
            timer(3.0, 1, 2),
            // probes_out back to 0 before this run: the peer answered.
            timer(5.0, 0, 1),
        ],
    );
    assert_eq!(
        probes(&ev),
        [("probe", 1), ("probe", 2), ("answered", 2), ("probe", 1)]
    );
    match ev[0].what {
        What::Probe {
            probes_max, idle_s, ..
        } => {
            assert_eq!(probes_max, 3);
            assert!((idle_s - 2.0).abs() < 0.01);
        }
        _ => unreachable!(),
    }
    let ka = ev[0].keepalive.expect("settings");
    assert_eq!((ka.idle_s, ka.intvl_s, ka.probes), (2.0, 1.0, 3));
    assert_eq!(ka.idle_from, Origin::Socket);
}

#[test]
fn settings_fall_back_to_the_namespace_sysctls() {
    let mut t = tracker();
    let mut r = timer(7200.0, 0, 1);
    r.ka_time = 0;
    r.ka_intvl = 0;
    r.ka_probes = 0;
    let ev = feed(&mut t, [r]);
    let ka = ev[0].keepalive.expect("settings");
    assert_eq!((ka.idle_s, ka.intvl_s, ka.probes), (7200.0, 75.0, 9));
    assert_eq!(
        (ka.idle_from, ka.intvl_from, ka.probes_from),
        (Origin::Sysctl, Origin::Sysctl, Origin::Sysctl)
    );
}

#[test]
fn sock_diag_reports_an_answer_before_the_next_timer_run() {
    let mut t = tracker();
    feed(&mut t, [timer(2.0, 0, 1)]);
    assert_eq!(t.probing().len(), 1);
    assert_eq!(t.probing()[0].sport, 6699);
    let still_out = t.update(Msg::Diag {
        sk: SK,
        probes_out: Some(1),
        ts_ns: 2_100_000_000,
    });
    assert!(still_out.is_empty());
    let ev = t.update(Msg::Diag {
        sk: SK,
        probes_out: Some(0),
        ts_ns: 2_200_000_000,
    });
    assert_eq!(probes(&ev), [("answered", 1)]);
    assert!(t.probing().is_empty());
    // The next timer run does not report the same answer again.
    let ev = feed(&mut t, [timer(4.0, 0, 1)]);
    assert_eq!(probes(&ev), [("probe", 1)]);
}

#[test]
fn keepalive_timeout_after_all_probes_unanswered() {
    let mut t = tracker();
    let mut ev = feed(
        &mut t,
        [
            timer(2.0, 0, 1),
            timer(3.0, 1, 2),
            timer(4.0, 2, 3),
            reset_sent(5.0, KEEPALIVE_TIMEOUT, flag::IN_KEEPALIVE_TIMER),
            close(5.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 3),
        ],
    );
    ev.extend(feed(&mut t, [timer(5.0, 3, 3)]));
    let d = death(&ev);
    match &d.what {
        What::Death {
            reason,
            errno,
            unanswered_probes,
            kernel_reset_reason,
            ..
        } => {
            assert_eq!(*reason, Reason::KeepaliveTimeout);
            assert_eq!(errno.as_deref(), Some("ETIMEDOUT"));
            assert_eq!(*unanswered_probes, 3);
            assert_eq!(
                kernel_reset_reason.as_deref(),
                Some("TCP_KEEPALIVE_TIMEOUT")
            );
        }
        _ => unreachable!(),
    }
    // The keepalive timer's task is not the owner: no pid is claimed.
    assert_eq!(d.pid, None);
}

#[test]
fn user_timeout_when_tcp_user_timeout_is_set() {
    let mut t = tracker();
    let mut a = timer(2.0, 0, 1);
    a.user_timeout_ms = 2500;
    let mut rst = reset_sent(3.0, KEEPALIVE_TIMEOUT, flag::IN_KEEPALIVE_TIMER);
    rst.user_timeout_ms = 2500;
    // Every record reads the socket's setting, the CLOSE one too.
    let mut c = close(3.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 2);
    c.user_timeout_ms = 2500;
    let ev = feed(&mut t, [a, rst, c]);
    assert_eq!(death(&ev).reason(), Some(Reason::UserTimeout));
    assert_eq!(
        death(&ev).keepalive.and_then(|k| k.user_timeout_ms),
        Some(2500)
    );
}

#[test]
fn kernels_without_reset_reasons_use_the_keepalive_timer_context() {
    let mut t = Tracker::new(Setup {
        hz: HZ,
        reset_reasons: None,
        realtime_offset_ns: 0,
    });
    let mut rst = rec(kind::RESET_SENT, 5.0);
    rst.flags |= flag::IN_KEEPALIVE_TIMER;
    let ev = feed(
        &mut t,
        [rst, close(5.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 3)],
    );
    assert_eq!(death(&ev).reason(), Some(Reason::KeepaliveTimeout));
}

#[test]
fn peer_reset_found_by_a_keepalive_probe() {
    let mut t = tracker();
    let mut rst = rec(kind::RESET_RECEIVED, 2.01);
    rst.probes_after = 1;
    let ev = feed(
        &mut t,
        [
            timer(2.0, 0, 1),
            rst,
            close(2.01, tcp_state::ESTABLISHED, libc::ECONNRESET, 1),
        ],
    );
    match &death(&ev).what {
        What::Death {
            reason,
            errno,
            found_by_probe,
            ..
        } => {
            assert_eq!(*reason, Reason::PeerReset);
            assert_eq!(errno.as_deref(), Some("ECONNRESET"));
            assert!(*found_by_probe);
        }
        _ => unreachable!(),
    }
}

#[test]
fn peer_reset_without_a_probe_out_is_not_found_by_probe() {
    let mut t = tracker();
    let ev = feed(
        &mut t,
        [
            rec(kind::RESET_RECEIVED, 1.0),
            close(1.0, tcp_state::ESTABLISHED, libc::ECONNRESET, 0),
        ],
    );
    match &death(&ev).what {
        What::Death { found_by_probe, .. } => assert!(!found_by_probe),
        _ => unreachable!(),
    }
}

#[test]
fn abort_on_close_waits_for_the_rst_that_follows_close() {
    let mut t = tracker();
    let ev = feed(&mut t, [close(9.0, tcp_state::ESTABLISHED, 0, 0)]);
    assert!(ev.is_empty(), "CLOSE alone must wait for a RST: {ev:?}");
    let ev = feed(&mut t, [reset_sent(9.0, ABORT_ON_CLOSE, flag::IN_CLOSE)]);
    let d = death(&ev);
    assert_eq!(d.reason(), Some(Reason::AbortOnClose));
    assert_eq!((d.pid, d.comm.as_deref()), (Some(4242), Some("server")));
}

#[test]
fn linger_zero_and_disconnect_share_a_kernel_reason() {
    let mut t = tracker();
    feed(&mut t, [close(1.0, tcp_state::ESTABLISHED, 0, 0)]);
    let ev = feed(&mut t, [reset_sent(1.0, TCP_STATE, flag::IN_CLOSE)]);
    assert_eq!(death(&ev).reason(), Some(Reason::AbortOnLinger));

    feed(&mut t, [close(2.0, tcp_state::ESTABLISHED, 0, 0)]);
    let ev = feed(&mut t, [reset_sent(2.0, TCP_STATE, 0)]);
    assert_eq!(death(&ev).reason(), Some(Reason::Disconnect));
}

#[test]
fn orderly_close_is_reported_at_destroy_or_after_the_grace_period() {
    let mut t = tracker();
    // The kernel sends when the socket was established with its close.
    let mut c = close(4.5, tcp_state::LAST_ACK, 0, 0);
    c.established_ns = 1_000_000_000;
    feed(&mut t, [c]);
    assert!(t.update(Msg::Tick(4_600_000_000)).is_empty());
    let ev = t.update(Msg::Tick(4_700_000_000));
    let d = death(&ev);
    assert_eq!(d.reason(), Some(Reason::Closed));
    match &d.what {
        What::Death {
            lifetime_s, state, ..
        } => {
            assert_eq!(*lifetime_s, Some(3.5));
            assert_eq!(*state, "LAST_ACK");
        }
        _ => unreachable!(),
    }
    assert_eq!(t.tracked(), 0);

    let mut t = tracker();
    feed(&mut t, [close(1.0, tcp_state::FIN_WAIT2, 0, 0)]);
    let ev = feed(&mut t, [rec(kind::DESTROY, 1.0)]);
    assert_eq!(death(&ev).reason(), Some(Reason::Closed));
    assert_eq!(t.tracked(), 0);
}

#[test]
fn a_close_by_the_keepalive_timer_is_its_timeout_even_with_its_rst_unseen() {
    let mut t = tracker();
    let mut c = close(5.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 3);
    c.flags |= flag::IN_KEEPALIVE_TIMER;
    let ev = feed(&mut t, [timer(4.0, 2, 3), c]);
    assert_eq!(death(&ev).reason(), Some(Reason::KeepaliveTimeout));
    let mut c = other(
        50_001,
        close(5.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 1),
    );
    c.flags |= flag::IN_KEEPALIVE_TIMER;
    c.user_timeout_ms = 2500;
    let ev = feed(&mut t, [c]);
    assert_eq!(death(&ev).reason(), Some(Reason::UserTimeout));
}

#[test]
fn retransmit_timeout_is_an_error_close_without_a_reset() {
    let mut t = tracker();
    let ev = feed(
        &mut t,
        [close(3.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 0)],
    );
    assert_eq!(death(&ev).reason(), Some(Reason::RetransmitTimeout));
}

#[test]
fn user_timeout_without_keepalive_is_judged_by_the_close_record() {
    // No keepalive timer run, no RST: the data went unacknowledged past
    // TCP_USER_TIMEOUT, and only the CLOSE record tells the setting.
    let mut t = tracker();
    let mut c = close(3.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 0);
    c.flags = 0;
    c.user_timeout_ms = 2500;
    let ev = feed(&mut t, [c]);
    assert_eq!(death(&ev).reason(), Some(Reason::UserTimeout));
    assert_eq!(
        death(&ev).keepalive.and_then(|k| k.user_timeout_ms),
        Some(2500)
    );
    assert_eq!(death(&ev).keepalive.map(|k| k.enabled), Some(false));
}

#[test]
fn the_settings_at_death_replace_those_seen_at_a_probe() {
    let mut t = tracker();
    let mut c = close(3.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 0);
    c.user_timeout_ms = 2500;
    c.ka_time = 5 * HZ;
    let ev = feed(&mut t, [timer(1.0, 0, 0), c]);
    assert_eq!(death(&ev).reason(), Some(Reason::UserTimeout));
    assert_eq!(death(&ev).keepalive.map(|k| k.idle_s), Some(5.0));
}

#[test]
fn keeps_the_tuple_when_the_kernel_already_zeroed_the_port() {
    let mut t = tracker();
    let mut c = close(3.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 0);
    c.sport = 0;
    let ev = feed(&mut t, [timer(1.0, 0, 0), c]);
    assert_eq!(death(&ev).sport, 6699);
}

#[test]
fn v4_mapped_ipv6_is_shown_as_ipv4() {
    let mut t = tracker();
    let mut r = timer(2.0, 0, 1);
    r.family = kat_common::AF_INET6;
    r.saddr = Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped().octets();
    r.daddr = "fd00:6b61:74::2"
        .parse::<Ipv6Addr>()
        .expect("addr")
        .octets();
    let ev = feed(&mut t, [r]);
    assert_eq!(ev[0].saddr.to_string(), "198.18.0.1");
    assert_eq!(ev[0].daddr.to_string(), "fd00:6b61:74::2");
}

#[test]
fn json_has_the_documented_shape() {
    let mut t = tracker();
    let ev = feed(&mut t, [timer(2.0, 0, 1)]);
    let v: serde_json::Value = serde_json::to_value(&ev[0]).expect("json");
    assert_eq!(v["type"], "probe");
    assert_eq!(v["probe"], 1);
    assert_eq!(v["probes_max"], 3);
    assert_eq!(v["saddr"], "198.18.0.1");
    assert_eq!(v["sport"], 6699);
    assert_eq!(v["daddr"], "198.18.0.2");
    assert_eq!(v["dport"], 40000);
    assert_eq!(v["keepalive"]["idle_from"], "socket");
    let ts = v["ts"].as_str().expect("ts");
    assert!(ts.ends_with('Z') && ts.contains('.'), "{ts}");
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok());
}

#[test]
fn kernels_without_reset_reasons_use_the_functions_on_the_stack() {
    let cases = [
        (context::TCP_CLOSE, Reason::AbortOnClose),
        (
            context::TCP_CLOSE | context::TCP_DISCONNECT,
            Reason::AbortOnLinger,
        ),
        (context::TCP_DISCONNECT, Reason::Disconnect),
        (context::OUT_OF_RESOURCES, Reason::AbortOnMemory),
        (context::KEEPALIVE_TIMER, Reason::KeepaliveTimeout),
        (0, Reason::Unknown),
    ];
    for (ctx, want) in cases {
        let mut t = Tracker::new(Setup {
            hz: HZ,
            reset_reasons: None,
            realtime_offset_ns: 0,
        });
        let mut rst = rec(kind::RESET_SENT, 2.0);
        rst.context = ctx;
        let ev = feed(&mut t, [close(2.0, tcp_state::ESTABLISHED, 0, 0), rst]);
        assert_eq!(death(&ev).reason(), Some(want), "context {ctx:#x}");
    }
}

#[test]
fn a_probe_seen_by_tcp_write_wakeup_counts_even_if_the_count_is_stale() {
    let mut t = tracker();
    let mut r = timer(2.0, 0, 0);
    r.flags |= flag::PROBE_SENT;
    let ev = feed(&mut t, [r]);
    assert_eq!(probes(&ev), [("probe", 1)]);
}

#[test]
fn a_closed_record_is_an_orderly_death_at_once_with_its_lifetime() {
    let mut t = tracker();
    let mut c = rec(kind::CLOSED, 3.0);
    c.state = tcp_state::CLOSE;
    c.old_state = tcp_state::FIN_WAIT2;
    c.established_ns = 500_000_000;
    let ev = feed(&mut t, [c]);
    let d = death(&ev);
    assert_eq!(d.reason(), Some(Reason::Closed));
    match &d.what {
        What::Death {
            lifetime_s, state, ..
        } => {
            assert_eq!(*lifetime_s, Some(2.5));
            assert_eq!(*state, "FIN_WAIT2");
        }
        _ => unreachable!(),
    }
    assert_eq!(t.tracked(), 0, "nothing kept for an orderly close");
}

#[test]
fn a_probe_is_asked_about_after_a_moment_then_less_and_less_often() {
    let mut t = tracker();
    feed(&mut t, [timer(2.0, 0, 1)]);
    let at = |s: f64| (s * 1e9) as u64;
    assert!(t.due_for_answer(at(2.1)).is_empty(), "not before 250 ms");
    assert_eq!(t.due_for_answer(at(2.25)).len(), 1);
    assert!(t.due_for_answer(at(2.4)).is_empty());
    assert_eq!(t.due_for_answer(at(2.5)).len(), 1, "then after 250 ms");
    assert!(t.due_for_answer(at(2.9)).is_empty(), "then after 500 ms");
    assert_eq!(t.due_for_answer(at(3.0)).len(), 1);
    let mut asked = 0;
    let mut now = 3.0;
    while now < 60.0 {
        now += 0.25;
        asked += t.due_for_answer(at(now)).len();
    }
    assert!(
        asked <= 16,
        "the wait stops doubling at 4 s: {asked} asks in 57 s"
    );
    assert!(asked >= 13, "but it keeps asking: {asked}");
    // A new probe starts over.
    feed(&mut t, [timer(61.0, 1, 2)]);
    assert!(t.due_for_answer(at(61.1)).is_empty());
    assert_eq!(t.due_for_answer(at(61.3)).len(), 1);
}

#[test]
fn kernel_reset_reasons_are_typed_once_at_start() {
    for (name, kind) in [
        ("TCP_KEEPALIVE_TIMEOUT", KernelReset::KeepaliveTimeout),
        ("TCP_ABORT_ON_CLOSE", KernelReset::AbortOnClose),
        ("TCP_ABORT_ON_LINGER", KernelReset::AbortOnLinger),
        ("TCP_ABORT_ON_MEMORY", KernelReset::AbortOnMemory),
        ("TCP_DISCONNECT_WITH_DATA", KernelReset::DisconnectWithData),
        ("TCP_STATE", KernelReset::State),
        ("NOT_SPECIFIED", KernelReset::NotSpecified),
        ("TCP_TIMEOUT", KernelReset::Other),
    ] {
        assert_eq!(KernelReset::of(name), kind, "{name}");
    }
    let t = tracker();
    assert_eq!(
        t.reset_reasons.get(&KEEPALIVE_TIMEOUT).map(|r| r.kind),
        Some(KernelReset::KeepaliveTimeout)
    );
    assert_eq!(
        t.reset_reasons.get(&TCP_STATE).map(|r| r.name.as_str()),
        Some("TCP_STATE"),
        "the event still names it as the kernel does"
    );
}

/// The same record for another socket on the same path (peer address and
/// port, namespace), from local port `sport`.
fn other(sport: u16, mut r: Record) -> Record {
    r.sk = SK + u64::from(sport);
    r.sport = sport;
    r
}

fn silence(events: &[Event]) -> Option<Silence> {
    match &death(events).what {
        What::Death { silence, .. } => *silence,
        _ => None,
    }
}

/// A timer run that found idle `idle_s` (not the run's time).
fn timer_idle(ts_s: f64, idle_s: f64, before: u8, after: u8) -> Record {
    let mut r = timer(ts_s, before, after);
    r.idle_jiffies = (idle_s * f64::from(HZ)) as u32;
    r
}

/// The NAT story: on this path probes after 1 s of silence are answered;
/// a socket whose first probe comes after 5 s dies unanswered.
#[test]
fn a_probe_unanswered_after_a_longer_silence_than_the_path_survives_is_suspect() {
    let mut t = tracker();
    let mut ev = feed(
        &mut t,
        [
            other(41000, timer_idle(1.0, 1.0, 0, 1)),
            other(41000, timer_idle(2.0, 1.0, 0, 1)),
            timer_idle(5.0, 5.0, 0, 1),
            timer_idle(6.0, 6.0, 1, 2),
            reset_sent(7.0, KEEPALIVE_TIMEOUT, flag::IN_KEEPALIVE_TIMER),
            close(7.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 2),
        ],
    );
    ev.retain(|e| e.sport == 6699);
    assert_eq!(death(&ev).reason(), Some(Reason::KeepaliveTimeout));
    let s = silence(&ev).expect("a silence");
    assert_eq!(s.idle_before_s, 5.0, "the first probe of the fatal run");
    assert_eq!(s.verdict, Some(Verdict::MiddleboxIdleDropSuspected));
    assert_eq!(s.survived_idle_s, Some(1.0));
}

#[test]
fn data_unanswered_after_a_silence_is_judged_by_the_close_record() {
    let closing = |t: &mut Tracker| {
        // Nothing received for 7.3 s; the data went 3 s ago; no keepalive.
        let mut c = close(10.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 0);
        c.flags = 0;
        c.user_timeout_ms = 3000;
        c.idle_jiffies = (7.3 * f64::from(HZ)) as u32;
        // Retransmitted until just now; first retransmitted 3 s ago.
        c.sent_jiffies = 0;
        c.retrans_ago_ms = 3000;
        c.srtt_us = 200;
        feed(t, [c])
    };
    let mut alone = tracker();
    let s = silence(&closing(&mut alone)).expect("a silence");
    assert!((s.idle_before_s - 4.3).abs() < 0.01, "{s:?}");
    assert_eq!(s.verdict, None, "no shorter silence answered on this path");

    let mut t = tracker();
    feed(
        &mut t,
        [
            other(41000, timer_idle(1.0, 1.0, 0, 1)),
            other(41000, timer_idle(2.0, 1.0, 0, 1)),
        ],
    );
    let s = silence(&closing(&mut t)).expect("a silence");
    assert_eq!(s.verdict, Some(Verdict::MiddleboxIdleDropSuspected));
}

/// A peer that restarted kills the next probe at the idle time its
/// answered probes had: no middlebox in that.
#[test]
fn a_restarted_peer_is_not_a_middlebox() {
    let mut t = tracker();
    let mut rst = rec(kind::RESET_RECEIVED, 3.01);
    rst.probes_after = 1;
    let ev = feed(
        &mut t,
        [
            timer_idle(1.0, 1.0, 0, 1),
            timer_idle(2.0, 1.0, 0, 1),
            timer_idle(3.0, 1.004, 0, 1),
            rst,
            close(3.01, tcp_state::ESTABLISHED, libc::ECONNRESET, 1),
        ],
    );
    assert_eq!(death(&ev).reason(), Some(Reason::PeerReset));
    let s = silence(&ev).expect("a silence");
    assert_eq!(s.verdict, None, "{s:?}");
}

#[test]
fn an_application_abort_or_a_close_has_no_silence() {
    let mut t = tracker();
    feed(
        &mut t,
        [
            other(41000, timer_idle(1.0, 1.0, 0, 1)),
            other(41000, timer_idle(2.0, 1.0, 0, 1)),
        ],
    );
    let mut c = close(9.0, tcp_state::ESTABLISHED, 0, 0);
    c.idle_jiffies = 9 * HZ;
    c.sent_jiffies = HZ;
    let ev = feed(&mut t, [c, reset_sent(9.0, ABORT_ON_CLOSE, 0)]);
    assert_eq!(death(&ev).reason(), Some(Reason::AbortOnClose));
    assert_eq!(silence(&ev), None);
}

#[test]
fn a_silence_of_a_few_round_trips_is_no_evidence() {
    let mut t = tracker();
    feed(
        &mut t,
        [
            other(41000, timer_idle(1.0, 0.1, 0, 1)),
            other(41000, timer_idle(2.0, 0.1, 0, 1)),
        ],
    );
    let mut c = close(10.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 0);
    c.idle_jiffies = HZ;
    c.sent_jiffies = HZ / 2;
    // A 0.5 s silence on a path with a 0.2 s round trip.
    c.srtt_us = 200_000;
    let s = silence(&feed(&mut t, [c])).expect("a silence");
    assert_eq!(s.verdict, None, "{s:?}");
}

/// A RST in answer to the first data after a silence, before any
/// retransmission: the silence runs to that one send.
#[test]
fn a_rst_answering_the_first_data_after_a_silence_measures_to_the_send() {
    let mut t = tracker();
    let mut c = close(20.0, tcp_state::ESTABLISHED, libc::ECONNRESET, 0);
    c.idle_jiffies = 20 * HZ;
    c.sent_jiffies = 0;
    c.srtt_us = 100;
    let ev = feed(&mut t, [rec(kind::RESET_RECEIVED, 20.0), c]);
    assert_eq!(death(&ev).reason(), Some(Reason::PeerReset));
    assert_eq!(silence(&ev).map(|s| s.idle_before_s), Some(20.0));
}

#[test]
fn the_paths_remembered_are_bounded() {
    let mut t = tracker();
    for port in 0..=PATHS_KEPT as u16 {
        let answered = |r: Record| {
            let mut r = other(port, r);
            r.dport = port;
            r
        };
        feed(
            &mut t,
            [
                answered(timer_idle(1.0, 1.0, 0, 1)),
                answered(timer_idle(2.0, 1.0, 0, 1)),
            ],
        );
    }
    assert_eq!(t.survived.len(), PATHS_KEPT);
}

#[test]
fn a_wall_clock_step_dates_the_events_after_it_by_the_new_clock() {
    let mut t = tracker();
    let first = feed(&mut t, [timer(10.0, 0, 1)]);
    // The wall clock is set an hour back between two probes.
    let back = 1_700_000_000_000_000_000 - 3_600 * 1_000_000_000;
    t.update(Msg::WallClock(back));
    let second = feed(&mut t, [timer(11.0, 1, 2)]);
    let (a, b) = (first[0].ts, second[0].ts);
    assert_eq!((a - b).num_milliseconds(), 3_600_000 - 1_000, "{a} {b}");
    assert_eq!(
        b.timestamp_nanos_opt(),
        Some((back + 11_000_000_000) as i64),
        "11 s of monotonic time on the new wall clock"
    );
}

#[test]
fn a_probe_count_that_jumps_counts_the_runs_no_record_told_of() {
    let mut t = tracker();
    feed(&mut t, [timer(2.0, 0, 1), timer(4.0, 2, 3)]);
    assert_eq!(t.unseen_timer_runs(), 1, "the run of probe 2");
    let mut killed = timer(6.0, 3, 3);
    killed.state = tcp_state::CLOSE;
    feed(&mut t, [killed]);
    assert_eq!(t.unseen_timer_runs(), 1, "the killing run follows probe 3");
}

#[test]
fn a_count_kat_never_saw_rise_or_an_answer_between_runs_is_no_loss() {
    let mut t = tracker();
    // Started while probes were out; then probes answered and sent anew.
    feed(
        &mut t,
        [timer(2.0, 2, 3), timer(3.0, 0, 1), timer(4.0, 1, 2)],
    );
    // A run that neither probes nor kills (the socket was busy) says
    // nothing of the runs before it.
    feed(&mut t, [timer(4.05, 2, 2)]);
    assert_eq!(t.unseen_timer_runs(), 0);
}

fn conntrack_forgot(events: &[Event]) -> Option<Forgotten> {
    match &death(events).what {
        What::Death {
            conntrack_forgot, ..
        } => *conntrack_forgot,
        _ => None,
    }
}

/// The keepalive death of the socket from local port `sport`, at 5 s.
fn keepalive_death(t: &mut Tracker, sport: u16) -> Vec<Event> {
    feed(
        t,
        [
            other(sport, timer(2.0, 0, 1)),
            other(sport, timer(3.0, 1, 2)),
            other(
                sport,
                close(4.0, tcp_state::ESTABLISHED, libc::ETIMEDOUT, 2),
            ),
            other(sport, rec(kind::DESTROY, 4.1)),
        ],
    )
}

#[test]
fn a_death_whose_flow_this_hosts_conntrack_forgot_says_so_from_either_end() {
    let mut t = tracker();
    let local: IpAddr = Ipv4Addr::new(198, 18, 0, 1).into();
    let remote: IpAddr = Ipv4Addr::new(198, 18, 0, 2).into();
    let nat: IpAddr = Ipv4Addr::new(198, 18, 9, 254).into();
    let tuple = |saddr, sport, daddr, dport| crate::conntrack::Tuple {
        saddr,
        sport,
        daddr,
        dport,
    };
    // The client's socket (local port 6701) in the original direction; the
    // server's (local port 6702, its peer the NAT's outside address) in the
    // reply direction of another flow.
    let client = crate::conntrack::Expired {
        ts: t.wall(1_500_000_000),
        netns: 7,
        orig: tuple(local, 6701, remote, 40000),
        reply: tuple(remote, 40000, nat, 6701),
        established_timeout_s: None,
    };
    let server = crate::conntrack::Expired {
        ts: t.wall(2_500_000_000),
        netns: 8,
        orig: tuple(nat, 50000, local, 6702),
        reply: tuple(local, 6702, remote, 40000),
        established_timeout_s: None,
    };
    assert!(t.update(Msg::Expired(client)).is_empty());
    assert!(t.update(Msg::Expired(server)).is_empty());

    let told = conntrack_forgot(&keepalive_death(&mut t, 6701));
    assert_eq!(
        told,
        Some(Forgotten {
            netns: 7,
            before_death_s: 2.5
        })
    );
    let told = conntrack_forgot(&keepalive_death(&mut t, 6702));
    assert_eq!(told.map(|f| f.netns), Some(8));
    assert_eq!(conntrack_forgot(&keepalive_death(&mut t, 6703)), None);
    let ev = keepalive_death(&mut t, 6701);
    assert_eq!(
        conntrack_forgot(&ev),
        None,
        "told once, to the death it preceded"
    );
}
