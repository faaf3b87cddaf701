//! `serve`: N null NSM endpoints (Request answers with the request's
//! connection, Close with empty) on loopback TCP.

use std::path::PathBuf;

use connect_runtime::{ServerChain, serve};
use tokio_util::sync::CancellationToken;
use url::Url;

pub(crate) async fn run(n: usize, addr_file: PathBuf) -> Result<(), String> {
    let mut servers = Vec::with_capacity(n);
    for _ in 0..n {
        let url = Url::parse("tcp://127.0.0.1:0").expect("a valid URL");
        let server = serve(&url, ServerChain::default(), CancellationToken::new())
            .await
            .map_err(|e| e.to_string())?;
        servers.push(server);
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
    Ok(())
}
