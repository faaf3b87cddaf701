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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
            init_logging(LogFormat::Text, "warn");
            runtime.block_on(demo::run(connections))
        }
        Mode::Passthrough {
            listen,
            connect_to,
            dial_timeout,
            hop,
            log,
            tls,
        } => {
            init_logging(log, "info");
            runtime.block_on(server::passthrough(
                listen,
                connect_to,
                dial_timeout,
                hop,
                log,
                tls,
            ))
        }
        Mode::Endpoint {
            listen,
            hop,
            log,
            tls,
        } => {
            init_logging(log, "info");
            runtime.block_on(server::endpoint(listen, hop, log, tls))
        }
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

/// Logs to stderr, at the level `RUST_LOG` asks for (or `default`).
fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal, and never under NO_COLOR
    // (no-color.org: set and not empty).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
