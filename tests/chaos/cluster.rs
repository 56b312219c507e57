//! Three real `baseaim-worker serve` processes on one database, reached through a [`PgProxy`] so
//! the harness can cut the database, each killable with SIGKILL and restartable on its port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::{PgProxy, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_baseaim-worker");

/// One node slot: a fixed port, and the process currently serving it (if any).
pub struct NodeProc {
    pub port: u16,
    child: Option<Child>,
    /// How many processes this slot has had (each writes its own log file).
    pub generation: u32,
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    client: reqwest::Client,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

impl Cluster {
    /// `env` is what every node gets (database through the proxy, simulators, secrets, tuning).
    pub fn new(db: &TestDb, proxy: &PgProxy, n: usize, env: Vec<(String, String)>) -> Self {
        let mut env = env;
        env.push(("DATABASE_URL".into(), db.url_via(proxy.addr)));
        let log_dir = std::env::temp_dir().join(format!("baw-chaos-{}", db.name));
        std::fs::create_dir_all(&log_dir).expect("log dir");
        Cluster {
            nodes: (0..n)
                .map(|_| NodeProc {
                    port: free_port(),
                    child: None,
                    generation: 0,
                })
                .collect(),
            env,
            log_dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
        }
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nodes[i].port)
    }

    /// Starts the process of slot `i` (its stdout and stderr go to a log file of its own).
    pub fn spawn(&mut self, i: usize) {
        let slot = &mut self.nodes[i];
        slot.generation += 1;
        let log = self
            .log_dir
            .join(format!("node{i}-{:02}.log", slot.generation));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("BAW__HTTP__BIND", format!("127.0.0.1:{}", slot.port))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        slot.child = Some(cmd.spawn().expect("spawn baseaim-worker serve"));
    }

    /// Waits until slot `i` answers `/readyz` 200 (the database is reachable and migrated).
    pub async fn wait_ready(&self, i: usize, secs: u64) -> bool {
        let url = self.url(i, "/readyz");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = self.client.get(&url).send().await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// `kill -9` (SIGKILL: no shutdown path runs) and reap.
    pub async fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Every process still alive (none died on its own); the ids of slots whose process exited.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut dead = Vec::new();
        for (i, slot) in self.nodes.iter_mut().enumerate() {
            if let Some(child) = slot.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                dead.push((i, status.to_string()));
            }
        }
        dead
    }

    /// SIGTERM every node and waits for it (graceful stop), so their logs are complete.
    pub async fn stop_all(&mut self) {
        for slot in &mut self.nodes {
            if let Some(mut child) = slot.child.take() {
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status();
                }
                if tokio::time::timeout(Duration::from_secs(40), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
    }

    /// Every line every process wrote so far.
    pub fn logs(&self) -> String {
        read_logs(&self.log_dir)
    }
}

pub fn read_logs(dir: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect::<Vec<_>>()
        .join("\n")
}
