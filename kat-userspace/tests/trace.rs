//! `kat trace` on the running kernel: the scenario suite (kat-scenarios)
//! between network namespaces this test creates, with the real `kat`
//! binary choosing its lane as it would in production.

use kat_scenarios::{netns::Lab, KatCmd};

fn run(scenario: fn(&dyn kat_scenarios::Net, &KatCmd, u16), port: u16) {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let kat = KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    };
    scenario(&Lab::new(), &kat, port);
}

#[test]
fn healthy_idle_connection_has_its_probes_answered() {
    run(kat_scenarios::healthy_probes_answered, 6701);
}

#[test]
fn vanished_peer_ends_in_keepalive_timeout() {
    run(kat_scenarios::vanished_peer_keepalive_timeout, 6703);
}

#[test]
fn restarted_peer_is_found_by_a_probe() {
    run(kat_scenarios::restarted_peer_found_by_probe, 6705);
}

#[test]
fn close_with_unread_data_and_linger_zero_abort() {
    run(kat_scenarios::abort_on_close_and_linger, 6707);
}

#[test]
fn user_timeout_shorter_than_the_probes() {
    run(kat_scenarios::user_timeout, 6709);
}

#[test]
fn unacknowledged_data_ends_in_retransmit_timeout() {
    run(kat_scenarios::retransmit_timeout, 6711);
}

#[test]
fn orderly_close_is_shown_only_with_all() {
    run(kat_scenarios::orderly_close_only_with_all, 6713);
}

#[test]
fn port_filter_keeps_other_ports_out_in_the_kernel() {
    run(kat_scenarios::port_filter_in_kernel, 6715);
}

#[test]
fn ipv6_connections_are_traced_too() {
    run(kat_scenarios::ipv6, 6717);
}

#[test]
fn kat_record_keeps_the_death_and_kat_report_names_it() {
    run(kat_scenarios::recorded_death_in_the_journal, 6719);
}

#[test]
fn orderly_closes_are_counted_in_the_kernel() {
    run(kat_scenarios::orderly_closes_counted_in_the_kernel, 6723);
}

#[test]
fn a_probe_carries_the_pid_and_comm_of_the_socket_holder() {
    run(kat_scenarios::probe_names_its_owner, 6721);
}

#[test]
fn a_keepalive_death_is_not_lost_in_a_churn_of_connections() {
    run(kat_scenarios::keepalive_death_during_churn, 6725);
}

/// Every scenario of the suite has a test above.
#[test]
fn the_suite_is_covered() {
    assert_eq!(kat_scenarios::SCENARIOS.len(), 13);
}
