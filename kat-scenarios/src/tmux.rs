//! A program in a real terminal: a detached tmux session of a given size,
//! its screen, keys sent to it, and its exit code once it ends.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux (Debian package tmux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Terminal {
    name: String,
    exit_file: PathBuf,
}

impl Terminal {
    /// Runs the shell `command` in a `width`×`height` terminal. The session
    /// outlives the command a little, so its last screen can be read.
    pub fn start(name: &str, command: &str, width: u16, height: u16) -> Self {
        let name = format!("{name}-{}", std::process::id());
        let exit_file = std::env::temp_dir().join(format!("{name}.exit"));
        let _ = std::fs::remove_file(&exit_file);
        // Written aside and renamed: a reader never sees the file created but still empty.
        let shell = format!(
            "{command}; echo $? > {0}.tmp; mv {0}.tmp {0}; sleep 30",
            exit_file.display()
        );
        let (w, h) = (width.to_string(), height.to_string());
        tmux(&["new-session", "-d", "-s", &name, "-x", &w, "-y", &h, &shell]);
        Self { name, exit_file }
    }

    /// The command's process: the pane's shell runs it as its child.
    pub fn pid(&self) -> Option<u32> {
        let shell = tmux(&["display-message", "-p", "-t", &self.name, "#{pane_pid}"]);
        let shell: u32 = shell.trim().parse().ok()?;
        let children =
            std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    pub fn screen(&self) -> String {
        tmux(&["capture-pane", "-p", "-t", &self.name])
    }

    /// Resizes the terminal, as a user dragging its window.
    pub fn resize(&self, width: u16, height: u16) {
        let (w, h) = (width.to_string(), height.to_string());
        tmux(&["resize-window", "-t", &self.name, "-x", &w, "-y", &h]);
    }

    pub fn keys(&self, keys: &str) {
        tmux(&["send-keys", "-t", &self.name, keys]);
    }

    /// Waits until the screen satisfies `pred`, and returns it.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "never {what}:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The command's exit code, once it has ended.
    pub fn exit_code(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(code) = std::fs::read_to_string(&self.exit_file) {
                return code.trim().to_string();
            }
            assert!(Instant::now() < deadline, "the program did not exit");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.name]);
        let _ = std::fs::remove_file(&self.exit_file);
    }
}
