//! The command line.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::Arg;

pub(crate) const USAGE: &str = "\
usage:
  connect-bench serve -n N --addr-file FILE [--tls]
      start N null NSM endpoints on loopback; write their tcp:// URLs to FILE
      (with --tls, serving TLS; the CA that signed them goes to FILE.ca.pem)
  connect-bench run --remotes FILE --mode connect|direct --workload a,b,c,w,s
                    [--n 1000] [--reps 5] [--iters 2000] [--tls]
                    [--connections 10000] [--remotes-used M] [--concurrency 64]
                    [--refresh-rounds 1]
      drive the remotes listed in FILE; one JSON line per workload
      (with --tls, over TLS, verifying them against FILE.ca.pem);
      s holds --connections live connections over the first M remotes
      (all by default), refreshes each once (or --refresh-rounds times),
      then closes them
  connect-bench rotation [--connections 64] [--rotations 5] [--period-ms 1000]
                         [--side client]
      in one process, refresh --connections connections back to back through
      connect over SPIFFE mutual TLS, rotating connect's SVID (--side client)
      or the remote's (--side server) every --period-ms; one JSON line: dials
      per rotation, how long connections took to move (to a new client, or
      off the drained connection), latencies in steady state and meanwhile
  connect-bench compare --remotes FILE [--rounds 5] [--workload ...] [--n ...]
                    [--reps ...] [--iters ...] [--tls]
      run both modes alternately, --rounds times each (as child processes),
      and print the medians and connect/direct ratios as a Markdown table
  connect-bench codec [--iters 100000] [--rounds 7]
      decode and encode a typical NetworkServiceRequest, without and with a
      newer peer's fields, with connect-proto's messages and plain prost's;
      one JSON line each, nanoseconds per operation (median of the rounds)";

pub(crate) enum Command {
    Serve {
        n: usize,
        addr_file: PathBuf,
        tls: bool,
    },
    Run(Run),
    Compare {
        run: Run,
        rounds: usize,
    },
    Rotation(Rotation),
    Codec {
        iters: usize,
        rounds: usize,
    },
}

pub(crate) struct Rotation {
    pub(crate) connections: usize,
    pub(crate) rotations: usize,
    pub(crate) period: std::time::Duration,
    /// Whose SVID rotates: the remote's rather than connect's.
    pub(crate) server: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Through the `connect` element, in process.
    Connect,
    /// A pre-dialed tonic client: the floor.
    Direct,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Connect => "connect",
            Mode::Direct => "direct",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// N concurrent connections to the first remote.
    A,
    /// N concurrent connections spread over every remote.
    B,
    /// Sequential pairs on one remote; with connect each dials afresh.
    C,
    /// Sequential pairs while another connection keeps the client warm.
    W,
    /// A population of live connections: opened, refreshed, closed.
    S,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::W => "w",
            Workload::S => "s",
        }
    }
}

pub(crate) struct Run {
    pub(crate) remotes: PathBuf,
    pub(crate) mode: Mode,
    pub(crate) workloads: Vec<Workload>,
    pub(crate) n: usize,
    pub(crate) reps: usize,
    pub(crate) iters: usize,
    pub(crate) tls: bool,
    /// Workload s: live connections, the remotes they use (`None`: every
    /// remote listed), and how many calls run at once.
    pub(crate) connections: usize,
    pub(crate) remotes_used: Option<usize>,
    pub(crate) concurrency: usize,
    /// Workload s: how many times every connection is refreshed.
    pub(crate) refresh_rounds: usize,
}

pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut parser = lexopt::Parser::from_args(args);
    let sub = match parser.next().map_err(message)? {
        Some(Arg::Value(sub)) => sub.to_string_lossy().into_owned(),
        _ => {
            return Err(
                "a sub-command is required first: serve, run, compare, rotation or codec".into(),
            );
        }
    };
    if !matches!(
        sub.as_str(),
        "serve" | "run" | "compare" | "rotation" | "codec"
    ) {
        return Err(format!(
            "unknown sub-command `{sub}`: serve, run, compare, rotation or codec"
        ));
    }
    let mut n = None;
    let mut addr_file = None;
    let mut remotes = None;
    let mut mode = None;
    let mut workloads = None;
    let (mut reps, mut iters, mut rounds) = (None, None, None);
    let (mut connections, mut remotes_used, mut concurrency) = (None, None, None);
    let mut refresh_rounds = None;
    let (mut rotations, mut period_ms, mut server) = (None, None, false);
    let mut tls = false;
    while let Some(arg) = parser.next().map_err(message)? {
        let flag = match arg {
            Arg::Short(c) => format!("-{c}"),
            Arg::Long(name) => format!("--{name}"),
            Arg::Value(value) => return Err(format!("unknown argument `{}`", value.display())),
        };
        let mut value = || text(&mut parser, &flag);
        match flag.as_str() {
            "-n" | "--n" => n = Some(number(&flag, &value()?)?),
            "--addr-file" => addr_file = Some(PathBuf::from(value()?)),
            "--remotes" => remotes = Some(PathBuf::from(value()?)),
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "connect" => Mode::Connect,
                    "direct" => Mode::Direct,
                    other => return Err(format!("--mode is connect or direct, not `{other}`")),
                })
            }
            "--workload" => {
                workloads = Some(
                    value()?
                        .split(',')
                        .map(|w| match w.trim() {
                            "a" => Ok(Workload::A),
                            "b" => Ok(Workload::B),
                            "c" => Ok(Workload::C),
                            "w" => Ok(Workload::W),
                            "s" => Ok(Workload::S),
                            other => Err(format!("unknown workload `{other}`: a, b, c, w or s")),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            "--reps" => reps = Some(number(&flag, &value()?)?),
            "--iters" => iters = Some(number(&flag, &value()?)?),
            "--rounds" => rounds = Some(number(&flag, &value()?)?),
            "--connections" => connections = Some(number(&flag, &value()?)?),
            "--remotes-used" => remotes_used = Some(number(&flag, &value()?)?),
            "--concurrency" => concurrency = Some(number(&flag, &value()?)?),
            "--refresh-rounds" => refresh_rounds = Some(number(&flag, &value()?)?),
            "--rotations" => rotations = Some(number(&flag, &value()?)?),
            "--period-ms" => period_ms = Some(number(&flag, &value()?)?),
            "--side" => {
                server = match value()?.as_str() {
                    "client" => false,
                    "server" => true,
                    other => return Err(format!("--side is client or server, not `{other}`")),
                }
            }
            "--tls" => tls = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if sub == "rotation" {
        return Ok(Command::Rotation(Rotation {
            connections: connections.unwrap_or(64),
            rotations: rotations.unwrap_or(5),
            period: std::time::Duration::from_millis(period_ms.unwrap_or(1000) as u64),
            server,
        }));
    }
    if sub == "codec" {
        return Ok(Command::Codec {
            iters: iters.unwrap_or(100_000),
            rounds: rounds.unwrap_or(7),
        });
    }
    if sub == "serve" {
        return Ok(Command::Serve {
            n: n.ok_or("serve needs -n N")?,
            addr_file: addr_file.ok_or("serve needs --addr-file FILE")?,
            tls,
        });
    }
    let (remotes, mode, workloads) = match sub.as_str() {
        "run" => (
            remotes.ok_or("run needs --remotes FILE")?,
            mode.ok_or("run needs --mode connect|direct")?,
            workloads.ok_or("run needs --workload a,b,c,w,s")?,
        ),
        _ => (
            remotes.ok_or("compare needs --remotes FILE")?,
            Mode::Connect,
            workloads.unwrap_or_else(|| vec![Workload::A, Workload::B, Workload::C, Workload::W]),
        ),
    };
    if sub == "compare" && workloads.contains(&Workload::S) {
        return Err(
            "compare runs workloads a, b, c and w: run s with `run --workload s` in each mode"
                .into(),
        );
    }
    let run = Run {
        remotes,
        mode,
        workloads,
        n: n.unwrap_or(1000),
        reps: reps.unwrap_or(5),
        iters: iters.unwrap_or(2000),
        tls,
        connections: connections.unwrap_or(10_000),
        remotes_used,
        concurrency: concurrency.unwrap_or(64),
        refresh_rounds: refresh_rounds.unwrap_or(1),
    };
    Ok(match sub.as_str() {
        "run" => Command::Run(run),
        _ => Command::Compare {
            run,
            rounds: rounds.unwrap_or(5),
        },
    })
}

/// The parser's own errors, worded like ours.
fn message(err: lexopt::Error) -> String {
    match err {
        lexopt::Error::UnexpectedValue { option, value } => {
            format!("{option} takes no value, not `{}`", value.display())
        }
        other => other.to_string(),
    }
}

/// The value of `flag`, which was just seen, as text.
fn text(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    let value = parser
        .value()
        .map_err(|_| format!("{flag} needs a value"))?;
    value
        .into_string()
        .map_err(|value| format!("{flag} takes text, not `{}`", value.display()))
}

fn number(flag: &str, text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{flag} takes a positive number, not `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        super::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn serve_run_and_compare_with_their_defaults() {
        let Ok(Command::Serve { n, addr_file, tls }) =
            parse(&["serve", "-n", "3", "--addr-file", "f.txt"])
        else {
            panic!("not serve");
        };
        assert_eq!((n, addr_file, tls), (3, PathBuf::from("f.txt"), false));

        let Ok(Command::Run(run)) = parse(&[
            "run",
            "--remotes",
            "r.txt",
            "--mode=direct",
            "--workload",
            "a, c",
            "--n",
            "20",
            "--tls",
        ]) else {
            panic!("not run");
        };
        assert_eq!(run.remotes, PathBuf::from("r.txt"));
        assert_eq!(run.mode, Mode::Direct);
        assert_eq!(run.workloads, [Workload::A, Workload::C]);
        assert_eq!((run.n, run.reps, run.iters, run.tls), (20, 5, 2000, true));
        assert_eq!(
            (run.connections, run.remotes_used, run.concurrency),
            (10_000, None, 64)
        );

        let Ok(Command::Run(run)) = parse(&[
            "run",
            "--remotes",
            "r.txt",
            "--mode",
            "connect",
            "--workload",
            "s",
            "--connections",
            "100000",
            "--remotes-used",
            "1000",
            "--concurrency",
            "32",
            "--refresh-rounds",
            "3",
        ]) else {
            panic!("not run");
        };
        assert_eq!(run.workloads, [Workload::S]);
        assert_eq!(
            (run.connections, run.remotes_used, run.concurrency),
            (100_000, Some(1000), 32)
        );
        assert_eq!(run.refresh_rounds, 3);

        let Ok(Command::Compare { run, rounds }) = parse(&["compare", "--remotes", "r.txt"]) else {
            panic!("not compare");
        };
        assert_eq!(run.workloads.len(), 4);
        assert_eq!((run.n, run.reps, run.iters, rounds), (1000, 5, 2000, 5));
    }

    #[test]
    fn mistakes_name_the_flag() {
        let cases: [(&[&str], &str); 13] = [
            (&[], "a sub-command is required"),
            (&["--tls"], "a sub-command is required"),
            (&["bench"], "unknown sub-command `bench`"),
            (&["serve", "-n", "0"], "-n takes a positive number, not `0`"),
            (
                &["run", "--reps", "x"],
                "--reps takes a positive number, not `x`",
            ),
            (&["run", "--remotes"], "--remotes needs a value"),
            (
                &["run", "--mode", "fast"],
                "--mode is connect or direct, not `fast`",
            ),
            (&["run", "--workload", "a,z"], "unknown workload `z`"),
            (&["run", "--verbose"], "unknown argument `--verbose`"),
            (
                &["run", "--remotes-used", "0"],
                "--remotes-used takes a positive number, not `0`",
            ),
            (&["run", "--tls=yes"], "--tls takes no value, not `yes`"),
            (&["serve", "-n", "3"], "serve needs --addr-file FILE"),
            (
                &["compare", "--remotes", "r.txt", "--workload", "a,s"],
                "compare runs workloads a, b, c and w",
            ),
        ];
        for (args, expected) in cases {
            let err = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }
}
