//! Bad input gets a clear message and a meaningful exit code.

use std::process::{Command, Output};

fn kat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kat"))
        .args(args)
        .output()
        .expect("run kat")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn invalid_ports_are_usage_errors() {
    for port in ["0", "65536", "ssh", "-1"] {
        let o = kat(&["trace", &format!("--port={port}")]);
        assert_eq!(o.status.code(), Some(2), "--port {port}: {}", stderr(&o));
        assert!(stderr(&o).contains("--port"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
}

#[test]
fn no_command_prints_usage() {
    let o = kat(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage"), "{}", stderr(&o));
}

#[test]
fn not_root_names_the_missing_privilege() {
    // As root, drop to nobody to see what an ordinary user sees.
    let o = if nix::unistd::geteuid().is_root() {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_kat"))
            .args(["trace", "--port", "6699"])
            .output()
            .expect("setpriv")
    } else {
        kat(&["trace", "--port", "6699"])
    };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs root") && err.contains("CAP_BPF"),
        "{err}"
    );
    assert!(err.contains("sudo kat trace"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
