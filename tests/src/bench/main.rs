//! `connect-bench`: measures `connect` against a direct tonic call to the
//! same NSM remotes. See BENCHMARKS.md for the commands and the numbers.
//!
//! `connect-bench --help` lists the subcommands and their options.

mod codec;
mod compare;
mod elements;
mod expiry;
mod floor;
mod hop;
mod machine;
mod measure;
mod options;
mod relay;
mod rotation;
mod scale;
mod serve;
mod telemetry;
mod workload;

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match options::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        // clap prints help and version to stdout with status 0, and
        // mistakes to stderr with status 2.
        Err(err) => err.exit(),
    };
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("connect-bench: cannot start tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match command {
        options::Command::Serve {
            n,
            addr_file,
            tls,
            spiffe,
            monitoring,
        } => runtime.block_on(serve::run(n, addr_file, tls, spiffe, monitoring)),
        options::Command::Collect { addr_file } => runtime.block_on(telemetry::collect(addr_file)),
        // On a worker, as calls into an element run inside a server: the
        // thread that `block_on` parks is not one of the runtime's.
        options::Command::Run(run) => runtime
            .block_on(runtime.spawn(workload::run(run)))
            .unwrap_or_else(|panic| Err(format!("the workload panicked: {panic}"))),
        options::Command::Compare { run, rounds } => compare::run(&run, rounds),
        options::Command::Hop(hop) => hop::run(&hop),
        options::Command::Codec { iters, rounds } => codec::run(iters, rounds),
        options::Command::Floor {
            remotes,
            iters,
            rounds,
        } => runtime.block_on(floor::run(&remotes, iters, rounds)),
        options::Command::Relay { listen, connect_to } => relay::run(listen, connect_to),
        options::Command::Elements {
            connections,
            rounds,
        } => elements::run(connections, rounds),
        options::Command::Expiry(expiry) => runtime
            .block_on(runtime.spawn(expiry::run(expiry)))
            .unwrap_or_else(|panic| Err(format!("the expiry run panicked: {panic}"))),
        options::Command::Rotation(rotation) => runtime
            .block_on(runtime.spawn(rotation::run(rotation)))
            .unwrap_or_else(|panic| Err(format!("the rotation run panicked: {panic}"))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("connect-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit: `serve -n 1000`
/// holds a listener and a connection per remote from each caller, beyond the
/// usual soft limit of 1024. Says so on stderr when it does.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => eprintln!("connect-bench: open-file limit raised from {soft} to {hard}"),
            Err(err) => eprintln!("connect-bench: open-file limit stays {soft}: {err}"),
        }
    }
}
