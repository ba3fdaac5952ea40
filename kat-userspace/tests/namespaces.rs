//! kat never holds on to a network namespace deleted under it (root): a
//! sock_diag socket made inside a namespace keeps it alive, so one kat
//! holds for answers there is closed once unused. Here the server's end of
//! a lab connection probes, so kat asks in the server's namespace; then
//! the namespace is deleted, and its veth must go within 10 s (the lab
//! asserts it) while kat goes on running.

use std::time::Duration;

use kat_scenarios::netns::Lab;
use kat_scenarios::{keepalive, Kat, KatCmd, Net, Side};

const PORT: u16 = 6949;

#[test]
fn a_namespace_deleted_under_kat_is_let_go() {
    if !kat_scenarios::root_or_skip() {
        return;
    }
    let cmd = KatCmd {
        binary: env!("CARGO_BIN_EXE_kat").to_string(),
        lane: None,
    };
    let mut kat = Kat::trace(&cmd, &["--port", &PORT.to_string()], &[]);
    let lab = Lab::new();
    let addr = std::net::SocketAddr::new(lab.server_addr(false), PORT);
    let listener = lab.listen(addr);
    let client = lab.connect(addr, Box::new(|_| {}));
    let (server, _) = listener.accept().expect("accept");
    keepalive(&socket2::SockRef::from(&server), 1, 1, 3);
    kat.wait_for(
        "the server's probe answered",
        Duration::from_secs(10),
        |v| lab.is(v, "probe_answered", Side::Server, PORT),
    );
    lab.restart_server(server, listener, &client);
    let (status, _, stderr) = kat.stop();
    assert!(status.success(), "kat exited with {status}: {stderr:#?}");
}
