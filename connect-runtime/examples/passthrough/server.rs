//! The program as a real process: a passthrough forwarding to one remote, or
//! a minimal endpoint. Both stop gracefully on SIGINT or SIGTERM.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use connect_runtime::CancellationToken;
use connect_runtime::proto::connection::Connection;
use connect_runtime::proto::networkservice::NetworkServiceRequest;
use connect_runtime::tls::{ClientTls, Identity, ServerTls, TlsError};
use connect_runtime::{
    ClientChain, ClientUrl, Connect, ConnectionMonitor, Context, DEFAULT_CLEANUP_TIMEOUT,
    DialOptions, Element, Expire, GrpcClient, Hooks, Monitor, Next, Serve, ServerChain, UpdatePath,
};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tonic::Status;
use url::Url;

use crate::args::{Hop, LogFormat, TlsFiles, TlsSource};
use crate::telemetry::{Scraped, serve_metrics};

/// updatepath → expire(monitor → clienturl(`connect_to`) → connect), served
/// on `listen` with `MonitorConnections`; each client relays its remote's
/// monitor events.
pub(crate) async fn passthrough(
    listen: Url,
    connect_to: Url,
    dial_timeout: Duration,
    hop: Hop,
    log: LogFormat,
    tls: Option<TlsSource>,
    metrics: Option<Scraped>,
) -> Result<(), String> {
    let tls = Tls::from(tls).await?;
    let mut dial = DialOptions::new().timeout(dial_timeout);
    if let Some(client) = tls.as_ref().and_then(|t| t.client.clone()) {
        dial = dial.tls(client);
    }
    let stop = CancellationToken::new();
    let monitor = ConnectionMonitor::new().shutdown_on(stop.clone());
    let relays = monitor.clone();
    let connect = Connect::builder(move |ctx: &Context, conn| {
        ClientChain::builder()
            .with(Monitor::new(ctx, conn.clone()))
            .with(relays.relay(ctx, conn.clone()))
            .with(GrpcClient::new(conn))
            .build()
    })
    .dial_options(dial)
    .build();
    let rest = ServerChain::builder()
        .with(monitor.server())
        .with(ClientUrl::new(connect_to.clone()))
        .with(connect.clone())
        .build();
    let chain = ServerChain::builder()
        .with(Logged("passthrough"))
        .with(UpdatePath::new(hop.name.as_str()).max_lifetime(hop.max_lifetime))
        .with(Expire::new(rest).max_lifetime(hop.max_lifetime))
        .build();
    // Signals are caught from before the program says it is listening, so
    // that a SIGTERM sent right after never finds the default action.
    let mut signals = Signals::install()?;
    let server_tls = tls.map(|t| t.server);
    let scrape_tls = server_tls.clone();
    let server = serving(chain, &monitor, server_tls, &stop)
        .bind(&listen)
        .await
        .map_err(|e| e.to_string())?;
    let scrape = scrape_url(metrics, scrape_tls.as_ref(), &stop).await?;
    let mut extra = vec![("forwarding_to", connect_to.as_str())];
    extra.extend(scrape.as_deref().map(|url| ("metrics_on", url)));
    announce(log, "passthrough", server.url(), &extra);
    signals.received().await;
    stop.cancel();
    // Calls in flight finish (within the grace period), and so does connect's
    // cleanup of calls their callers gave up on (each within its cleanup
    // timeout: the call's end, then a close at the remote); then every client
    // is closed. A second signal closes them at once.
    let drained = async {
        server.stopped().await;
        let cleanup = 2 * DEFAULT_CLEANUP_TIMEOUT;
        if tokio::time::timeout(cleanup, connect.settled())
            .await
            .is_err()
        {
            tracing::warn!("cleanups still running after {cleanup:?}; closing every client");
        }
    };
    tokio::select! {
        () = drained => {}
        () = signals.received() => tracing::warn!("stopping at once"),
    }
    let open = connect.stats();
    connect.shutdown();
    tracing::info!(
        clients = open.clients.len(),
        connections = open.records,
        "stopped; closed every client"
    );
    Ok(())
}

/// A minimal NSM endpoint: answers Request with the request's connection and
/// Close with empty, and serves `MonitorConnections`.
pub(crate) async fn endpoint(
    listen: Url,
    hop: Hop,
    log: LogFormat,
    tls: Option<TlsSource>,
    metrics: Option<Scraped>,
) -> Result<(), String> {
    let tls = Tls::from(tls).await?;
    let stop = CancellationToken::new();
    let monitor = ConnectionMonitor::new().shutdown_on(stop.clone());
    let rest = ServerChain::builder().with(monitor.server()).build();
    let chain = ServerChain::builder()
        .with(Logged("endpoint"))
        .with(UpdatePath::new(hop.name.as_str()).max_lifetime(hop.max_lifetime))
        .with(Expire::new(rest).max_lifetime(hop.max_lifetime))
        .build();
    let mut signals = Signals::install()?;
    let server_tls = tls.map(|t| t.server);
    let scrape_tls = server_tls.clone();
    let server = serving(chain, &monitor, server_tls, &stop)
        .bind(&listen)
        .await
        .map_err(|e| e.to_string())?;
    let scrape = scrape_url(metrics, scrape_tls.as_ref(), &stop).await?;
    let extra: Vec<_> = scrape
        .as_deref()
        .map(|url| ("metrics_on", url))
        .into_iter()
        .collect();
    announce(log, "endpoint", server.url(), &extra);
    signals.received().await;
    stop.cancel();
    // A second signal stops at once (dropping the handle closes everything).
    tokio::select! {
        () = server.stopped() => {}
        () = signals.received() => tracing::warn!("stopping at once"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts `/metrics` if asked for: its URL, until `stop`.
/// Over the listener's TLS, when it has one.
async fn scrape_url(
    metrics: Option<Scraped>,
    tls: Option<&ServerTls>,
    stop: &CancellationToken,
) -> Result<Option<String>, String> {
    let Some((at, registry)) = metrics else {
        return Ok(None);
    };
    let config = tls.map(ServerTls::rustls_config);
    let scheme = if config.is_some() { "https" } else { "http" };
    let bound = serve_metrics(at, registry, config, stop.clone()).await?;
    Ok(Some(format!("{scheme}://{bound}/metrics")))
}

/// Says on stdout where the program listens: `<role> listening on <url>`
/// (and `forwarding to <url>` for a passthrough) as text, or as one JSON
/// object in JSON mode.
fn announce(log: LogFormat, role: &str, url: &Url, extra: &[(&str, &str)]) {
    match log {
        LogFormat::Text => {
            let rest: String = extra
                .iter()
                .map(|(key, value)| format!(" {} {value}", key.replace('_', " ")))
                .collect();
            println!("{role} listening on {url}{rest}");
        }
        LogFormat::Json => {
            let mut line = serde_json::Map::new();
            line.insert(
                "message".into(),
                format!("{role} listening on {url}").into(),
            );
            line.insert("role".into(), role.into());
            line.insert("listening_on".into(), url.as_str().into());
            for (key, value) in extra {
                line.insert((*key).into(), (*value).into());
            }
            println!("{}", serde_json::Value::Object(line));
        }
    }
}

/// A server for `chain` and `monitor`'s service, with TLS if given,
/// stopping when `stop` is.
fn serving(
    chain: ServerChain,
    monitor: &ConnectionMonitor,
    tls: Option<ServerTls>,
    stop: &CancellationToken,
) -> Serve {
    let serve = Serve::new(chain)
        .add_service(monitor.service())
        .shutdown_on(stop.clone());
    match tls {
        Some(tls) => serve.tls(tls),
        None => serve,
    }
}

/// The listener's TLS and, with a CA, the dialer's, from the PEM files.
struct Tls {
    server: ServerTls,
    client: Option<ClientTls>,
}

impl Tls {
    async fn from(source: Option<TlsSource>) -> Result<Option<Self>, String> {
        match source {
            None => Ok(None),
            Some(TlsSource::Files(files)) => Self::load(&files).map(Some),
            Some(TlsSource::Spiffe) => Self::spiffe().await.map(Some),
        }
    }

    /// Both sides from this workload's SPIFFE identity; peers of its own
    /// trust domain only.
    #[cfg(feature = "spiffe")]
    async fn spiffe() -> Result<Self, String> {
        use connect_runtime::spiffe::{Authorize, SpiffeIdentity};

        let spiffe = |e: connect_runtime::spiffe::SpiffeError| format!("--spiffe: {e}");
        let identity = SpiffeIdentity::from_env().await.map_err(spiffe)?;
        tracing::info!(spiffe_id = %identity.spiffe_id().map_err(spiffe)?, "serving and dialing as");
        Ok(Self {
            server: identity
                .server_tls(Authorize::SameTrustDomain)
                .map_err(spiffe)?,
            client: Some(
                identity
                    .client_tls(Authorize::SameTrustDomain)
                    .map_err(spiffe)?,
            ),
        })
    }

    #[cfg(not(feature = "spiffe"))]
    async fn spiffe() -> Result<Self, String> {
        Err(
            "--spiffe: this build has no SPIFFE support (connect-runtime's feature `spiffe`)"
                .into(),
        )
    }

    fn load(files: &TlsFiles) -> Result<Self, String> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let (cert, key) = (read(&files.cert)?, read(&files.key)?);
        let identity = Identity::from_pem(cert, key)
            .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
        let in_file = |path: &Path, e: TlsError| format!("{}: {e}", path.display());
        let mut server = ServerTls::new(identity.clone()).map_err(|e| match e {
            TlsError::Rustls(rustls::Error::InconsistentKeys(_)) => format!(
                "{} does not match the certificate {}: give the key it was issued for",
                files.key.display(),
                files.cert.display()
            ),
            e => in_file(&files.cert, e),
        })?;
        let mut client = None;
        if let Some(ca_path) = &files.ca {
            let ca = read(ca_path)?;
            server = server.client_ca(&ca).map_err(|e| in_file(ca_path, e))?;
            let dialing = ClientTls::new(&ca).and_then(|c| c.identity(identity));
            client = Some(dialing.map_err(|e| in_file(ca_path, e))?);
        }
        Ok(Self { server, client })
    }
}

/// SIGTERM and SIGINT, caught.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())
                .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?,
            interrupt: signal(SignalKind::interrupt())
                .map_err(|e| format!("cannot watch for SIGINT: {e}"))?,
        })
    }

    async fn received(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}

/// Logs each call: at debug when it succeeds, as NSM's Go components trace
/// calls, so that a busy hop at the default level does not write (and wait
/// on) two stderr lines a call; at warn when it fails.
#[derive(Element)]
#[element(server)]
struct Logged(&'static str);

// Not `async fn`s, which would keep their arguments (see `Hooks`).
impl Hooks for Logged {
    fn request<'a>(
        &'a self,
        ctx: Context,
        request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        let id = request
            .connection
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let call = next.request(ctx, request);
        async move {
            let reply = call.await;
            match &reply {
                Ok(_) => tracing::debug!(role = self.0, connection_id = %id, "request"),
                Err(status) => {
                    tracing::warn!(role = self.0, connection_id = %id, error = %status.message(), "request failed")
                }
            }
            reply
        }
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        connection: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        let id = connection.id.clone();
        let call = next.close(ctx, connection);
        async move {
            let result = call.await;
            match &result {
                Ok(()) => tracing::debug!(role = self.0, connection_id = %id, "close"),
                Err(status) => {
                    tracing::warn!(role = self.0, connection_id = %id, error = %status.message(), "close failed")
                }
            }
            result
        }
    }
}
