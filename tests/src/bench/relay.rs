//! `relay`: the hop's floor. It takes the program's flags, and copies each
//! connection accepted on `--listen` both ways to a new connection to
//! `--connect-to`, on one thread, parsing nothing. A passthrough that
//! forwards calls does all this and more, so `hop` with the relay beside a
//! passthrough measures what the topology itself costs: the extra process,
//! its wake-ups and its system calls.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

pub(crate) fn run(listen: SocketAddr, connect_to: SocketAddr) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("listening on {listen}: {e}"))?;
        loop {
            // A failed accept ends the relay, as a floor measured around one
            // would be wrong; the hop then reports the calls that failed.
            let (inbound, _) = listener
                .accept()
                .await
                .map_err(|e| format!("accepting on {listen}: {e}"))?;
            tokio::spawn(relay(inbound, connect_to));
        }
    })
}

async fn relay(mut inbound: TcpStream, to: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(to).await else {
        return;
    };
    // As every gRPC implementation sets it: a small write leaves at once.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
