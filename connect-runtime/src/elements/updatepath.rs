//! This hop's path segment: NSM's `updatepath` server element.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use connect_macros::Element;
use tonic::Status;

use crate::chain::{Context, Hooks, Next};
use crate::proto::connection::{Connection, PathSegment};
use crate::proto::networkservice::NetworkServiceRequest;

/// The longest a hop vouches for a connection when its caller sets no
/// expiry, or a later one: NSM's `NSM_MAX_TOKEN_LIFETIME` default.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Finds or adds this hop's segment of a connection's path, as NSM's
/// `updatepath` server does, so that the next hop sees this one as its
/// caller and every hop has an id of its own for the connection.
///
/// - A connection with no path gets one of a single segment, this hop's,
///   keeping the connection's id (a new one if it has none).
/// - If the segment at the path's index is named after this hop (a
///   request this hop made itself), the connection takes that segment's id.
/// - Otherwise the segment at the index is the caller's. The next one
///   becomes this hop's: kept if it is named after this hop (a refresh),
///   renamed with a new id if not, added with a new id if there is none.
///   The index moves to it and the connection takes its id.
///
/// On the way back the connection gets the caller's id and index again.
/// A path whose index is past its end, or whose segment at the index does
/// not have the connection's id, is refused with `INVALID_ARGUMENT`.
///
/// This hop's segment `expires` when the caller's does, but no later than
/// [`max_lifetime`](Self::max_lifetime) from now: the time by which the
/// next hop's expiry closes the connection if no refresh comes.
///
/// ```
/// use connect_runtime::prelude::*;
/// use connect_runtime::UpdatePath;
/// use connect_runtime::proto::connection::{Path, PathSegment};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let chain = ServerChain::builder().with(UpdatePath::new("passthrough-1")).build();
/// let caller = PathSegment { name: "nsc".into(), id: "c-1".into(), ..Default::default() };
/// let conn = Connection {
///     id: "c-1".into(),
///     path: Some(Box::new(Path { index: 0, path_segments: vec![caller], ..Default::default() })),
///     ..Default::default()
/// };
/// let request = NetworkServiceRequest { connection: Some(Box::new(conn)), ..Default::default() };
/// let conn = chain.request(Context::new(), request).await.unwrap();
/// let path = conn.path.unwrap();
/// assert_eq!(path.path_segments[1].name, "passthrough-1");
/// assert_ne!(path.path_segments[1].id, "c-1"); // this hop's own id
/// assert_eq!((conn.id.as_str(), path.index), ("c-1", 0)); // the caller's again
/// # }
/// ```
#[derive(Clone, Debug, Element)]
#[element(server)]
pub struct UpdatePath {
    name: Arc<str>,
    max_lifetime: Duration,
}

impl UpdatePath {
    /// This hop's segment, named `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
        }
    }

    /// The latest this hop's segment expires, from the time of each request
    /// ([`DEFAULT_MAX_TOKEN_LIFETIME`] unless set).
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.max_lifetime = max_lifetime;
        self
    }

    /// This hop's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

// Not `async fn`s, which would keep their arguments (see `Hooks`).
impl Hooks for UpdatePath {
    fn request<'a>(
        &'a self,
        ctx: Context,
        mut request: NetworkServiceRequest,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Connection, Status>> + Send + 'a {
        let conn = request.connection.get_or_insert_default();
        let back = update(conn, &self.name);
        if back.is_ok() {
            set_own_expiry(conn, SystemTime::now() + self.max_lifetime);
        }
        let call = back.map(|back| (back, next.request(ctx, request)));
        async move {
            let (back, call) = call?;
            let mut conn = call.await?;
            if let Some(path) = conn.path.as_mut()
                && let Some(segment) = path.path_segments.get(back as usize)
            {
                conn.id.clone_from(&segment.id);
                path.index = back;
            }
            Ok(conn)
        }
    }

    fn close<'a>(
        &'a self,
        ctx: Context,
        mut conn: Connection,
        next: Next<'a>,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        let call = update(&mut conn, &self.name).map(|_| next.close(ctx, conn));
        async move { call?.await }
    }
}

/// Moves `conn` to this hop's segment (see [`UpdatePath`]); returns the
/// index to give back to the caller.
fn update(conn: &mut Connection, name: &str) -> Result<u32, Status> {
    let path = conn.path.get_or_insert_default();
    let segments = &mut path.path_segments;
    if segments.is_empty() {
        path.index = 0;
        if conn.id.is_empty() {
            conn.id = new_id();
        }
        segments.push(segment(name, conn.id.clone()));
        return Ok(0);
    }
    let index = path.index as usize;
    if let Some(own) = segments.get(index).filter(|s| s.name == name) {
        conn.id.clone_from(&own.id);
        return Ok(path.index);
    }
    if index >= segments.len() {
        return Err(Status::invalid_argument(format!(
            "Path.Index+1=={} should be less or equal len(Path.PathSegments)=={}",
            index + 1,
            segments.len()
        )));
    }
    if segments[index].id != conn.id {
        return Err(Status::invalid_argument(format!(
            "Current PathSegment.Id=={} should be equal Connection.Id=={}",
            segments[index].id, conn.id
        )));
    }
    match segments.get_mut(index + 1) {
        Some(next) if next.name == name => conn.id.clone_from(&next.id),
        Some(next) => {
            next.name = name.to_owned();
            next.id = new_id();
            conn.id.clone_from(&next.id);
        }
        None => {
            conn.id = new_id();
            segments.push(segment(name, conn.id.clone()));
        }
    }
    path.index += 1;
    Ok(index as u32)
}

/// This hop's segment expires with the caller's, but no later than
/// `latest`.
fn set_own_expiry(conn: &mut Connection, latest: SystemTime) {
    let expires = caller_expiry(conn).map_or(latest, |c| c.min(latest));
    let Some(path) = conn.path.as_mut() else {
        return;
    };
    if let Some(own) = path.path_segments.get_mut(path.index as usize) {
        own.expires = Some(expires.into());
    }
}

/// When the caller's segment (the one before this hop's, at the path's
/// index) expires, if it says.
pub(crate) fn caller_expiry(conn: &Connection) -> Option<SystemTime> {
    let path = conn.path.as_ref()?;
    let caller = (path.index as usize).checked_sub(1)?;
    let expires = path.path_segments.get(caller)?.expires?;
    SystemTime::try_from(expires).ok()
}

fn segment(name: &str, id: String) -> PathSegment {
    PathSegment {
        name: name.to_owned(),
        id,
        ..Default::default()
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::connection::Path;

    /// `n` segments nse-1/ID1 …, index `index`.
    fn path(index: u32, n: usize) -> Path {
        Path {
            index,
            path_segments: (1..=n)
                .map(|i| segment(&format!("nse-{i}"), format!("ID{i}")))
                .collect(),
            ..Default::default()
        }
    }

    fn conn(id: &str, path: Option<Path>) -> Connection {
        Connection {
            id: id.into(),
            path: path.map(Box::new),
            ..Default::default()
        }
    }

    #[test]
    fn no_path_and_no_id_gets_a_segment_with_a_new_id() {
        let mut c = conn("", None);
        assert_eq!(update(&mut c, "nse-1").unwrap(), 0);
        let path = c.path.unwrap();
        assert_eq!(path.path_segments.len(), 1);
        assert_eq!(path.path_segments[0].name, "nse-1");
        assert!(!c.id.is_empty());
        assert_eq!(path.path_segments[0].id, c.id);
    }

    #[test]
    fn no_path_keeps_the_connection_id() {
        let mut c = conn("conn-1", Some(Path::default()));
        assert_eq!(update(&mut c, "nse-1").unwrap(), 0);
        assert_eq!(c.path.unwrap().path_segments[0].id, "conn-1");
        assert_eq!(c.id, "conn-1");
    }

    #[test]
    fn the_same_hop_takes_its_segment_id() {
        let mut c = conn("conn-1", Some(path(1, 2)));
        assert_eq!(update(&mut c, "nse-2").unwrap(), 1);
        assert_eq!(c.id, "ID2");
        assert_eq!(*c.path.unwrap(), path(1, 2));
    }

    #[test]
    fn an_id_that_is_not_the_callers_segment_is_refused() {
        let mut c = conn("conn-1", Some(path(1, 2)));
        let err = update(&mut c, "nse-3").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("ID2"), "{}", err.message());
    }

    #[test]
    fn an_index_past_the_path_is_refused() {
        let mut c = conn("ID2", Some(path(3, 2)));
        let err = update(&mut c, "nse-3").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("Path.Index+1==4"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn a_next_segment_of_another_name_becomes_this_hops() {
        let mut c = conn("ID2", Some(path(1, 3)));
        c.path.as_mut().unwrap().path_segments[2].name = "different".into();
        assert_eq!(update(&mut c, "nse-3").unwrap(), 1);
        let path = c.path.unwrap();
        assert_eq!(path.index, 2);
        assert_eq!(path.path_segments[2].name, "nse-3");
        assert_ne!(path.path_segments[2].id, "ID3");
        assert_eq!(path.path_segments[2].id, c.id);
    }

    #[test]
    fn with_no_next_segment_this_hop_adds_one() {
        let mut c = conn("ID2", Some(path(1, 2)));
        assert_eq!(update(&mut c, "nse-3").unwrap(), 1);
        let path = c.path.unwrap();
        assert_eq!(path.index, 2);
        assert_eq!(path.path_segments.len(), 3);
        assert_eq!(path.path_segments[2].name, "nse-3");
        assert_eq!(path.path_segments[2].id, c.id);
        assert!(c.id != "ID2" && !c.id.is_empty());
    }

    #[test]
    fn a_next_segment_of_this_name_is_kept() {
        let mut c = conn("ID2", Some(path(1, 3)));
        c.path.as_mut().unwrap().path_segments[2].name = "nse-3".into();
        assert_eq!(update(&mut c, "nse-3").unwrap(), 1);
        assert_eq!(c.id, "ID3");
        assert_eq!(c.path.unwrap().index, 2);
    }

    #[test]
    fn this_hops_expiry_is_the_callers_capped() {
        let now = SystemTime::now();
        let mut c = conn("ID1", Some(path(0, 1)));
        update(&mut c, "nse-2").unwrap();
        let soon = now + Duration::from_secs(5);
        c.path.as_mut().unwrap().path_segments[0].expires = Some(soon.into());
        set_own_expiry(&mut c, now + Duration::from_secs(60));
        let own = |c: &Connection| c.path.as_ref().unwrap().path_segments[1].expires;
        assert_eq!(own(&c), Some(soon.into()));
        set_own_expiry(&mut c, now + Duration::from_secs(1));
        assert_eq!(own(&c), Some((now + Duration::from_secs(1)).into()));
        c.path.as_mut().unwrap().path_segments[0].expires = None;
        set_own_expiry(&mut c, now + Duration::from_secs(60));
        assert_eq!(own(&c), Some((now + Duration::from_secs(60)).into()));
    }
}
