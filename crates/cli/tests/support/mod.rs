//! Test support: a real `strata server` process on loopback with a temporary data directory,
//! and helpers to run the `strata` CLI and the real NBD clients against it.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod nbd_client;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `strata` binary built for these tests.
pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// Whether an external program is installed; tests that need it fail loudly if not, since
/// `.ci/run` installs every one of them.
pub fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed; run .ci/run or apt-get install qemu-utils libnbd-bin fio"
    );
}

/// A `strata server` child process. Killed when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// The API base URL.
    pub api: String,
    /// The NBD address, `127.0.0.1:PORT`.
    pub nbd: String,
    /// The server-to-server address, `127.0.0.1:PORT`.
    pub peer: String,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl ServerProcess {
    /// Starts a new server (a new management group) in a fresh temporary directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Self::spawn(&dir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0");
        s._tmp = Some(tmp);
        s
    }

    fn spawn(dir: &Path, api: &str, nbd: &str, peer: &str) -> Self {
        let mut child = Command::new(strata_bin())
            .args(["server", "--data-dir"])
            .arg(dir)
            .args(["--api", api, "--nbd", nbd, "--peer", peer, "--bootstrap"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata server");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("serving: API") {
                    let _ = tx.send(line.clone());
                }
                eprintln!("[server] {line}");
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server printed its addresses within 60 s");
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| {
            let i = words.iter().position(|w| *w == key).expect("address key");
            words[i + 1].to_string()
        };
        Self {
            child: Some(child),
            api: after("API"),
            nbd: after("NBD"),
            peer: after("PEER"),
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// `nbd://HOST:PORT/EXPORT`.
    pub fn url(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.nbd)
    }

    /// Kills the server with SIGKILL and waits for it to die.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again from the same directory on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        let api = self.api.trim_start_matches("http://").to_string();
        let nbd = self.nbd.clone();
        let peer = self.peer.clone();
        let tmp = self._tmp.take();
        let mut again = None;
        // The old sockets may linger for a moment after the kill.
        for _ in 0..50 {
            match std::panic::catch_unwind(|| Self::spawn(&self.dir, &api, &nbd, &peer)) {
                Ok(s) => {
                    again = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        *self = again.expect("server restarted");
        self._tmp = tmp;
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(strata_bin())
            .args(args)
            .env("STRATA_API", &self.api)
            .output()
            .expect("run strata")
    }

    /// Runs the CLI and returns its stdout; panics with stderr if it failed.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a volume of `size` (e.g. `64MiB`).
    pub fn create_volume(&self, name: &str, size: &str) {
        self.cli_ok(&["volume", "create", name, "--size", size]);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a program and returns its output; panics with its stderr if it failed.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program expecting it to fail; returns stdout and stderr together.
pub fn run_err(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || text.contains("failed"),
        "{program} {args:?} should fail: {text}"
    );
    text
}

/// `nbdinfo --map` of `url`: the ranges reported as data (not holes), checking that the
/// extents are contiguous and cover exactly `size` bytes.
pub fn data_extents(url: &str, size: u64) -> Vec<(u64, u64)> {
    let map = run_ok("nbdinfo", &["--map", "--json", url]);
    let extents: serde_json::Value = serde_json::from_str(&map).expect("nbdinfo JSON");
    let mut data = Vec::new();
    let mut covered = 0u64;
    for e in extents.as_array().expect("a list of extents") {
        let field = |k: &str| e[k].as_u64().expect("a number");
        let (off, len, ty) = (field("offset"), field("length"), field("type"));
        assert_eq!(off, covered, "extents are contiguous: {map}");
        covered += len;
        if ty & 1 == 0 {
            data.push((off, len));
        }
    }
    assert_eq!(covered, size, "extents cover the export: {map}");
    data
}
