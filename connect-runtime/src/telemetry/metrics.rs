//! The instruments connect, its transport and the served side record on.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use tonic::{Code, Status};

/// The name of the meter [`Connect`](crate::Connect) and
/// [`Serve`](crate::Serve) take from the global meter provider when their
/// builders are given none.
pub const METER_NAME: &str = "connect";

/// Bucket bounds in seconds, from a loopback call (tens of µs) to a dial
/// timeout's worth.
const SECONDS: [f64; 15] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

fn seconds(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(SECONDS.to_vec())
        .build()
}

/// A status code as grpc-go names it (what NSM's dashboards show).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn code_of<T>(result: &Result<T, Status>) -> Code {
    result.as_ref().map_or_else(Status::code, |_| Code::Ok)
}

/// What a request did to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// The first request for a connection id.
    New,
    /// A request for a connection already forwarded to the same URL.
    Refresh,
    /// A request for a connection forwarded elsewhere before.
    Move,
}

impl CallKind {
    fn label(self) -> &'static str {
        match self {
            CallKind::New => "new",
            CallKind::Refresh => "refresh",
            CallKind::Move => "move",
        }
    }
}

/// Who asked for a close.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CloseOrigin {
    /// The chain's caller.
    Caller,
    /// connect itself: undoing a failed or abandoned call, or leaving the
    /// previous remote of a moved connection.
    Cleanup,
}

/// How many clients and connections a `Connect` holds, for its gauges.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Census {
    pub(crate) clients: u64,
    pub(crate) retired: u64,
    pub(crate) connections: u64,
}

/// connect's instruments: `connect_requests_total`,
/// `connect_request_duration_seconds`, `connect_closes_total`, and the
/// gauges read from its census when a reader collects.
#[derive(Clone)]
pub(crate) struct ConnectMetrics {
    requests: Counter<u64>,
    request_duration: Histogram<f64>,
    closes: Counter<u64>,
}

impl fmt::Debug for ConnectMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectMetrics")
    }
}

impl ConnectMetrics {
    /// Instruments on `meter`; the gauges call `census`, which answers
    /// `None` once its `Connect` is gone.
    pub(crate) fn new(
        meter: &Meter,
        census: impl Fn() -> Option<Census> + Send + Sync + 'static,
    ) -> Self {
        let census = Arc::new(census);
        let gauge = |name: &'static str, description: &'static str, pick: fn(&Census) -> u64| {
            let census = Arc::clone(&census);
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| {
                    if let Some(census) = census() {
                        observer.observe(pick(&census), &[]);
                    }
                })
                .build();
        };
        gauge(
            "connect_clients",
            "Clients connect holds (one per remote URL), retired ones apart",
            |c| c.clients,
        );
        gauge(
            "connect_retired_clients",
            "Clients retired by a certificate rotation, kept while connections use them",
            |c| c.retired,
        );
        gauge(
            "connect_connections",
            "Connections forwarded and not yet closed",
            |c| c.connections,
        );
        Self {
            requests: meter
                .u64_counter("connect_requests")
                .with_description("Requests connect forwarded, by kind and gRPC code")
                .build(),
            request_duration: seconds(
                meter,
                "connect_request_duration",
                "Time connect took over a request, the rest of the chain included",
            ),
            closes: meter
                .u64_counter("connect_closes")
                .with_description("Closes connect sent to remotes, by origin and gRPC code")
                .build(),
        }
    }

    /// Starts recording a request, as `New` until it is known to be more.
    pub(crate) fn request(&self) -> Recorded<'_> {
        Recorded {
            metrics: self,
            kind: CallKind::New,
            started: Instant::now(),
            done: false,
        }
    }

    /// Records a close's outcome.
    pub(crate) fn closed(&self, origin: CloseOrigin, result: &Result<(), Status>) {
        let origin = match origin {
            CloseOrigin::Caller => "caller",
            CloseOrigin::Cleanup => "cleanup",
        };
        self.closes.add(
            1,
            &[
                KeyValue::new("origin", origin),
                KeyValue::new("code", code_name(code_of(result))),
            ],
        );
    }
}

/// A request being recorded: its outcome when it finishes, or `Canceled`
/// if its future is dropped first.
pub(crate) struct Recorded<'m> {
    metrics: &'m ConnectMetrics,
    kind: CallKind,
    started: Instant,
    done: bool,
}

impl Recorded<'_> {
    pub(crate) fn set_kind(&mut self, kind: CallKind) {
        self.kind = kind;
    }

    pub(crate) fn finish<T>(mut self, result: &Result<T, Status>) {
        self.record(code_of(result));
    }

    fn record(&mut self, code: Code) {
        self.done = true;
        let kind = KeyValue::new("kind", self.kind.label());
        let took = self.started.elapsed().as_secs_f64();
        self.metrics
            .request_duration
            .record(took, std::slice::from_ref(&kind));
        self.metrics
            .requests
            .add(1, &[kind, KeyValue::new("code", code_name(code))]);
    }
}

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record(Code::Cancelled);
        }
    }
}

/// How a dial ended, as `connect_dials_total`'s `outcome`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DialOutcome {
    Ok,
    /// No answer within the dial timeout.
    Timeout,
    /// Refused, unreachable, or a failed TLS or HTTP/2 handshake.
    Failed,
    /// The remote answered, but not with HTTP/2.
    NotHttp2,
    /// The URL or the TLS options cannot dial it.
    Invalid,
}

/// The transport's instruments: `connect_dials_total`,
/// `connect_dial_duration_seconds` and `connect_goaway_redials_total`.
#[derive(Clone)]
pub(crate) struct DialMetrics {
    dials: Counter<u64>,
    duration: Histogram<f64>,
    redials: Counter<u64>,
}

impl fmt::Debug for DialMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DialMetrics")
    }
}

impl DialMetrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        Self {
            dials: meter
                .u64_counter("connect_dials")
                .with_description("Connections dialed to remotes (first dials and redials), by outcome")
                .build(),
            duration: seconds(
                meter,
                "connect_dial_duration",
                "Time from a dial's start to the remote's HTTP/2 SETTINGS, or its failure",
            ),
            redials: meter
                .u64_counter("connect_goaway_redials")
                .with_description(
                    "New connections a client dialed after its last one ended (GOAWAY, reset, restart)",
                )
                .build(),
        }
    }

    pub(crate) fn dialed(&self, outcome: DialOutcome, took: Duration) {
        let outcome = match outcome {
            DialOutcome::Ok => "ok",
            DialOutcome::Timeout => "timeout",
            DialOutcome::Failed => "failed",
            DialOutcome::NotHttp2 => "not_http2",
            DialOutcome::Invalid => "invalid",
        };
        self.dials.add(1, &[KeyValue::new("outcome", outcome)]);
        self.duration.record(took.as_secs_f64(), &[]);
    }

    pub(crate) fn redialed(&self) {
        self.redials.add(1, &[]);
    }
}
