//! The command line.

use std::path::PathBuf;

pub(crate) const USAGE: &str = "\
usage:
  connect-bench serve -n N --addr-file FILE [--tls]
      start N null NSM endpoints on loopback; write their tcp:// URLs to FILE
      (with --tls, serving TLS; the CA that signed them goes to FILE.ca.pem)
  connect-bench run --remotes FILE --mode connect|direct --workload a,b,c,w
                    [--n 1000] [--reps 5] [--iters 2000] [--tls]
      drive the remotes listed in FILE; one JSON line per workload
      (with --tls, over TLS, verifying them against FILE.ca.pem)
  connect-bench compare --remotes FILE [--rounds 5] [--workload ...] [--n ...]
                    [--reps ...] [--iters ...] [--tls]
      run both modes alternately, --rounds times each (as child processes),
      and print the medians and connect/direct ratios as a Markdown table";

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
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::W => "w",
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
}

pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let sub = args
        .next()
        .ok_or("a sub-command is required: serve or run")?;
    let mut n = None;
    let mut addr_file = None;
    let mut remotes = None;
    let mut mode = None;
    let mut workloads = None;
    let (mut reps, mut iters, mut rounds) = (None, None, None);
    let mut tls = false;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
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
                            other => Err(format!("unknown workload `{other}`: a, b, c or w")),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            "--reps" => reps = Some(number(&flag, &value()?)?),
            "--iters" => iters = Some(number(&flag, &value()?)?),
            "--rounds" => rounds = Some(number(&flag, &value()?)?),
            "--tls" => tls = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    match sub.as_str() {
        "serve" => Ok(Command::Serve {
            n: n.ok_or("serve needs -n N")?,
            addr_file: addr_file.ok_or("serve needs --addr-file FILE")?,
            tls,
        }),
        "run" => Ok(Command::Run(Run {
            remotes: remotes.ok_or("run needs --remotes FILE")?,
            mode: mode.ok_or("run needs --mode connect|direct")?,
            workloads: workloads.ok_or("run needs --workload a,b,c,w")?,
            n: n.unwrap_or(1000),
            reps: reps.unwrap_or(5),
            iters: iters.unwrap_or(2000),
            tls,
        })),
        "compare" => Ok(Command::Compare {
            run: Run {
                remotes: remotes.ok_or("compare needs --remotes FILE")?,
                mode: Mode::Connect,
                workloads: workloads
                    .unwrap_or_else(|| vec![Workload::A, Workload::B, Workload::C, Workload::W]),
                n: n.unwrap_or(1000),
                reps: reps.unwrap_or(5),
                iters: iters.unwrap_or(2000),
                tls,
            },
            rounds: rounds.unwrap_or(5),
        }),
        other => Err(format!(
            "unknown sub-command `{other}`: serve, run or compare"
        )),
    }
}

fn number(flag: &str, text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{flag} takes a positive number, not `{text}`"))
}
