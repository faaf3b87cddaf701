//! The passthrough program: connect's main job in one command, and a real
//! NSM passthrough endpoint for operators.
//!
//! ```text
//! cargo run --release --example passthrough              # the demo, on loopback
//! cargo run --release --example passthrough -- --help    # the real server's options
//! ```
//!
//! With no arguments it starts two NSM endpoints and a passthrough
//! (clienturl → connect, with a health monitor in the client chain) in this
//! process, drives 1000 concurrent connections through it, and reports.
//! With `--listen URL --connect-to URL` it is that passthrough as a server;
//! with `--endpoint --listen URL`, a minimal endpoint.

mod args;
mod demo;
mod server;
mod telemetry;

use std::process::ExitCode;

use args::{LogFormat, Mode};

fn main() -> ExitCode {
    let mode = match args::parse(std::env::args_os().skip(1)) {
        Ok(mode) => mode,
        Err(err) => {
            eprintln!("passthrough: {err}");
            return ExitCode::from(2);
        }
    };
    // On one CPU (pinned, or a cgroup quota of one), one thread does all:
    // a multi-threaded runtime would add a worker beside the main thread
    // and synchronise the two for nothing.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = match one_cpu {
        true => tokio::runtime::Builder::new_current_thread(),
        false => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("passthrough: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // In JSON mode even the last words are a JSON line.
    let json = matches!(
        &mode,
        Mode::Passthrough {
            log: LogFormat::Json,
            ..
        } | Mode::Endpoint {
            log: LogFormat::Json,
            ..
        }
    );
    let outcome = match mode {
        Mode::Help(help) => {
            print!("{help}");
            return ExitCode::SUCCESS;
        }
        Mode::Demo { connections } => {
            let _entered = runtime.enter();
            match telemetry::install(None, LogFormat::Text, "warn", "passthrough") {
                Ok(_) => runtime.block_on(demo::run(connections)),
                Err(err) => Err(err),
            }
        }
        Mode::Passthrough {
            listen,
            connect_to,
            dial_timeout,
            hop,
            log,
            tls,
            observe,
        } => observed(&runtime, &observe, log, &hop.name.clone(), |metrics| {
            server::passthrough(listen, connect_to, dial_timeout, hop, log, tls, metrics)
        }),
        Mode::Endpoint {
            listen,
            hop,
            log,
            tls,
            observe,
        } => observed(&runtime, &observe, log, &hop.name.clone(), |metrics| {
            server::endpoint(listen, hop, log, tls, metrics)
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if json => {
            let line =
                serde_json::json!({ "level": "ERROR", "message": format!("passthrough: {err}") });
            eprintln!("{line}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("passthrough: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a server with logging and telemetry installed, and exports what
/// telemetry still holds once it has stopped.
fn observed<F>(
    runtime: &tokio::runtime::Runtime,
    observe: &args::Observe,
    log: LogFormat,
    name: &str,
    serve: impl FnOnce(Option<telemetry::Scraped>) -> F,
) -> Result<(), String>
where
    F: Future<Output = Result<(), String>>,
{
    let _entered = runtime.enter();
    let mut telemetry = telemetry::install(Some(observe), log, "info", name)?;
    let metrics = telemetry.prometheus.take();
    let outcome = runtime.block_on(serve(metrics));
    telemetry.shutdown();
    outcome
}
