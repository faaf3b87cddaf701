//! The workloads, in both modes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::spiffe::{Authorize, SpiffeIdentity};
use connect_runtime::tls::ClientTls;
use connect_runtime::{
    ClientChain, Connect, ConnectBuilder, ConnectionMonitor, Context, DialOptions, GrpcClient,
    ServerChain, UpdatePath,
};
use connect_tests::harness::{counting_dials, grpc_only_counting_dials};
use tokio::sync::Barrier;
use tonic::Status;
use tonic::client::Grpc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use url::Url;

use crate::measure::{Latencies, Report, cpu_time};
use crate::options::{Mode, Run, Workload};

const WARM_UP_PAIRS: usize = 200;

const SERVICE: &str = "networkservice.NetworkService";
const REQUEST: (&str, &str) = ("/networkservice.NetworkService/Request", "Request");
const CLOSE: (&str, &str) = ("/networkservice.NetworkService/Close", "Close");

/// A direct call as the client tonic generates by default makes it: with
/// tonic's `ProstCodec` and its default buffers (connect's generated
/// clients size theirs for NSM's messages), and the `GrpcMethod`
/// extension it puts on every call.
async fn unary<M, R>(
    mut grpc: Grpc<Channel>,
    (path, method): (&'static str, &'static str),
    message: M,
) -> Result<tonic::Response<R>, Status>
where
    M: prost::Message + Send + 'static,
    R: prost::Message + Default + Send + 'static,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let codec = tonic_prost::ProstCodec::<M, R>::default();
    let mut request = tonic::Request::new(message);
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new(SERVICE, method));
    grpc.unary(request, path, codec).await
}

pub(crate) async fn run(run: Run) -> Result<(), String> {
    let _telemetry = match run.telemetry {
        true => Some(crate::telemetry::install(run.otlp.as_deref())?),
        false => None,
    };
    let text = std::fs::read_to_string(&run.remotes)
        .map_err(|e| format!("reading {}: {e}", run.remotes.display()))?;
    let remotes = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            Url::parse(line)
                .map(Arc::new)
                .map_err(|e| format!("`{line}` in {}: {e}", run.remotes.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if remotes.is_empty() {
        return Err(format!("{} lists no remotes", run.remotes.display()));
    }
    for workload in &run.workloads {
        if *workload == Workload::S {
            let used = run.remotes_used.unwrap_or(remotes.len());
            let Some(used) = remotes.get(..used) else {
                return Err(format!(
                    "--remotes-used {used}, but {} lists {} remotes",
                    run.remotes.display(),
                    remotes.len()
                ));
            };
            println!("{}", crate::scale::run(&run, used).await?);
            continue;
        }
        let report = match workload {
            Workload::A => concurrent(&run, *workload, &remotes[..1]).await?,
            Workload::B => concurrent(&run, *workload, &remotes).await?,
            Workload::C => sequential(&run, *workload, &remotes[0], false).await?,
            Workload::W => sequential(&run, *workload, &remotes[0], true).await?,
            Workload::S => unreachable!("handled above"),
        };
        println!("{}", report.json());
    }
    Ok(())
}

/// How callers dial the remotes: `--tls` or `--spiffe`, or neither.
enum Security {
    Plain,
    /// The PEM CA that signed the remotes' certificates.
    Ca(String),
    /// An SVID from the Workload API that `serve --spiffe` runs.
    Spiffe(ClientTls),
}

impl Security {
    async fn of(run: &Run) -> Result<Self, String> {
        let read = |file: std::path::PathBuf| {
            std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))
        };
        if run.tls {
            return Ok(Self::Ca(read(crate::serve::ca_file(&run.remotes))?));
        }
        if run.spiffe {
            let endpoint = read(crate::serve::spiffe_file(&run.remotes))?;
            let identity = SpiffeIdentity::from_endpoint(&endpoint).await;
            let identity = identity.map_err(|e| e.to_string())?;
            let tls = identity.client_tls(Authorize::SameTrustDomain);
            return Ok(Self::Spiffe(tls.map_err(|e| e.to_string())?));
        }
        Ok(Self::Plain)
    }
}

/// tonic's channel over SPIFFE mutual TLS: its own connector cannot take a
/// rustls configuration, so TCP and TLS are done here, with the same
/// configuration connect dials with (less its session resumption, which a
/// channel dialed once has no use for).
fn spiffe_connector(
    tls: &ClientTls,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let connector = tokio_rustls::TlsConnector::from(tls.rustls_config());
    tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_owned();
            let tcp = tokio::net::TcpStream::connect((host, uri.port_u16().unwrap_or(443))).await?;
            tcp.set_nodelay(true)?;
            // SPIFFE verifies the server's ID, not a name.
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
            let stream = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// Who makes the calls: the `connect` element, or tonic clients dialed
/// beforehand.
#[derive(Clone)]
pub(crate) enum Caller {
    Connect {
        chain: ServerChain,
        connect: Connect,
        dials: Arc<AtomicUsize>,
        /// With `--monitoring`, the hop's monitor.
        monitor: Option<ConnectionMonitor>,
    },
    Direct {
        clients: Arc<Vec<Grpc<Channel>>>,
    },
}

impl Caller {
    /// A fresh `connect` element whose client chain is just the gRPC call;
    /// with `monitoring`, behind `updatepath → monitor`, each client
    /// relaying its remote's events.
    fn connect(security: &Security, monitoring: bool, linger: Duration) -> Result<Self, String> {
        let (connect, monitor, dials) = match monitoring {
            false => {
                let (connect, dials) = grpc_only_counting_dials();
                (connect, None, dials)
            }
            true => {
                let (connect, monitor, dials) = relaying_counting_dials();
                (connect, Some(monitor), dials)
            }
        };
        let mut options = DialOptions::new().timeout(Duration::from_secs(2));
        match security {
            Security::Plain => {}
            Security::Ca(ca) => {
                options = options.tls(ClientTls::new(ca).map_err(|e| e.to_string())?);
            }
            Security::Spiffe(tls) => options = options.tls(tls.clone()),
        }
        let connect = connect.dial_options(options).linger(linger).build();
        let chain = match &monitor {
            None => ServerChain::builder().with(connect.clone()).build(),
            Some(monitor) => ServerChain::builder()
                .with(UpdatePath::new("hop"))
                .with(monitor.server())
                .with(connect.clone())
                .build(),
        };
        Ok(Self::Connect {
            chain,
            connect,
            dials,
            monitor,
        })
    }

    /// tonic's generated client over tonic's own channel, dialed
    /// beforehand: what a tonic user writes, without connect's transport.
    async fn direct(remotes: &[Arc<Url>], security: &Security) -> Result<Self, String> {
        let mut clients = Vec::with_capacity(remotes.len());
        for url in remotes {
            let (Some(host), Some(port)) = (url.host_str(), url.port()) else {
                return Err(format!(
                    "direct mode needs tcp://host:port remotes, not {url}"
                ));
            };
            let scheme = match security {
                Security::Ca(_) => "https",
                Security::Plain | Security::Spiffe(_) => "http",
            };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host}:{port}"))
                .map_err(|e| format!("{url}: {e}"))?
                .connect_timeout(Duration::from_secs(2));
            if let Security::Ca(ca) = security {
                let config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name(host);
                endpoint = endpoint.tls_config(config).map_err(|e| e.to_string())?;
            }
            let channel = match security {
                Security::Spiffe(tls) => {
                    let connector = spiffe_connector(tls);
                    endpoint.connect_with_connector(connector).await
                }
                Security::Plain | Security::Ca(_) => endpoint.connect().await,
            };
            let channel = channel.map_err(|e| format!("dialing {url}: {e}"))?;
            clients.push(Grpc::new(channel));
        }
        Ok(Self::Direct {
            clients: Arc::new(clients),
        })
    }

    pub(crate) async fn caller(run: &Run, remotes: &[Arc<Url>]) -> Result<Self, String> {
        let security = Security::of(run).await?;
        match run.mode {
            Mode::Connect => Self::connect(&security, run.monitoring, run.linger),
            Mode::Direct if run.monitoring => {
                Err("--monitoring is a hop's: use it with --mode connect".into())
            }
            Mode::Direct => Self::direct(remotes, &security).await,
        }
    }

    pub(crate) async fn request(
        &self,
        remote: usize,
        url: &Arc<Url>,
        id: String,
    ) -> Result<Connection, Status> {
        let connection = Connection {
            id,
            ..Default::default()
        };
        self.refresh(remote, url, connection).await
    }

    /// A request for `connection` as the remote last returned it: a
    /// refresh, or (with only an id) a new connection.
    pub(crate) async fn refresh(
        &self,
        remote: usize,
        url: &Arc<Url>,
        connection: Connection,
    ) -> Result<Connection, Status> {
        let request = NetworkServiceRequest {
            connection: Some(Box::new(connection)),
            ..Default::default()
        };
        match self {
            Caller::Connect { chain, .. } => {
                let ctx = Context::new().with_client_url(Arc::clone(url));
                chain.request(ctx, request).await
            }
            Caller::Direct { clients } => {
                let call = unary(clients[remote].clone(), REQUEST, request);
                Ok(call.await?.into_inner())
            }
        }
    }

    pub(crate) async fn close(&self, remote: usize, connection: Connection) -> Result<(), Status> {
        match self {
            Caller::Connect { chain, .. } => chain.close(Context::new(), connection).await,
            Caller::Direct { clients } => {
                let call = unary::<_, ()>(clients[remote].clone(), CLOSE, connection);
                call.await?;
                Ok(())
            }
        }
    }

    /// The hop's monitor, with `--monitoring`.
    pub(crate) fn monitor(&self) -> Option<&ConnectionMonitor> {
        match self {
            Caller::Connect { monitor, .. } => monitor.as_ref(),
            Caller::Direct { .. } => None,
        }
    }

    pub(crate) fn dials(&self) -> usize {
        match self {
            Caller::Connect { dials, .. } => dials.load(Ordering::Relaxed),
            Caller::Direct { .. } => 0,
        }
    }

    /// Waits until `connect` has let go of every client (so the next rep
    /// starts from nothing), or at once for direct calls.
    pub(crate) async fn settle(&self) {
        if let Caller::Connect { connect, .. } = self {
            let _ = tokio::time::timeout(Duration::from_secs(10), connect.idle()).await;
        }
    }
}

/// [`grpc_only_counting_dials`] with a [`ConnectionMonitor`] relay before
/// the gRPC call, and the monitor.
fn relaying_counting_dials() -> (ConnectBuilder, ConnectionMonitor, Arc<AtomicUsize>) {
    let monitor = ConnectionMonitor::new();
    let relays = monitor.clone();
    let (builder, dials) = counting_dials(move |ctx: &Context, conn| {
        ClientChain::builder()
            .with(relays.relay(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    });
    (builder, monitor, dials)
}

/// One Request+Close pair's timings.
struct Pair {
    started: Instant,
    request: Duration,
    close: Duration,
    finished: Instant,
}

async fn pair(caller: &Caller, remote: usize, url: &Arc<Url>, id: String) -> Result<Pair, Status> {
    let started = Instant::now();
    let connection = caller.request(remote, url, id).await?;
    let requested = Instant::now();
    caller.close(remote, connection).await?;
    let finished = Instant::now();
    Ok(Pair {
        started,
        request: requested - started,
        close: finished - requested,
        finished,
    })
}

/// Workloads a and b: `n` connections released together from a barrier,
/// each doing Request then Close; connection k goes to remote k mod count.
async fn concurrent(run: &Run, workload: Workload, remotes: &[Arc<Url>]) -> Result<Report, String> {
    let mut report = Report {
        workload: workload.name(),
        mode: run.mode.name(),
        n: run.n,
        remotes: remotes.len(),
        wall: Vec::new(),
        request: Latencies::default(),
        pair: Latencies::default(),
        close: Latencies::default(),
        dials: 0,
        errors: 0,
        cpu: Duration::ZERO,
        pairs: 0,
    };
    // Direct dials once; connect starts afresh each repetition.
    let first = Caller::caller(run, remotes).await?;
    for rep in 0..=run.reps {
        let measured = rep > 0;
        let caller = match (&first, rep) {
            (_, 0) | (Caller::Direct { .. }, _) => first.clone(),
            (Caller::Connect { .. }, _) => Caller::caller(run, remotes).await?,
        };
        let barrier = Arc::new(Barrier::new(run.n + 1));
        let tasks: Vec<_> = (0..run.n)
            .map(|k| {
                let (caller, barrier) = (caller.clone(), Arc::clone(&barrier));
                let remote = k % remotes.len();
                let url = Arc::clone(&remotes[remote]);
                let id = format!("{}-{rep}-{k}", workload.name());
                tokio::spawn(async move {
                    barrier.wait().await;
                    pair(&caller, remote, &url, id).await
                })
            })
            .collect();
        let cpu_before = cpu_time();
        barrier.wait().await;
        // The burst is released when its first pair starts: not at
        // `Instant::now()` here, as this task is woken with the others and
        // may run after hundreds of them have started, or finished, their
        // pairs. The wall runs from there to the last pair's end, and each
        // pair's latency from there too, waiting for its first turn
        // included, as its caller would see it.
        let mut timings = Vec::with_capacity(run.n);
        for task in tasks {
            match task.await {
                Ok(Ok(timing)) => timings.push(timing),
                _ if measured => report.errors += 1,
                _ => {}
            }
        }
        let released = timings.iter().map(|t| t.started).min();
        let ended = timings.iter().map(|t| t.finished).max();
        if measured && let (Some(released), Some(ended)) = (released, ended) {
            for timing in &timings {
                let requested = timing.started + timing.request;
                report.request.push(requested - released);
                report.close.push(timing.close);
                report.pair.push(timing.finished - released);
            }
            report.wall.push(ended - released);
        }
        if measured {
            report.cpu += cpu_time().saturating_sub(cpu_before);
            report.pairs += run.n;
            report.dials += caller.dials();
        }
        caller.settle().await;
    }
    Ok(report)
}

/// Workloads c and w: `iters` Request+Close pairs one after another on one
/// remote, after warm-up pairs. For w another connection is held open
/// throughout, so `connect` keeps its client; for c each pair dials afresh.
async fn sequential(
    run: &Run,
    workload: Workload,
    url: &Arc<Url>,
    hold: bool,
) -> Result<Report, String> {
    let caller = Caller::caller(run, std::slice::from_ref(url)).await?;
    let held = if hold {
        Some(
            caller
                .request(0, url, format!("{}-held", workload.name()))
                .await
                .map_err(|e| format!("opening the held connection: {e}"))?,
        )
    } else {
        None
    };
    let mut report = Report {
        workload: workload.name(),
        mode: run.mode.name(),
        n: run.iters,
        remotes: 1,
        wall: Vec::new(),
        request: Latencies::default(),
        pair: Latencies::default(),
        close: Latencies::default(),
        dials: 0,
        errors: 0,
        cpu: Duration::ZERO,
        pairs: run.iters,
    };
    for k in 0..WARM_UP_PAIRS {
        let _ = pair(&caller, 0, url, format!("{}-warm-{k}", workload.name())).await;
    }
    let dials_before = caller.dials();
    let cpu_before = cpu_time();
    let started = Instant::now();
    for k in 0..run.iters {
        match pair(&caller, 0, url, format!("{}-{k}", workload.name())).await {
            Ok(timing) => {
                report.request.push(timing.request);
                report.close.push(timing.close);
                report.pair.push(timing.request + timing.close);
            }
            Err(_) => report.errors += 1,
        }
    }
    report.wall.push(started.elapsed());
    report.cpu = cpu_time().saturating_sub(cpu_before);
    report.dials = caller.dials() - dials_before;
    if let Some(held) = held {
        caller
            .close(0, held)
            .await
            .map_err(|e| format!("closing the held connection: {e}"))?;
    }
    caller.settle().await;
    Ok(report)
}
