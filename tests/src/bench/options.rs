//! The command line, on clap.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// connect-bench: measures `connect` against a direct tonic call to the same
/// NSM remotes (see BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(name = "connect-bench")]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Start N null NSM endpoints on loopback and write their tcp:// URLs to
    /// FILE (with --tls, serving TLS; the CA that signed them goes to
    /// FILE.ca.pem).
    Serve {
        /// How many endpoints.
        #[arg(short = 'n', long = "n", value_name = "N", value_parser = positive)]
        n: usize,
        /// Where their URLs go, one per line.
        #[arg(long, value_name = "FILE")]
        addr_file: PathBuf,
        /// Serve TLS.
        #[arg(long)]
        tls: bool,
        /// Serve SPIFFE mutual TLS: SVIDs from a Workload API this process
        /// serves, another for callers, whose socket goes to FILE.spiffe.
        #[arg(long, conflicts_with = "tls")]
        spiffe: bool,
        /// Serve MonitorConnections, each endpoint adding its path segment
        /// (`updatepath → monitor`), as an NSM endpoint does.
        #[arg(long)]
        monitoring: bool,
    },
    /// Run an OTLP collector on loopback until killed, for `--telemetry
    /// --otlp-endpoint`; its endpoint goes to FILE.
    Collect {
        /// Where its endpoint goes.
        #[arg(long, value_name = "FILE")]
        addr_file: PathBuf,
    },
    /// Drive the remotes listed in FILE; one JSON line per workload.
    Run {
        #[command(flatten)]
        run: RunArgs,
        /// Through `connect`, or over a pre-dialed tonic channel.
        #[arg(long, value_enum)]
        mode: Mode,
        /// The workloads, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', required = true)]
        workload: Vec<Workload>,
    },
    /// Both modes alternately, --rounds times each (as child processes),
    /// summarised as medians and connect/direct ratios in a Markdown table.
    Compare {
        #[command(flatten)]
        run: RunArgs,
        /// Rounds of each mode.
        #[arg(long, default_value_t = 5, value_parser = positive)]
        rounds: usize,
        /// The workloads, comma-separated (a, b, c and w).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "a,b,c,w")]
        workload: Vec<Workload>,
    },
    /// In one process, refresh --connections connections back to back
    /// through connect over SPIFFE mutual TLS, rotating connect's SVID (or
    /// the remote's) every --period-ms; one JSON line.
    Rotation {
        /// Connections refreshed.
        #[arg(long, default_value_t = 64, value_parser = positive)]
        connections: usize,
        /// Rotations.
        #[arg(long, default_value_t = 5, value_parser = positive)]
        rotations: usize,
        /// Milliseconds between rotations.
        #[arg(long, default_value_t = 1000, value_parser = positive)]
        period_ms: usize,
        /// Whose SVID rotates.
        #[arg(long, value_enum, default_value = "client")]
        side: Side,
    },
    /// Connections whose callers vanish, through updatepath, expire and
    /// connect in one process before null remotes: the heap in use before,
    /// with all live, and once all expired; one JSON line.
    Expiry {
        /// Connections opened and then abandoned.
        #[arg(long, default_value_t = 100_000, value_parser = positive)]
        connections: usize,
        /// Remotes they spread over.
        #[arg(long, default_value_t = 100, value_parser = positive)]
        remotes: usize,
        /// Requests in flight at once while opening.
        #[arg(long, default_value_t = 64, value_parser = positive)]
        concurrency: usize,
        /// Milliseconds each connection's caller segment lives: longer than
        /// opening them all takes.
        #[arg(long, default_value_t = 30_000, value_parser = positive)]
        ttl_ms: usize,
        /// Populations, one after another: a leak grows round over round.
        #[arg(long, default_value_t = 2, value_parser = positive)]
        rounds: usize,
    },
    /// What the hop's own elements cost: connections opened, refreshed and
    /// closed in process through chains that differ by one element
    /// (updatepath, expire, per-connection state); one JSON line each,
    /// nanoseconds per connection.
    Elements {
        /// Connections per round.
        #[arg(long, default_value_t = 20_000, value_parser = positive)]
        connections: usize,
        /// Measured rounds (the median is reported).
        #[arg(long, default_value_t = 7, value_parser = positive)]
        rounds: usize,
    },
    /// The hop as deployed: driver → passthrough → endpoint, three
    /// processes, for each passthrough given, alternately, --rounds times;
    /// each workload with a fresh passthrough pinned alone to CPU 1 (the
    /// driver and a connect-bench endpoint on CPU 0); medians and the
    /// first ÷ second passthrough in a Markdown table.
    Hop {
        /// NAME=COMMAND: a passthrough to run as `COMMAND --listen URL
        /// --connect-to URL` (by `sh -c 'exec …'`: set variables with
        /// `env`); given twice, the table compares them.
        #[arg(long = "passthrough", value_name = "NAME=COMMAND", required = true, value_parser = named_command)]
        passthroughs: Vec<(String, String)>,
        /// The workloads, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "burst,c,w")]
        workload: Vec<HopWorkload>,
        /// Rounds of each passthrough.
        #[arg(long, default_value_t = 3, value_parser = positive)]
        rounds: usize,
        /// Connections in a burst.
        #[arg(long, default_value_t = 1000, value_parser = positive)]
        burst: usize,
        /// Measured bursts per run.
        #[arg(long, default_value_t = 5, value_parser = positive)]
        reps: usize,
        /// Pairs in c and w.
        #[arg(long, default_value_t = 2000, value_parser = positive)]
        iters: usize,
    },
    /// Decode and encode a typical NetworkServiceRequest, without and with a
    /// newer peer's fields, with connect-proto's messages and plain prost's;
    /// one JSON line each, nanoseconds per operation.
    /// The per-call floor below connect's client calls: sequential unary
    /// calls on one warm connection to the first remote in FILE, by
    /// hyper's HTTP/2 client and by h2's, alternating; a Markdown table of
    /// their medians.
    Floor {
        /// The remotes' URLs (what `serve` writes; plain tcp://).
        #[arg(long, value_name = "FILE")]
        remotes: PathBuf,
        /// Calls per round and client.
        #[arg(long, default_value_t = 20_000, value_parser = positive)]
        iters: usize,
        /// Rounds of each client.
        #[arg(long, default_value_t = 5, value_parser = positive)]
        rounds: usize,
    },
    Codec {
        /// Operations per round.
        #[arg(long, default_value_t = 100_000, value_parser = positive)]
        iters: usize,
        /// Measured rounds (the median is reported).
        #[arg(long, default_value_t = 7, value_parser = positive)]
        rounds: usize,
    },
    /// The hop's floor, to run as a passthrough under `hop`: copies each
    /// connection accepted on --listen both ways to a new one to
    /// --connect-to, parsing nothing, on one thread.
    Relay {
        /// tcp://HOST:PORT to accept connections on.
        #[arg(long, value_parser = tcp_address)]
        listen: SocketAddr,
        /// tcp://HOST:PORT to relay each connection to.
        #[arg(long, value_parser = tcp_address)]
        connect_to: SocketAddr,
    },
}

/// `tcp://HOST:PORT` with a numeric host, as `hop` and `serve` write them.
fn tcp_address(value: &str) -> Result<SocketAddr, String> {
    value
        .strip_prefix("tcp://")
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| format!("expected tcp://IP:PORT, got `{value}`"))
}

/// `NAME=COMMAND`.
fn named_command(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, command)) if !name.is_empty() && !command.trim().is_empty() => {
            Ok((name.to_owned(), command.to_owned()))
        }
        _ => Err(format!("expected NAME=COMMAND, got `{value}`")),
    }
}

/// A workload of `hop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum HopWorkload {
    /// --burst concurrent pairs (`run`'s workload a through the hop).
    Burst,
    /// Sequential pairs: the passthrough dials the endpoint for each.
    C,
    /// Sequential pairs while another connection keeps the passthrough's
    /// client warm.
    W,
}

impl HopWorkload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            HopWorkload::Burst => "burst",
            HopWorkload::C => "c",
            HopWorkload::W => "w",
        }
    }

    /// The workload of `run` that drives it.
    pub(crate) fn run_as(self) -> &'static str {
        match self {
            HopWorkload::Burst => "a",
            HopWorkload::C => "c",
            HopWorkload::W => "w",
        }
    }
}

/// What `hop` runs.
pub(crate) struct Hop {
    pub(crate) passthroughs: Vec<(String, String)>,
    pub(crate) workloads: Vec<HopWorkload>,
    pub(crate) rounds: usize,
    pub(crate) burst: usize,
    pub(crate) reps: usize,
    pub(crate) iters: usize,
}

/// What `run` and `compare` share.
#[derive(Debug, Args)]
struct RunArgs {
    /// The remotes' URLs, one per line (what `serve` writes).
    #[arg(long, value_name = "FILE")]
    remotes: PathBuf,
    /// Connections in workloads a and b.
    #[arg(long = "n", default_value_t = 1000, value_parser = positive)]
    n: usize,
    /// Measured repetitions of a and b.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    reps: usize,
    /// Pairs in workloads c and w.
    #[arg(long, default_value_t = 2000, value_parser = positive)]
    iters: usize,
    /// Over TLS, verifying the remotes against FILE.ca.pem.
    #[arg(long)]
    tls: bool,
    /// Over SPIFFE mutual TLS, with an SVID from the Workload API at
    /// FILE.spiffe (remotes served with --spiffe).
    #[arg(long, conflicts_with = "tls")]
    spiffe: bool,
    /// Through a hop that monitors (`updatepath → monitor → connect`, each
    /// client relaying its remote's events; connect mode, remotes served
    /// with --monitoring).
    #[arg(long)]
    monitoring: bool,
    /// How long connect keeps a client after its last connection left
    /// (`ConnectBuilder::linger`; connect mode).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    linger_ms: u64,
    /// Record with exporters on, as the program with `TELEMETRY=true
    /// PROMETHEUS=true`: metrics into a Prometheus registry and, with
    /// --otlp-endpoint, spans and metrics by OTLP (connect mode).
    #[arg(long)]
    telemetry: bool,
    /// Where --telemetry sends OTLP: a collector (`collect` runs one).
    #[arg(long, value_name = "URL", requires = "telemetry")]
    otlp_endpoint: Option<String>,
    /// Workload s: live connections.
    #[arg(long, default_value_t = 10_000, value_parser = positive)]
    connections: usize,
    /// Workload s: the remotes they use (all listed, by default).
    #[arg(long, value_parser = positive)]
    remotes_used: Option<usize>,
    /// Workload s: calls at once.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    concurrency: usize,
    /// Workload s: how many times every connection is refreshed.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    refresh_rounds: usize,
    /// Workload s: exit as soon as N are live, printing nothing, so that a
    /// heap profiler's leak report (heaptrack's) is what is live at N.
    #[arg(long)]
    exit_at_n: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Side {
    Client,
    Server,
}

pub(crate) enum Command {
    Serve {
        n: usize,
        addr_file: PathBuf,
        tls: bool,
        spiffe: bool,
        monitoring: bool,
    },
    Collect {
        addr_file: PathBuf,
    },
    Run(Run),
    Compare {
        run: Run,
        rounds: usize,
    },
    Rotation(Rotation),
    Expiry(Expiry),
    Hop(Hop),
    Elements {
        connections: usize,
        rounds: usize,
    },
    Codec {
        iters: usize,
        rounds: usize,
    },
    Floor {
        remotes: PathBuf,
        iters: usize,
        rounds: usize,
    },
    Relay {
        listen: SocketAddr,
        connect_to: SocketAddr,
    },
}

pub(crate) struct Expiry {
    pub(crate) connections: usize,
    pub(crate) remotes: usize,
    pub(crate) concurrency: usize,
    pub(crate) ttl: Duration,
    pub(crate) rounds: usize,
}

pub(crate) struct Rotation {
    pub(crate) connections: usize,
    pub(crate) rotations: usize,
    pub(crate) period: Duration,
    /// Whose SVID rotates: the remote's rather than connect's.
    pub(crate) server: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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
    pub(crate) spiffe: bool,
    pub(crate) monitoring: bool,
    pub(crate) linger: Duration,
    /// `--telemetry`, and where it sends OTLP.
    pub(crate) telemetry: bool,
    pub(crate) otlp: Option<String>,
    /// Workload s: live connections, the remotes they use (`None`: every
    /// remote listed), and how many calls run at once.
    pub(crate) connections: usize,
    pub(crate) remotes_used: Option<usize>,
    pub(crate) concurrency: usize,
    /// Workload s: how many times every connection is refreshed.
    pub(crate) refresh_rounds: usize,
    /// Workload s: exit once N are live.
    pub(crate) exit_at_n: bool,
}

impl RunArgs {
    fn into_run(self, mode: Mode, workloads: Vec<Workload>) -> Run {
        Run {
            remotes: self.remotes,
            mode,
            workloads,
            n: self.n,
            reps: self.reps,
            iters: self.iters,
            tls: self.tls,
            spiffe: self.spiffe,
            monitoring: self.monitoring,
            linger: Duration::from_millis(self.linger_ms),
            telemetry: self.telemetry,
            otlp: self.otlp_endpoint,
            connections: self.connections,
            remotes_used: self.remotes_used,
            concurrency: self.concurrency,
            refresh_rounds: self.refresh_rounds,
            exit_at_n: self.exit_at_n,
        }
    }
}

/// What to do, or clap's error (`--help` among them) to print as it says.
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, clap::Error> {
    let args = std::iter::once(OsString::from("connect-bench")).chain(args);
    let cli = Cli::try_parse_from(args)?;
    Ok(match cli.command {
        Sub::Serve {
            n,
            addr_file,
            tls,
            spiffe,
            monitoring,
        } => Command::Serve {
            n,
            addr_file,
            tls,
            spiffe,
            monitoring,
        },
        Sub::Collect { addr_file } => Command::Collect { addr_file },
        Sub::Run {
            run,
            mode,
            workload,
        } => Command::Run(run.into_run(mode, workload)),
        Sub::Hop {
            passthroughs,
            workload,
            rounds,
            burst,
            reps,
            iters,
        } => Command::Hop(Hop {
            passthroughs,
            workloads: workload,
            rounds,
            burst,
            reps,
            iters,
        }),
        Sub::Compare {
            run,
            rounds,
            workload,
        } => {
            if workload.contains(&Workload::S) {
                let why = "compare runs workloads a, b, c and w: run s with `run --workload s` in each mode";
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    why,
                ));
            }
            Command::Compare {
                run: run.into_run(Mode::Connect, workload),
                rounds,
            }
        }
        Sub::Rotation {
            connections,
            rotations,
            period_ms,
            side,
        } => Command::Rotation(Rotation {
            connections,
            rotations,
            period: Duration::from_millis(period_ms as u64),
            server: side == Side::Server,
        }),
        Sub::Expiry {
            connections,
            remotes,
            concurrency,
            ttl_ms,
            rounds,
        } => Command::Expiry(Expiry {
            connections,
            remotes,
            concurrency,
            ttl: Duration::from_millis(ttl_ms as u64),
            rounds,
        }),
        Sub::Elements {
            connections,
            rounds,
        } => Command::Elements {
            connections,
            rounds,
        },
        Sub::Codec { iters, rounds } => Command::Codec { iters, rounds },
        Sub::Floor {
            remotes,
            iters,
            rounds,
        } => Command::Floor {
            remotes,
            iters,
            rounds,
        },
        Sub::Relay { listen, connect_to } => Command::Relay { listen, connect_to },
    })
}

fn positive(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("a positive number is needed, not `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        super::parse(args.iter().map(OsString::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn serve_run_and_compare_with_their_defaults() {
        let Ok(Command::Serve {
            n,
            addr_file,
            tls,
            spiffe,
            monitoring,
        }) = parse(&["serve", "-n", "3", "--addr-file", "f.txt"])
        else {
            panic!("not serve");
        };
        assert_eq!(
            (n, addr_file, tls, spiffe, monitoring),
            (3, PathBuf::from("f.txt"), false, false, false)
        );

        let Ok(Command::Run(run)) = parse(&[
            "run",
            "--remotes",
            "r.txt",
            "--mode=direct",
            "--workload",
            "a,c",
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
        assert!(!run.spiffe);
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
            "--exit-at-n",
        ]) else {
            panic!("not run");
        };
        assert_eq!(run.workloads, [Workload::S]);
        assert_eq!(
            (run.connections, run.remotes_used, run.concurrency),
            (100_000, Some(1000), 32)
        );
        assert_eq!(run.refresh_rounds, 3);
        assert!(run.exit_at_n);

        let Ok(Command::Compare { run, rounds }) = parse(&["compare", "--remotes", "r.txt"]) else {
            panic!("not compare");
        };
        assert_eq!(run.workloads.len(), 4);
        assert_eq!((run.n, run.reps, run.iters, rounds), (1000, 5, 2000, 5));
    }

    #[test]
    fn mistakes_name_the_flag() {
        let cases: [(&[&str], &str); 12] = [
            (&[], "Usage: connect-bench <COMMAND>"),
            (&["bench"], "unrecognized subcommand 'bench'"),
            (
                &["serve", "-n", "0"],
                "a positive number is needed, not `0`",
            ),
            (
                &["run", "--reps", "x"],
                "a positive number is needed, not `x`",
            ),
            (
                &["run", "--remotes"],
                "a value is required for '--remotes <FILE>'",
            ),
            (
                &["run", "--mode", "fast"],
                "invalid value 'fast' for '--mode <MODE>'",
            ),
            (
                &["run", "--workload", "a,z"],
                "invalid value 'z' for '--workload <WORKLOAD>'",
            ),
            (&["run", "--verbose"], "unexpected argument '--verbose'"),
            (&["run", "--tls=yes"], "unexpected value 'yes' for '--tls'"),
            (
                &["run", "--remotes", "r.txt", "--tls", "--spiffe"],
                "'--tls' cannot be used with '--spiffe'",
            ),
            (&["serve", "-n", "3"], "--addr-file <FILE>"),
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

    #[test]
    fn hop_takes_named_passthrough_commands() {
        let Ok(Command::Hop(hop)) = parse(&[
            "hop",
            "--passthrough",
            "ours=./pt --flag",
            "--passthrough=go=env A=1 ./go.sh",
            "--workload",
            "w",
        ]) else {
            panic!("not hop");
        };
        assert_eq!(
            hop.passthroughs,
            [
                ("ours".to_owned(), "./pt --flag".to_owned()),
                ("go".to_owned(), "env A=1 ./go.sh".to_owned())
            ]
        );
        assert_eq!(hop.workloads, [HopWorkload::W]);
        assert_eq!(
            (hop.rounds, hop.burst, hop.reps, hop.iters),
            (3, 1000, 5, 2000)
        );
        for bad in ["noname", "=cmd", "name= "] {
            let err = parse(&["hop", "--passthrough", bad]).err().unwrap();
            assert!(err.contains("expected NAME=COMMAND"), "{bad}: {err}");
        }
        assert!(parse(&["hop"]).is_err(), "a passthrough is required");
    }

    #[test]
    fn relay_takes_the_programs_flags() {
        let Ok(Command::Relay { listen, connect_to }) = parse(&[
            "relay",
            "--listen",
            "tcp://127.0.0.1:7000",
            "--connect-to",
            "tcp://[::1]:7001",
        ]) else {
            panic!("not relay");
        };
        assert_eq!(listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(connect_to, "[::1]:7001".parse().unwrap());
        for bad in ["127.0.0.1:7000", "tcp://localhost:7000", "unix:///tmp/s"] {
            let err = parse(&[
                "relay",
                "--listen",
                bad,
                "--connect-to",
                "tcp://127.0.0.1:1",
            ])
            .err()
            .unwrap();
            assert!(err.contains("expected tcp://IP:PORT"), "{bad}: {err}");
        }
    }
}
