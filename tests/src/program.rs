//! Running the passthrough program (`connect-runtime`'s `passthrough`
//! example) as a child process, the way an operator would.

use std::path::PathBuf;
use std::process::{ExitStatus, Output, Stdio};

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

/// A running program that has said where it listens.
pub struct Program {
    child: Child,
    url: Url,
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
        Self::start(&[
            "--listen",
            "tcp://127.0.0.1:0",
            "--connect-to",
            remote.as_str(),
            "--dial-timeout",
            "5s",
        ])
        .await
    }

    /// As [`Program::start`], with `env` added to its environment. The
    /// program logs at `warn`, or as `PROGRAM_LOG` says (a `RUST_LOG`
    /// filter), to the test's stderr.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = command()
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("PROGRAM_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the program starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = settle("the program to say where it listens", lines.next_line())
            .await
            .expect("reading the program's stdout")
            .expect("the program printed a line");
        let url = line
            .split_once("listening on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|url| Url::parse(url).ok())
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        // Keep draining stdout so the program never blocks writing to it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, url }
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
    pub async fn exited(mut self) -> ExitStatus {
        settle("the program to exit", self.child.wait())
            .await
            .expect("waiting for the program")
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
    let child = command()
        .args(args)
        .env("RUST_LOG", "warn")
        // `--spiffe` must not find a Workload API by accident.
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the program starts");
    settle("the program to finish", child.wait_with_output())
        .await
        .expect("running the program")
}
