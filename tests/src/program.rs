//! Running the passthrough program (`connect-runtime`'s `passthrough`
//! example) as a child process, the way an operator would.

use std::path::PathBuf;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use url::Url;

use crate::harness::settle;

/// The example binary `cargo test --workspace` builds beside the test
/// binaries (`target/<profile>/examples/passthrough`).
pub fn binary() -> PathBuf {
    example("passthrough")
}

/// The runtime's example `name`, as `cargo test --workspace` builds it
/// (`target/<profile>/examples/<name>`).
pub fn example(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds the examples) \
         or build it with `cargo build -p connect-runtime --example {name}`",
        path.display()
    );
    path
}

/// A running program that has said where it listens. Its stderr is kept,
/// and printed only if the test fails: tests that provoke failures on
/// purpose stay quiet.
pub struct Program {
    child: Child,
    url: Url,
    /// The line that said where it listens.
    announcement: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// How many lines it has logged.
    logged: tokio::sync::watch::Receiver<usize>,
    reading: Option<tokio::task::JoinHandle<()>>,
}

impl Program {
    /// Starts the program with `args` and waits for its "listening on URL"
    /// line.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// A passthrough on a free loopback port forwarding to `remote`, dialing
    /// with seconds to spare (a loaded CI machine).
    pub async fn passthrough_to(remote: &Url) -> Self {
        Self::passthrough_named(remote, None).await
    }

    /// As [`Program::passthrough_to`], its hop named `name` (`--name`) if
    /// given.
    pub async fn passthrough_named(remote: &Url, name: Option<&str>) -> Self {
        Self::passthrough_with_env(remote, name, &[]).await
    }

    /// As [`Program::passthrough_named`], with `env` added to its
    /// environment (see [`Program::start_with_env`]).
    pub async fn passthrough_with_env(
        remote: &Url,
        name: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_with_env(&passthrough_args(remote, name), env).await
    }

    /// As [`Program::start`], with `env` added to its environment. The
    /// program logs at `warn`, or as `PROGRAM_LOG` says (a `RUST_LOG`
    /// filter) unless `env` sets `RUST_LOG`; see [`Program::logs`].
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_command(command(), args, env).await
    }

    /// As [`Program::passthrough_to`], the process allowed one CPU only (as
    /// `taskset -c 0` would run it): it inherits the affinity of the thread
    /// that spawns it, which is pinned for the spawn only.
    pub async fn passthrough_on_one_cpu(remote: &Url) -> Self {
        let here = Pid::from_raw(0);
        let before = sched_getaffinity(here).expect("this thread's CPUs");
        let mut one = CpuSet::new();
        one.set(0).expect("CPU 0 fits a CPU set");
        sched_setaffinity(here, &one).expect("pinning this thread to CPU 0");
        let spawned = Self::spawn(command(), &passthrough_args(remote, None), &[]);
        sched_setaffinity(here, &before).expect("restoring this thread's CPUs");
        Self::started(spawned).await
    }

    /// The threads the process runs now.
    pub fn threads(&self) -> usize {
        let pid = self.child.id().expect("the program is running");
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc lists the program's threads")
            .count()
    }

    async fn start_command(command: Command, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::started(Self::spawn(command, args, env)).await
    }

    fn spawn(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Child {
        command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("PROGRAM_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the program starts")
    }

    /// Reads the spawned program's logs and waits for it to say where it
    /// listens.
    async fn started(mut child: Child) -> Self {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (lines_logged, logged) = tokio::sync::watch::channel(0);
        let reading = {
            let stderr = child.stderr.take().expect("stderr is piped");
            let logs = Arc::clone(&logs);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let count = {
                        let mut logs = logs.lock().unwrap();
                        logs.push(line);
                        logs.len()
                    };
                    lines_logged.send_replace(count);
                }
            })
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = settle("the program to say where it listens", lines.next_line())
            .await
            .expect("reading the program's stdout")
            .expect("the program printed a line");
        // `<role> listening on <url> …`, or in JSON mode an object whose
        // `listening_on` is the URL.
        let url = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(json) => json["listening_on"].as_str().map(str::to_owned),
            Err(_) => line
                .split_once("listening on ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_owned),
        }
        .and_then(|url| Url::parse(&url).ok())
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
        // Keep draining stdout so the program never blocks writing to it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            url,
            announcement: line,
            logs,
            logged,
            reading: Some(reading),
        }
    }

    /// The line on stdout that said where it listens.
    pub fn announcement(&self) -> &str {
        &self.announcement
    }

    /// What the program has written to stderr so far, a line each.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the program has logged a line containing `needle`.
    pub async fn until_logged(&self, needle: &str) {
        let mut logged = self.logged.clone();
        let seen = logged.wait_for(|_| self.logs().iter().any(|l| l.contains(needle)));
        settle(&format!("the program to log {needle:?}"), seen)
            .await
            .expect("the program's stderr is read");
    }

    /// Where the program listens (with the port it bound).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the program is running");
        signal_terminate(pid);
    }

    /// Waits for the program to exit.
    pub async fn exited(self) -> ExitStatus {
        self.exited_with_logs().await.0
    }

    /// Waits for the program to exit, and returns everything it wrote to
    /// stderr.
    pub async fn exited_with_logs(mut self) -> (ExitStatus, Vec<String>) {
        let status = settle("the program to exit", self.child.wait())
            .await
            .expect("waiting for the program");
        if let Some(reading) = self.reading.take() {
            settle("the program's stderr to end", reading)
                .await
                .expect("reading stderr");
        }
        (status, self.logs())
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for line in self.logs.lock().unwrap().iter() {
                eprintln!("program: {line}");
            }
        }
    }
}

/// The program, without the options this test's own environment might set
/// (`NSM_*`).
fn command() -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NSM_") {
            command.env_remove(name);
        }
    }
    command
}

fn signal_terminate(pid: u32) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("a pid fits pid_t"));
    kill(pid, Signal::SIGTERM).expect("kill(SIGTERM) failed");
}

/// Runs the program with `args` to the end and returns what it printed.
pub async fn run(args: &[&str]) -> Output {
    run_with_env(args, &[]).await
}

/// As [`run`], with `env` set.
pub async fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = command()
        .args(args)
        .env("RUST_LOG", "warn")
        // `--spiffe` must not find a Workload API by accident.
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the program starts");
    settle("the program to finish", child.wait_with_output())
        .await
        .expect("running the program")
}

/// A passthrough's flags: a free loopback port, forwarding to `remote`,
/// dialing with seconds to spare (a loaded CI machine), its hop named
/// `name` if given.
fn passthrough_args<'a>(remote: &'a Url, name: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec![
        "--listen",
        "tcp://127.0.0.1:0",
        "--connect-to",
        remote.as_str(),
        "--dial-timeout",
        "5s",
    ];
    args.extend(name.into_iter().flat_map(|name| ["--name", name]));
    args
}
