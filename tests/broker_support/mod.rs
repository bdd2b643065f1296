//! Starts the real `kcheck broker` binary on a free loopback port with a temp data dir.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    pub stderr_log: PathBuf,
}

impl Broker {
    /// Starts a broker; `listen` is `127.0.0.1:0` for a fresh port or a fixed address to
    /// restart on the same port.
    pub fn start(data_dir: &Path, listen: &str, extra: &[&str]) -> Broker {
        let stderr_log = data_dir.with_extension(format!(
            "stderr-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let stderr_file = std::fs::File::create(&stderr_log).expect("stderr log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kcheck"))
            .args(["broker", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr_file)
            .spawn()
            .expect("start kcheck broker");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.wait();
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("broker exited before listening; stderr:\n{log}");
            }
            if let Some(addr) = line.trim().strip_prefix("kcheck broker listening on ") {
                let addr = addr.to_owned();
                std::thread::spawn(move || for _ in reader.lines() {});
                return Broker {
                    child,
                    addr,
                    data_dir: data_dir.to_path_buf(),
                    stderr_log,
                };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("broker did not report its address");
    }

    /// SIGKILL: a crash, not a clean shutdown.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// External clients are optional locally but mandatory in CI: with `CI` set a missing client
/// fails the test; otherwise the test prints a notice and skips.
pub fn require(what: &str, available: bool, install: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required in CI but missing; install it with: {install}");
    }
    eprintln!(
        "SKIPPED: {what} not installed (install with: {install}); set CI=1 to make this a failure"
    );
    false
}

pub fn has_command(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn has_python_module(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// A child's stdout and stderr together, for assertion messages and for checks that do not
/// care which stream a line went to (`kcheck` prints harness failures on stderr).
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts a child's exit code, printing both streams when it differs, and returns its stdout.
pub fn expect_exit(o: &std::process::Output, code: i32) -> String {
    assert_eq!(o.status.code(), Some(code), "{}", output_text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Java and Debian's ZooKeeper (the ensemble tests' prerequisites): skip with a notice
/// without them, a failure in CI.
pub fn zookeeper_installed() -> bool {
    let found = kcheck_reference::zk_ensemble::available(Path::new("/usr/bin/java"));
    require(
        "Java and ZooKeeper",
        found.is_ok(),
        "DEBIAN_FRONTEND=noninteractive apt-get install -y zookeeper default-jre-headless",
    )
}
