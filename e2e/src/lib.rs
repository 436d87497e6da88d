//! Harness for the end-to-end tests: starts a real `cuwired` and runs real
//! client programs (C against `cuda.h`, Python through `cuda.bindings.driver`)
//! with the shim standing in for `libcuda.so.1`.
//!
//! Binaries are taken from the target dir of the test executable
//! (`target/<profile>/deps/<test>-<hash>` → `target/<profile>/cuwired` and
//! `target/<profile>/libcuda.so`); `cargo build --workspace` makes them.
//!
//! The client toolchain (`cuda.h` from the `nvidia-cuda-runtime-cu12` wheel,
//! `cuda-bindings`) comes from `<repo>/.venv`, made by
//! `scripts/setup-test-deps.sh`; `CUWIRE_PYTHON` and `CUWIRE_CUDA_INCLUDE`
//! override the locations. When it is missing a test is skipped with a
//! `SKIPPED:` line, or fails when `CUWIRE_REQUIRE_CLIENTS=1`.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long `Server::start` waits for the env file.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Default limit for one client run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

/// `e2e/clients/`.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// `target/<profile>`, found from the running test executable.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// A workspace build product in `target/<profile>/`; panics with what to do
/// when it is missing.
pub fn built(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    if !path.exists() {
        panic!("{} is missing: run `cargo build --workspace` (same profile as the tests) first", path.display());
    }
    path
}

/// `target/<profile>/cuwired`.
pub fn cuwired_path() -> PathBuf {
    built("cuwired")
}

/// `target/<profile>/libcuda.so` (the shim).
pub fn shim_path() -> PathBuf {
    built("libcuda.so")
}

/// `target/<profile>/e2e/<kind>-<pid>`, for this test process; directories of
/// earlier test processes that are gone are removed on the way.
fn process_dir(kind: &str) -> PathBuf {
    let base = profile_dir().join("e2e");
    let prefix = format!("{kind}-");
    for entry in fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// `target/<profile>/e2e/<kind>-<pid>`: a directory of this test process for what a test
/// builds (removed once the process is gone, by a later test process).
pub fn build_dir(kind: &str) -> PathBuf {
    process_dir(kind)
}

/// Replaces (or creates) a symlink atomically.
fn symlink_force(target: &Path, link: &Path) {
    let tmp = link.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap_or_else(|e| panic!("symlink {}: {e}", tmp.display()));
    fs::rename(&tmp, link).unwrap_or_else(|e| panic!("rename to {}: {e}", link.display()));
}

/// A directory holding `libcuda.so.1` and `libcuda.so`, symlinks to the shim:
/// what goes on `LD_LIBRARY_PATH` (and `-L` when linking clients).
pub fn shim_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shim = shim_path();
        let dir = process_dir("shim");
        symlink_force(&shim, &dir.join("libcuda.so.1"));
        symlink_force(&shim, &dir.join("libcuda.so"));
        dir
    })
    .clone()
}

// ---------------------------------------------------------------------------
// The server

/// A running `cuwired --dev <tmp>/certs --listen 127.0.0.1:0 …`, killed on drop.
pub struct Server {
    child: Mutex<Child>,
    tmp: tempfile::TempDir,
    certs: PathBuf,
    log_path: PathBuf,
    env: HashMap<String, String>,
}

/// Parses `export KEY=VALUE` lines (quotes around VALUE optional).
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line).trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// The variables the env file must define.
pub const ENV_KEYS: [&str; 4] = ["CUWIRE_SERVER", "CUWIRE_CA", "CUWIRE_CERT", "CUWIRE_KEY"];

impl Server {
    /// Starts `cuwired --dev <tmp>/certs --listen 127.0.0.1:0 ARGS…` and waits
    /// (at most 20 s) for `<tmp>/certs/env`, which cuwired writes once listening.
    pub fn start(args: &[&str]) -> Server {
        let tmp = tempfile::Builder::new().prefix("cuwire-e2e-").tempdir().expect("tempdir");
        let certs = tmp.path().join("certs");
        Self::spawn(tmp, certs, "127.0.0.1:0", args)
    }

    /// Starts `cuwired --dev CERTS --listen LISTEN ARGS…` on an existing `--dev` directory (the
    /// certificates there are kept, so clients of an earlier server on it are trusted), e.g. to
    /// restart a killed server on the same address. A stale `CERTS/env` is removed first, so
    /// the wait is for this server's. The log goes to a temporary directory of its own.
    pub fn start_at(certs: &Path, listen: &str, args: &[&str]) -> Server {
        let tmp = tempfile::Builder::new().prefix("cuwire-e2e-").tempdir().expect("tempdir");
        let _ = fs::remove_file(certs.join("env"));
        Self::spawn(tmp, certs.to_path_buf(), listen, args)
    }

    fn spawn(tmp: tempfile::TempDir, certs: PathBuf, listen: &str, args: &[&str]) -> Server {
        let exe = cuwired_path();
        let log_path = tmp.path().join("cuwired.log");
        let log = fs::File::create(&log_path).expect("creating the server log");
        let mut cmd = Command::new(&exe);
        cmd.arg("--dev")
            .arg(&certs)
            .args(["--listen", listen])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut server = Server { child: Mutex::new(child), tmp, certs, log_path, env: HashMap::new() };
        let env_file = server.certs.join("env");
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if let Ok(text) = fs::read_to_string(&env_file) {
                let env = parse_env_file(&text);
                if ENV_KEYS.iter().all(|k| env.contains_key(*k)) {
                    server.env = env;
                    break;
                }
            }
            if !server.is_running() {
                panic!(
                    "cuwired {args:?} exited before writing {} ({:?}); its log:\n{}",
                    env_file.display(),
                    server.child.lock().unwrap().try_wait(),
                    server.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "cuwired {args:?} did not write a complete {} within {:?}; its log:\n{}",
                    env_file.display(),
                    SERVER_START_TIMEOUT,
                    server.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The settings from the env file (`CUWIRE_SERVER`, `CUWIRE_CA`,
    /// `CUWIRE_CERT`, `CUWIRE_KEY`).
    pub fn env(&self) -> &HashMap<String, String> {
        &self.env
    }

    /// `CUWIRE_SERVER` as an address.
    pub fn addr(&self) -> SocketAddr {
        let s = &self.env["CUWIRE_SERVER"];
        s.parse().unwrap_or_else(|e| panic!("CUWIRE_SERVER={s:?} is not an address: {e}"))
    }

    /// The `--dev` certificate directory.
    pub fn certs_dir(&self) -> &Path {
        &self.certs
    }

    /// The temporary directory of this server (certs/, cuwired.log).
    pub fn tmp_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Everything the server wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path.display()))
    }

    /// The log as soon as `ready` holds for it, or as it is once `timeout` has passed (the
    /// caller asserts what it needed).
    pub fn log_once(&self, timeout: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if ready(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id (to read `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// Whether the server process is still alive.
    pub fn is_running(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(None))
    }

    /// Kills the server with SIGKILL (no goodbye to anyone) and reaps it.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------
// Client toolchain

fn fail_or_skip(what: &str) -> bool {
    if std::env::var("CUWIRE_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
        panic!("{what}; run scripts/setup-test-deps.sh (CUWIRE_REQUIRE_CLIENTS=1 makes this an error)");
    }
    eprintln!("SKIPPED: {what}; run scripts/setup-test-deps.sh to enable this test");
    false
}

fn venv_site_packages() -> Vec<PathBuf> {
    let lib = repo_root().join(".venv").join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .collect();
    found.sort();
    found
}

/// The directory holding `cuda.h`: `CUWIRE_CUDA_INCLUDE`, or the
/// `nvidia-cuda-runtime-cu12` wheel in `<repo>/.venv`.
pub fn cuda_include() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CUWIRE_CUDA_INCLUDE") {
        let dir = PathBuf::from(dir);
        return dir.join("cuda.h").is_file().then_some(dir);
    }
    venv_site_packages().into_iter().map(|sp| sp.join("nvidia/cuda_runtime/include")).find(|dir| dir.join("cuda.h").is_file())
}

/// The CUDA 13 toolkit from the PyPI wheels (`nvidia-cuda-nvcc`, `nvidia-nvvm`,
/// `nvidia-cuda-crt`, `nvidia-cuda-runtime`): the directory holding `bin/nvcc`,
/// `include/` and `lib/libcudart.so.13`. `CUWIRE_CUDA13`, or `<repo>/.venv/cuda13/nvidia/cu13`
/// (where scripts/setup-test-deps.sh installs them).
pub fn cuda13_root() -> Option<PathBuf> {
    let dir = std::env::var_os("CUWIRE_CUDA13").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/cuda13/nvidia/cu13"));
    dir.join("bin/nvcc").is_file().then_some(dir)
}

/// The Python with `cuda-bindings`: `CUWIRE_PYTHON`, or `<repo>/.venv/bin/python`.
pub fn python() -> Option<PathBuf> {
    let path = std::env::var_os("CUWIRE_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    path.exists().then_some(path)
}

/// Whether C clients can be built here; prints `SKIPPED:` (or panics when
/// `CUWIRE_REQUIRE_CLIENTS=1`) when not.
pub fn c_clients_available() -> bool {
    if cuda_include().is_none() {
        return fail_or_skip("cuda.h not found (CUWIRE_CUDA_INCLUDE or .venv)");
    }
    let cc = Command::new("cc").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !cc.is_ok_and(|s| s.success()) {
        return fail_or_skip("no C compiler `cc` on PATH");
    }
    true
}

/// Whether the Python client can run here (see [`c_clients_available`]).
pub fn python_clients_available() -> bool {
    let Some(py) = python() else {
        return fail_or_skip("no Python with cuda-bindings (CUWIRE_PYTHON or .venv/bin/python)");
    };
    let ok = Command::new(&py)
        .args(["-c", "from cuda.bindings import driver"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return fail_or_skip(&format!("{} cannot import cuda.bindings.driver", py.display()));
    }
    true
}

/// Builds client programs from `e2e/clients/`.
pub struct Client;

impl Client {
    /// Compiles `e2e/clients/<source>` (C) against the real `cuda.h`, linked
    /// with `-L<shim_dir> -lcuda -ldl` and no rpath, so `LD_LIBRARY_PATH` (or
    /// `LD_PRELOAD`) decides which `libcuda.so.1` runs, as with real programs.
    /// Built once per test process (and source), into `target/<profile>/e2e/`.
    pub fn c(source: &str) -> PathBuf {
        static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(exe) = cache.get(source) {
            return exe.clone();
        }
        let include = cuda_include().expect("cuda.h not found: call c_clients_available() first, or run scripts/setup-test-deps.sh");
        let src = clients_dir().join(source);
        assert!(src.is_file(), "{} does not exist", src.display());
        let out_dir = process_dir("clients");
        let stem = Path::new(source).file_stem().expect("source has a name").to_string_lossy().into_owned();
        let exe = out_dir.join(stem);
        let output = Command::new("cc")
            .args(["-O1", "-g", "-Wall", "-Wextra", "-Wno-deprecated-declarations"])
            .arg(format!("-I{}", include.display()))
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .arg(format!("-L{}", shim_dir().display()))
            .args(["-lcuda", "-ldl"])
            .output()
            .expect("running cc");
        assert!(
            output.status.success(),
            "cc failed to build {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cache.insert(source.to_string(), exe.clone());
        exe
    }

    /// A command running `e2e/clients/<script>` with the venv's Python.
    pub fn python(script: &str) -> Command {
        let py = python().expect("no Python: call python_clients_available() first");
        let mut cmd = Command::new(py);
        cmd.arg("-u").arg(clients_dir().join(script));
        cmd
    }
}

/// `e2e/clients/vecadd.ptx`.
pub fn vecadd_ptx() -> PathBuf {
    clients_dir().join("vecadd.ptx")
}

// ---------------------------------------------------------------------------
// Running clients

/// What a client run produced.
#[derive(Debug)]
pub struct ClientOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ClientOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Exit 0 and "ALL PASSED" on stdout.
    pub fn all_passed(&self) -> bool {
        self.success() && self.stdout.lines().any(|l| l.trim() == "ALL PASSED")
    }
}

impl fmt::Display for ClientOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit: {} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.elapsed, self.stdout, self.stderr)
    }
}

/// Runs a client with the shim on `LD_LIBRARY_PATH` and the `CUWIRE_*`
/// settings of `server_env`; `extra_env` entries override (`Some`) or remove
/// (`None`) variables afterwards. Killed (and the test failed) after
/// [`CLIENT_TIMEOUT`].
pub fn run_client(cmd: Command, server_env: &HashMap<String, String>, extra_env: &[(&str, Option<&str>)]) -> ClientOutput {
    run_client_timeout(cmd, server_env, extra_env, CLIENT_TIMEOUT)
}

/// [`run_client`] with an explicit time limit.
pub fn run_client_timeout(
    mut cmd: Command,
    server_env: &HashMap<String, String>,
    extra_env: &[(&str, Option<&str>)],
    timeout: Duration,
) -> ClientOutput {
    client_env(&mut cmd, server_env, extra_env);
    let description = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {description}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let status = loop {
        match child.try_wait().expect("waiting for the client") {
            Some(status) => break status,
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let status = child.wait().expect("waiting for the killed client");
                let stdout = out_reader.join().unwrap_or_default();
                let stderr = err_reader.join().unwrap_or_default();
                panic!(
                    "client {description} did not finish within {timeout:?}; killed ({status})\n\
                     --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
                );
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    let elapsed = start.elapsed();
    ClientOutput { status, stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default(), elapsed }
}

/// Sets up a client command as [`run_client`] does: the shim on `LD_LIBRARY_PATH`, the
/// `CUWIRE_*` settings of `server_env`, then `extra_env`; stdin null, stdout and stderr piped.
fn client_env(cmd: &mut Command, server_env: &HashMap<String, String>, extra_env: &[(&str, Option<&str>)]) {
    // Nothing from the test's own environment decides where the client goes.
    for key in ["CUWIRE_SERVER", "CUWIRE_SERVER_NAME", "CUWIRE_CA", "CUWIRE_CERT", "CUWIRE_KEY", "LD_PRELOAD"] {
        cmd.env_remove(key);
    }
    cmd.env("LD_LIBRARY_PATH", shim_dir());
    for (k, v) in server_env {
        if k.starts_with("CUWIRE_") {
            cmd.env(k, v);
        }
    }
    for (k, v) in extra_env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
}

/// A client process that keeps running while the test does other things: its stdout lines
/// arrive one by one ([`Spawned::wait_for`], always with a time limit), and it is killed on drop.
pub struct Spawned {
    child: Child,
    description: String,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
    started: Instant,
}

/// Starts a client set up as [`run_client`] does, without waiting for it.
pub fn spawn_client(mut cmd: Command, server_env: &HashMap<String, String>, extra_env: &[(&str, Option<&str>)]) -> Spawned {
    client_env(&mut cmd, server_env, extra_env);
    let description = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {description}: {e}"));
    let out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    Spawned { child, description, lines, seen: Vec::new(), stderr: Some(stderr), started }
}

impl Spawned {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// The next stdout line, or `None` at the end of the output or after `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads stdout up to the first line starting with `prefix` and returns it; panics, with
    /// everything seen, when the output ends or `timeout` passes first.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => {}
                None => panic!(
                    "{} printed no line starting with {prefix:?} within {timeout:?}; stdout so far:\n{}",
                    self.description,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (at most `timeout`, then kills it and panics) for the process to exit and returns
    /// what it printed: all of stdout, including the lines already read.
    pub fn finish(mut self, timeout: Duration) -> ClientOutput {
        let status = loop {
            match self.child.try_wait().expect("waiting for the client") {
                Some(status) => break status,
                None if self.started.elapsed() > timeout => {
                    self.kill();
                    let err = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
                    while self.next_line(Duration::from_millis(100)).is_some() {}
                    panic!(
                        "client {} did not finish within {timeout:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{err}",
                        self.description,
                        self.seen.join("\n")
                    );
                }
                None => thread::sleep(Duration::from_millis(10)),
            }
        };
        let elapsed = self.started.elapsed();
        while self.next_line(Duration::from_secs(5)).is_some() {}
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let mut stdout = self.seen.join("\n");
        stdout.push('\n');
        ClientOutput { status, stdout, stderr, elapsed }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_parsing() {
        let env = parse_env_file(
            "export CUWIRE_SERVER=127.0.0.1:4433\n\
             export CUWIRE_CA=\"/tmp/x y/ca.pem\"\n\
             # comment\n\
             CUWIRE_CERT='/c.pem'\n\
             export CUWIRE_KEY=/k.key\n",
        );
        assert_eq!(env["CUWIRE_SERVER"], "127.0.0.1:4433");
        assert_eq!(env["CUWIRE_CA"], "/tmp/x y/ca.pem");
        assert_eq!(env["CUWIRE_CERT"], "/c.pem");
        assert_eq!(env["CUWIRE_KEY"], "/k.key");
        assert_eq!(env.len(), 4);
    }
}
