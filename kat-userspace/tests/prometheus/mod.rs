//! A real Prometheus server (Debian's package, installed by `cargo xtask
//! setup`) for the tests that check what kat serves against what it saw.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A loopback port free now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The Prometheus server, stopped when dropped.
pub struct Prometheus {
    child: Child,
    api: String,
}

impl Prometheus {
    /// Scraping `target` every second; ready when its API says so.
    pub fn start(dir: &Path, target: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kat\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package, installed by cargo xtask setup)");
        let prometheus = Prometheus {
            child,
            api: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while ureq::get(format!("{}/-/ready", prometheus.api))
            .call()
            .is_err()
        {
            assert!(Instant::now() < deadline, "prometheus not ready in 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// An instant query's result: label set → value.
    pub fn query(&self, q: &str) -> Vec<(Value, f64)> {
        let body = ureq::get(format!("{}/api/v1/query", self.api))
            .query("query", q)
            .call()
            .expect("query")
            .body_mut()
            .read_to_string()
            .expect("body");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
