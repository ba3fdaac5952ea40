//! Load for `cargo xtask bench`, in lab namespaces of its own (removed
//! when it exits). Every mode is bounded in time.
//!
//! kat-load storm --connections N [--silent S] [--keepalive IDLE,INTVL,COUNT]
//!                [--keepalive-every K] [--hold SECONDS]
//!   Holds N connections (keepalive on every K-th) plus S to ports that
//!   `silence` on stdin blackholes, spread over child processes (`storm-part`)
//!   that fit the open-files hard limit. Prints `ready connections=…
//!   silent=… client_ns=… server_ns=… client_netns=… silent_port=… processes=… setup_s=…`, then
//!   `silenced` after each `silence`; exits at end of stdin or after --hold.
//! kat-load churn --per-second R --max N --seconds T
//!   Opens and closes connections; prints `made N`.
//! kat-load needle [--port P]
//!   A keepalive_timeout death (port P+1) and a peer_reset found by a probe
//!   (port P), one lab each; prints one `{"expect":REASON,"netns":…,"dport":…}`
//!   line per death before it happens, and `done` once both are over.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kat_scenarios::load::{self, ChurnSpec, StormSpec};
use kat_scenarios::net::{keepalive, Net as _};
use kat_scenarios::netns::{Lab, SERVER_ADDR};

type Args = HashMap<String, String>;

fn parse(args: &[String]) -> Result<Args, String> {
    let mut map = Args::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let key = k
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {k:?}"))?;
        let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        map.insert(key.to_string(), v.clone());
    }
    Ok(map)
}

fn get<T: std::str::FromStr>(args: &Args, key: &str, default: T) -> Result<T, String> {
    match args.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("--{key} {v:?}: not valid")),
    }
}

fn inode(ns: &str) -> Result<u64, String> {
    kat_scenarios::ns::inode(ns).map_err(|e| format!("namespace {ns}: {e}"))
}

fn server() -> IpAddr {
    SERVER_ADDR.parse().unwrap_or(IpAddr::from([198, 18, 0, 2]))
}

/// Lines of stdin, read on a thread so the hold time still counts.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn keepalive_arg(args: &Args) -> Result<(u64, u64, u32), String> {
    let ka: Vec<u64> = get(args, "keepalive", "1,1,3".to_string())?
        .split(',')
        .map(|n| n.parse().map_err(|_| format!("--keepalive {n:?}")))
        .collect::<Result<_, _>>()?;
    match ka[..] {
        [idle, intvl, count] => Ok((
            idle,
            intvl,
            u32::try_from(count).map_err(|e| e.to_string())?,
        )),
        _ => Err("--keepalive IDLE,INTVL,COUNT".into()),
    }
}

/// Waits for the end of stdin or of `hold`, running `silence` for each
/// `silence` line.
fn hold_until_done(
    hold: Duration,
    mut silence: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let lines = stdin_lines();
    let deadline = Instant::now() + hold;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) if l.trim() == "silence" => {
                silence()?;
                println!("silenced");
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
}

/// One process's share of a storm (its sockets fit its open-files limit).
fn storm_part(args: &Args) -> Result<(), String> {
    let arg = |k: &str| args.get(k).cloned().ok_or_else(|| format!("--{k} missing"));
    let storm = load::storm(StormSpec {
        client_ns: Some(arg("client-ns")?),
        server_ns: arg("server-ns")?,
        server: server(),
        ports: vec![get(args, "port", 7300)?],
        connections: get(args, "connections", 0)?,
        silent: get(args, "silent", 0)?,
        silent_port: get(args, "silent-port", 7200)?,
        keepalive: keepalive_arg(args)?,
        keepalive_every: get(args, "keepalive-every", 1)?,
        setup_timeout: Duration::from_secs(120),
    })
    .map_err(|e| format!("storm: {e}"))?;
    println!("ready {}", storm.len());
    hold_until_done(Duration::from_secs(get(args, "hold", 60)?), || Ok(()))
}

/// A storm spread over processes of at most `per` connections each, the
/// silent ones on ports of their own from SILENT_PORTS on.
fn storm(args: &Args) -> Result<(), String> {
    const HEALTHY_PORTS: u16 = 7300;
    const SILENT_PORTS: u16 = 7200;
    let connections: usize = get(args, "connections", 1000)?;
    let silent: usize = get(args, "silent", 0)?;
    let hold: u64 = get(args, "hold", 60)?;
    let lab = Lab::new();
    let started = Instant::now();
    // Two sockets a connection, and some room for everything else.
    let per = (load::nofile_hard().saturating_sub(1024) / 2).clamp(500, 20_000) as usize;
    let mut shares = Vec::new();
    for (n, port_base, healthy) in [
        (connections, HEALTHY_PORTS, true),
        (silent, SILENT_PORTS, false),
    ] {
        for (k, first) in (0..n).step_by(per).enumerate() {
            shares.push((per.min(n - first), port_base + k as u16, healthy));
        }
    }
    let silent_parts = shares.iter().filter(|s| !s.2).count() as u16;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    for &(n, port, healthy) in &shares {
        let (conns, sil) = if healthy { (n, 0) } else { (0, n) };
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("storm-part")
            .args(["--client-ns", &lab.client, "--server-ns", &lab.server])
            .args([
                "--connections",
                &conns.to_string(),
                "--silent",
                &sil.to_string(),
            ])
            .args([
                "--port",
                &port.to_string(),
                "--silent-port",
                &port.to_string(),
            ])
            .args(["--hold", &(hold + 150).to_string()]);
        for key in ["keepalive", "keepalive-every"] {
            if let Some(v) = args.get(key) {
                cmd.arg(format!("--{key}")).arg(v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        parts.push((child, BufReader::new(out)));
    }
    let mut held = 0;
    for (_, out) in &mut parts {
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        held += line
            .trim()
            .strip_prefix("ready ")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or("a storm part did not get ready")?;
    }
    println!(
        "ready connections={held} silent={silent} client_ns={} server_ns={} client_netns={} silent_port={SILENT_PORTS} processes={} setup_s={:.1}",
        lab.client,
        lab.server,
        inode(&lab.client)?,
        parts.len(),
        started.elapsed().as_secs_f64()
    );
    let result = hold_until_done(Duration::from_secs(hold), || {
        if silent_parts == 0 {
            return Ok(());
        }
        load::silence(&lab.server, SILENT_PORTS, SILENT_PORTS + silent_parts - 1)
            .map_err(|e| format!("silence: {e}"))
    });
    for (mut child, _) in parts {
        // The end of its stdin ends a part.
        drop(child.stdin.take());
        let _ = child.wait();
    }
    result
}

fn churn(args: &Args) -> Result<(), String> {
    let lab = Lab::new();
    let c = load::churn(ChurnSpec {
        client_ns: Some(lab.client.clone()),
        server_ns: Some(lab.server.clone()),
        server: SocketAddr::new(server(), get(args, "port", 7400)?),
        per_second: get(args, "per-second", 1000)?,
        max: get(args, "max", 10_000)?,
        max_time: Duration::from_secs(get(args, "seconds", 10)?),
        keepalive: None,
        hold: Duration::ZERO,
        abort_every: 0,
    })
    .map_err(|e| format!("churn: {e}"))?;
    let seconds: u64 = get(args, "seconds", 10)?;
    std::thread::sleep(Duration::from_secs(seconds));
    println!("made {}", c.stop());
    Ok(())
}

/// One death of each kind, as the scenario suite makes them.
fn needle(args: &Args) -> Result<(), String> {
    let port: u16 = get(args, "port", 7500)?;
    let reset = std::thread::spawn(move || -> Result<Lab, String> {
        let lab = Lab::new();
        let a = SocketAddr::new(server(), port);
        let listener = lab.listen(a);
        let client = lab.connect(a, Box::new(|s| keepalive(s, 2, 1, 5)));
        let (server, _) = listener.accept().map_err(|e| e.to_string())?;
        println!(
            r#"{{"expect":"peer_reset","netns":{},"dport":{port}}}"#,
            inode(&lab.client)?
        );
        lab.restart_server(server, listener, &client);
        // The next probe, at 2 s idle, meets the RST.
        std::thread::sleep(Duration::from_secs(6));
        drop(client);
        Ok(lab)
    });
    let timeout = std::thread::spawn(move || -> Result<Lab, String> {
        let lab = Lab::new();
        let a = SocketAddr::new(server(), port + 1);
        let listener = lab.listen(a);
        let client = lab.connect(a, Box::new(|s| keepalive(s, 1, 1, 2)));
        let (server, _) = listener.accept().map_err(|e| e.to_string())?;
        println!(
            r#"{{"expect":"keepalive_timeout","netns":{},"dport":{}}}"#,
            inode(&lab.client)?,
            port + 1
        );
        lab.blackhole(&server);
        // Dead at idle + count × interval = 3 s.
        std::thread::sleep(Duration::from_secs(6));
        drop(client);
        Ok(lab)
    });
    for t in [reset, timeout] {
        t.join().map_err(|_| "a needle thread panicked")??;
    }
    println!("done");
    Ok(())
}

fn main() -> ExitCode {
    // Ctrl-C reaches the whole process group: leave it to the caller,
    // whose exit closes our stdin, so the namespaces are still removed.
    // SAFETY: SIG_IGN installs no handler code.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = argv.split_first() else {
        eprintln!("usage: kat-load storm|churn|needle [--key value]...");
        return ExitCode::from(2);
    };
    let result = parse(rest).and_then(|args| match mode.as_str() {
        "storm" => storm(&args),
        "storm-part" => storm_part(&args),
        "churn" => churn(&args),
        "needle" => needle(&args),
        other => Err(format!("unknown mode {other:?}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kat-load: {e}");
            ExitCode::FAILURE
        }
    }
}
