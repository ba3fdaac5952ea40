//! The NAT story on the running kernel: a masquerading router namespace
//! that forgets idle flows in seconds, between a client and a server
//! namespace this test creates (kat_scenarios::nat).

use kat_scenarios::nat::{self, Nat};
use kat_scenarios::KatCmd;

#[test]
fn nat_forgets_idle_flows() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let nat = Nat::new(&format!("kat{}", std::process::id()), nat::FORGETS_S).expect("the NAT lab");
    let kat = KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    };
    nat::nat_forgets_idle_flows(&nat, &kat, 6795, 1.0);
}
