//! A PostgreSQL server of the chaos test's own (initdb in a temporary directory, on a free port),
//! so the test can crash and restart a real server without disturbing the tests that share the
//! machine's server. Uses the machine's PostgreSQL binaries; as root, runs them as `postgres`
//! (initdb refuses root).

use std::path::PathBuf;
use std::process::Command;

pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePg {
    /// Creates and starts the server; None (with the reason printed) when the machine cannot.
    pub fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()?;
        let dir = tempfile::Builder::new()
            .prefix("baw-chaos-pg")
            .tempdir()
            .ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let pg = PrivatePg { dir, bin, port };
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .ok()?;
            if !status.success() {
                eprintln!("private PostgreSQL: cannot hand the directory to `postgres`");
                return None;
            }
        }
        let data = pg.data();
        let init = pg
            .run("initdb")
            .args(["-A", "trust", "-U", "root", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .ok()?;
        if !init.status.success() {
            eprintln!(
                "private PostgreSQL: initdb failed: {}",
                String::from_utf8_lossy(&init.stderr)
            );
            return None;
        }
        pg.pg_ctl_start().then_some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command running `tool` from the server's binaries, as `postgres` when we are root.
    fn run(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl_start(&self) -> bool {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        self.run("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("log"))
            .arg("start")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The server's URL (trust auth, user `root`).
    pub fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}", self.port)
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: every backend killed, no checkpoint, what a
    /// power cut or an OOM kill leaves) and starts it again; it recovers from its WAL.
    pub fn crash_and_restart(&self) -> bool {
        let stopped = self
            .run("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .is_ok_and(|o| o.status.success());
        stopped && self.pg_ctl_start()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .run("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
