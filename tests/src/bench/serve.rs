//! `serve`: N null NSM endpoints (Request answers with the request's
//! connection, Close with empty) on loopback TCP; with `--monitoring`, each
//! adds its path segment and serves MonitorConnections.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use connect_runtime::spiffe::{Authorize, SpiffeIdentity};
use connect_runtime::tls::{Identity, ServerTls};
use connect_runtime::{ConnectionMonitor, Serve, ServerChain, UpdatePath};
use connect_tests::pki::Pki;
use connect_tests::workload_api::{Authority, WorkloadApi};
use url::Url;

/// Where the CA of `--tls` endpoints goes, beside their URLs.
pub(crate) fn ca_file(addr_file: &std::path::Path) -> PathBuf {
    let mut name = addr_file.as_os_str().to_owned();
    name.push(".ca.pem");
    PathBuf::from(name)
}

/// Where the Workload API socket for callers of `--spiffe` endpoints goes.
pub(crate) fn spiffe_file(addr_file: &std::path::Path) -> PathBuf {
    let mut name = addr_file.as_os_str().to_owned();
    name.push(".spiffe");
    PathBuf::from(name)
}

pub(crate) async fn run(
    n: usize,
    addr_file: PathBuf,
    tls: bool,
    spiffe: bool,
    monitoring: bool,
) -> Result<(), String> {
    // Kept for as long as the endpoints serve: callers fetch SVIDs from it.
    let mut workload_apis = Vec::new();
    let tls = match (tls, spiffe) {
        (_, true) => {
            let domain = Arc::new(Authority::new("bench.example"));
            let lifetime = Duration::from_secs(3600);
            let endpoints = WorkloadApi::start(Arc::clone(&domain), "/endpoint", lifetime).await;
            let callers = WorkloadApi::start(domain, "/caller", lifetime).await;
            let identity = SpiffeIdentity::from_endpoint(endpoints.endpoint()).await;
            let identity = identity.map_err(|e| e.to_string())?;
            let tls = identity.server_tls(Authorize::SameTrustDomain);
            let file = spiffe_file(&addr_file);
            std::fs::write(&file, callers.endpoint())
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
            workload_apis.extend([endpoints, callers]);
            Some(tls.map_err(|e| e.to_string())?)
        }
        (true, false) => {
            let pki = Pki::new("connect-bench CA");
            let issued = pki.issue(&["127.0.0.1", "localhost"]);
            let identity = Identity::from_pem(&issued.cert_pem, &issued.key_pem);
            let tls = ServerTls::new(identity.map_err(|e| e.to_string())?);
            let ca = ca_file(&addr_file);
            std::fs::write(&ca, pki.ca_pem())
                .map_err(|e| format!("writing {}: {e}", ca.display()))?;
            Some(tls.map_err(|e| e.to_string())?)
        }
        (false, false) => None,
    };
    let mut servers = Vec::with_capacity(n);
    for _ in 0..n {
        let url = Url::parse("tcp://127.0.0.1:0").expect("a valid URL");
        let mut serve = match monitoring {
            false => Serve::new(ServerChain::default()),
            true => {
                let monitor = ConnectionMonitor::new();
                let chain = ServerChain::builder()
                    .with(UpdatePath::new("endpoint"))
                    .with(monitor.server())
                    .build();
                Serve::new(chain).add_service(monitor.service())
            }
        };
        if let Some(tls) = &tls {
            serve = serve.tls(tls.clone());
        }
        servers.push(serve.bind(&url).await.map_err(|e| e.to_string())?);
    }
    let urls: String = servers.iter().map(|s| format!("{}\n", s.url())).collect();
    // Written whole, then renamed, so a reader never sees half a file.
    let partial = addr_file.with_extension("partial");
    std::fs::write(&partial, urls).map_err(|e| format!("writing {}: {e}", partial.display()))?;
    std::fs::rename(&partial, &addr_file)
        .map_err(|e| format!("writing {}: {e}", addr_file.display()))?;
    // The line scripts wait for: the file is complete once it is printed.
    println!("serving {n} endpoints; URLs in {}", addr_file.display());
    std::future::pending::<()>().await;
    drop(workload_apis);
    Ok(())
}
