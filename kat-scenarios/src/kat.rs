//! A running `kat trace --json` (its events collected as they come) or
//! `kat record`, and `kat report` over what it recorded.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::spawn::starting;

/// How to start kat: which binary, which lane.
#[derive(Debug, Clone)]
pub struct KatCmd {
    pub binary: String,
    /// `--lane`; None lets kat choose.
    pub lane: Option<String>,
}

pub struct Kat {
    child: Child,
    events: Receiver<Value>,
    pub seen: Vec<Value>,
    stderr: Receiver<String>,
    /// The line kat said it was ready with (it names the lanes).
    pub started: String,
}

/// How long kat may take to load and attach (TCG virtual machines are slow).
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Kat {
    /// `kat trace --json ARGS`, once its programs are attached.
    pub fn trace(cmd: &KatCmd, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        Self::start(cmd, "trace", &all, env, "kat: tracing")
    }

    /// `kat record --dir DIR ARGS`, once it records.
    pub fn record(cmd: &KatCmd, dir: &Path, args: &[&str]) -> Self {
        let dir = dir.to_string_lossy();
        let mut all = vec!["--dir", dir.as_ref()];
        all.extend_from_slice(args);
        Self::start(cmd, "record", &all, &[], "kat: recording to ")
    }

    /// `kat record --stdout ARGS` without a journal directory, its lines
    /// read as events.
    pub fn record_to_stdout(cmd: &KatCmd, args: &[&str]) -> Self {
        let mut all = vec!["--stdout"];
        all.extend_from_slice(args);
        Self::start(cmd, "record", &all, &[], "kat: recording to ")
    }

    fn start(
        cmd: &KatCmd,
        subcommand: &str,
        args: &[&str],
        env: &[(&str, &str)],
        ready: &str,
    ) -> Self {
        let mut command = Command::new(&cmd.binary);
        command.arg(subcommand).args(args);
        if let Some(lane) = &cmd.lane {
            command.args(["--lane", lane]);
        }
        // Until kat says it is ready: see crate::spawn.
        let starting = starting();
        let mut child = command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kat");
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("kat printed a non-JSON line {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        // Ready once the programs are attached.
        let deadline = Instant::now() + START_TIMEOUT;
        let started = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stderr.recv_timeout(left) {
                Ok(l) if l.starts_with(ready) => break l,
                Ok(l) => eprintln!("kat stderr: {l}"),
                Err(_) => panic!("kat {subcommand} did not start within {START_TIMEOUT:?}"),
            }
        };
        drop(starting);
        Kat {
            child,
            events,
            seen: Vec::new(),
            stderr,
            started,
        }
    }

    /// kat's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an event matching `pred`, keeping every event seen.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        match self.wait_until(timeout, pred) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "no {what} within {timeout:?}; events seen: {:#?}",
                    self.seen
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("kat exited before {what}; events seen: {:#?}", self.seen)
            }
        }
    }

    /// The same, telling rather than failing when none comes.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, RecvTimeoutError> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Ok(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.events.recv_timeout(left)?;
            self.seen.push(v.clone());
            if pred(&v) {
                return Ok(v);
            }
        }
    }

    /// Collects whatever arrives during `d`.
    pub fn collect_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
    }

    /// Stops kat with SIGINT; returns its exit status, all events and
    /// what it printed on stderr after starting.
    pub fn stop(self) -> (ExitStatus, Vec<Value>, Vec<String>) {
        self.stop_with(Signal::SIGINT)
    }

    /// Stops kat with `signal` (SIGKILL: a crash).
    pub fn stop_with(mut self, signal: Signal) -> (ExitStatus, Vec<Value>, Vec<String>) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let status = self.child.wait().expect("wait kat");
        while let Ok(v) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(v);
        }
        let stderr = self.stderr.try_iter().collect();
        (status, std::mem::take(&mut self.seen), stderr)
    }
}

/// What `kat doctor --json` says about this kernel.
pub fn doctor(cmd: &KatCmd) -> Value {
    let o = {
        let _starting = starting();
        Command::new(&cmd.binary)
            .args(["doctor", "--json"])
            .output()
            .expect("kat doctor")
    };
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "kat doctor --json: {e}: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// `kat report --dir DIR --json ARGS`, which must succeed.
pub fn report(cmd: &KatCmd, dir: &Path, args: &[&str]) -> Value {
    let o = {
        let _starting = starting();
        Command::new(&cmd.binary)
            .arg("report")
            .arg("--dir")
            .arg(dir)
            .arg("--json")
            .args(args)
            .output()
            .expect("kat report")
    };
    assert!(
        o.status.success(),
        "kat report {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("report JSON")
}

impl Drop for Kat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing scenario shows what kat said.
        if std::thread::panicking() {
            for line in self.stderr.try_iter() {
                eprintln!("kat stderr: {line}");
            }
        }
    }
}

/// Seconds since the Unix epoch of an event's `ts`.
pub fn ts(v: &Value) -> f64 {
    let s = v["ts"].as_str().expect("ts");
    let t = chrono::DateTime::parse_from_rfc3339(s).expect("RFC 3339 ts");
    t.timestamp_millis() as f64 / 1000.0
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}
