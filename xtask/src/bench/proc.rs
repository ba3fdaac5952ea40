//! Processes under measurement: kat started and stopped by signal, its CPU
//! time and peak memory from /proc, and programs in a real terminal (tmux).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// Clock ticks a second of /proc/PID/stat's times.
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // The command name may hold spaces: fields count from after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the list starts at field 3.
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .context("unexpected /proc/PID/stat")
    };
    Ok((tick(14)? + tick(15)?) / clk_tck())
}

/// A memory figure of /proc/PID/status (`VmHWM`, `VmRSS`), in MiB.
fn status_mib(pid: u32, field: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field}"))?;
    Ok(kib / 1024.0)
}

/// Peak resident memory (VmHWM) of a process, in MiB.
pub fn hwm_mib(pid: u32) -> Result<f64> {
    status_mib(pid, "VmHWM")
}

/// Resident memory now (VmRSS) of a process, in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    status_mib(pid, "VmRSS")
}

/// CPU use of a process over a window, as % of one core.
pub struct CpuWindow {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> Result<Self> {
        Ok(Self {
            pid,
            cpu: cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    pub fn percent(&self) -> Result<f64> {
        let used = cpu_seconds(self.pid)? - self.cpu;
        Ok(100.0 * used / self.at.elapsed().as_secs_f64())
    }
}

/// Waits until `file` has a line starting with `prefix`.
pub fn wait_line(file: &Path, prefix: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(prefix)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no {prefix:?} in {} within {timeout:?}: {text}",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long kat may take to stop (today's kat drains a backlog first).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The line `Kat::stop` adds when it had to kill kat.
pub const KILLED: &str = "xtask: kat did not stop within 60 s and was killed";

/// A kat process (trace or record) with stdout and stderr in files.
pub struct Kat {
    child: Child,
    pub stderr: PathBuf,
}

impl Kat {
    /// Starts `kat ARGS` and waits for its start-up line (`ready`).
    pub fn start(
        kat: &Path,
        args: &[&str],
        stdout: Option<&Path>,
        stderr: PathBuf,
        ready: &str,
    ) -> Result<Self> {
        let out = match stdout {
            Some(p) => Stdio::from(fs::File::create(p)?),
            None => Stdio::null(),
        };
        let child = Command::new(kat)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {}", kat.display()))?;
        let k = Self { child, stderr };
        wait_line(&k.stderr, ready, Duration::from_secs(30))?;
        Ok(k)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops kat with `signal` (its clean stop) and returns its stderr;
    /// a kat still busy after STOP_TIMEOUT is killed, and that is said
    /// on the last line.
    pub fn stop(mut self, signal: &str) -> Result<String> {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut killed = false;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut err = fs::read_to_string(&self.stderr).unwrap_or_default();
        if killed {
            err.push_str(&format!("{KILLED} after SIG{signal}\n"));
        }
        Ok(err)
    }
}

impl Drop for Kat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A detached tmux session running one program (exec'd, so the pane's
/// process is the program); killed on drop.
pub struct Tmux {
    name: String,
}

fn tmux(args: &[&str]) -> Result<String> {
    let o = Command::new("tmux").args(args).output().context("tmux")?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl Tmux {
    pub fn start(name: &str, command: &str) -> Result<Self> {
        let name = format!("{name}-{}", std::process::id());
        let shell = format!("exec {command}");
        crate::run(Command::new("tmux").args([
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "160",
            "-y",
            "45",
            &shell,
        ]))?;
        Ok(Self { name })
    }

    pub fn pid(&self) -> Result<u32> {
        tmux(&["display-message", "-p", "-t", &self.name, "#{pane_pid}"])?
            .trim()
            .parse()
            .context("no pane pid")
    }

    pub fn screen(&self) -> Result<String> {
        tmux(&["capture-pane", "-p", "-t", &self.name])
    }

    pub fn keys(&self, keys: &str) -> Result<String> {
        tmux(&["send-keys", "-t", &self.name, keys])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.name]);
    }
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("kat-bench-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
