//! The workloads: nginx on loopback driven by wrk (a new connection per
//! request), and kat-load (kat-scenarios) in lab namespaces of its own.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::proc::TempDir;

/// nginx 1.22, one worker, `keepalive_timeout 0`, a small file, on
/// 127.0.0.1, with its own prefix in a temp dir; stopped on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Nginx {
    pub fn start() -> Result<Self> {
        let dir = TempDir::new("nginx")?;
        let p = dir.0.display().to_string();
        // A free port now; nginx takes it a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        fs::create_dir_all(dir.0.join("www"))?;
        fs::write(dir.0.join("www/small.txt"), "kat bench\n".repeat(10))?;
        let conf = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               keepalive_timeout 0;\n\
               client_body_temp_path {p}/body;\n\
               proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n\
               uwsgi_temp_path {p}/uwsgi;\n\
               scgi_temp_path {p}/scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {p}/www; }}\n\
             }}\n"
        );
        fs::write(dir.0.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .args(["-p", &p, "-c", &format!("{p}/nginx.conf")])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx (Debian package nginx-light)")?;
        let n = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/small.txt", self.port)
    }

    /// `wrk -t1 -c50 -dNs -H 'Connection: close'`, started.
    pub fn wrk(&self, seconds: u64) -> Result<Child> {
        Command::new("wrk")
            .args([
                "-t1",
                "-c50",
                &format!("-d{seconds}s"),
                "-H",
                "Connection: close",
            ])
            .arg(self.url())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start wrk (Debian package wrk)")
    }
}

/// Requests a second in wrk's output.
pub fn requests_per_second(wrk: Child) -> Result<f64> {
    let out = wrk.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its worker too (SIGKILL would not).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `kat-load MODE ARGS`: its stdout lines; it ends at the end of
/// its stdin (on drop) or by itself.
pub struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Load {
    pub fn start(bin: &Path, mode: &str, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg(mode)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().context("kat-load stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    /// The next line, within `timeout`; None once kat-load has ended.
    pub fn line(&self, timeout: Duration) -> Result<Option<String>> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(Some(l)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("kat-load said nothing for {timeout:?}"),
        }
    }

    /// The next line, which must start with `prefix`.
    pub fn expect(&self, prefix: &str, timeout: Duration) -> Result<String> {
        match self.line(timeout)? {
            Some(l) if l.starts_with(prefix) => Ok(l),
            Some(l) => bail!("kat-load: expected {prefix:?}, got {l:?}"),
            None => bail!("kat-load ended before {prefix:?}"),
        }
    }

    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("kat-load stdin closed")?;
        writeln!(stdin, "{line}")?;
        Ok(())
    }

    /// Waits for kat-load to end by itself.
    pub fn wait(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("kat-load did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // The end of its stdin: it removes its namespaces and exits.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from a kat-load `ready` line.
pub fn field<'a>(line: &'a str, key: &str) -> Result<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key} in {line:?}"))
}

/// A number from a kat-load `ready` line.
pub fn number(line: &str, key: &str) -> Result<f64> {
    field(line, key)?
        .parse()
        .with_context(|| format!("{key} in {line:?}"))
}
