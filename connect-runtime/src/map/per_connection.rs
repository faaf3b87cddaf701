//! An element's state for each connection, which the chain releases.

use std::fmt;
use std::sync::Arc;

use super::{DEFAULT_SHARDS, Shards};

/// State an element keeps per connection, whose entries the chain removes:
/// what `#[derive(Element)]` looks for in an element's fields.
///
/// A field of type [`PerConnection`] is found by its type's name; mark any
/// other field whose type implements this trait `#[element(state)]` (an
/// `Arc<PerConnection<V>>` shared with other code, say). For each such
/// field the derived element removes the entry of a connection id
///
/// - when a Close for it has run through the element, whether the rest of
///   the chain failed or not, or was given up half-way;
/// - when a Request for an id that had no entry fails or is given up
///   half-way (a refresh that fails keeps the entry, as the connection
///   lives on);
///
/// so that nothing outlives the connection. Expiry closes run through the
/// chain [`Expire`](crate::Expire) wraps: put stateful elements inside it.
/// Entries are keyed by the id the call arrived with at the element.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not per-connection state",
    label = "`#[element(state)]` marks a field whose type implements `ConnectionState`",
    note = "use `connect_runtime::PerConnection<V>`, or implement `connect_runtime::map::ConnectionState` for the type"
)]
pub trait ConnectionState: Send + Sync {
    /// Whether `id` has an entry.
    fn contains(&self, id: &str) -> bool;

    /// Removes `id`'s entry, if it has one. Derived elements call this;
    /// their own code need not.
    fn release(&self, id: &str);

    /// Number of entries (a snapshot).
    fn len(&self) -> usize;

    /// Whether there are no entries (a snapshot).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: ConnectionState + ?Sized> ConnectionState for Arc<T> {
    fn contains(&self, id: &str) -> bool {
        (**self).contains(id)
    }

    fn release(&self, id: &str) {
        (**self).release(id);
    }

    fn len(&self) -> usize {
        (**self).len()
    }
}

/// A value per connection id, released by the chain when the connection
/// ends at the element that holds it (see [`ConnectionState`]): the
/// per-connection maps that grew forever in Go's metrics and authorize
/// elements cannot grow here.
///
/// Sharded like [`SyncMap`](super::SyncMap); the closure given to
/// [`update`](Self::update) runs under its shard's lock, so it must be short
/// and must not use the same map.
///
/// ```
/// use connect_runtime::prelude::*;
///
/// /// Counts the requests of each connection.
/// #[derive(Default, Element)]
/// struct Requests {
///     seen: PerConnection<u32>,
/// }
///
/// impl Hooks for Requests {
///     async fn request(
///         &self,
///         ctx: Context,
///         request: NetworkServiceRequest,
///         next: Next<'_>,
///     ) -> Result<Connection, Status> {
///         let id = request.connection.as_ref().map_or("", |c| c.id.as_str());
///         self.seen.update(id, |n| *n += 1);
///         next.request(ctx, request).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let requests = std::sync::Arc::new(Requests::default());
/// let chain = ServerChain::builder().with_arc(requests.clone()).build();
/// let request = NetworkServiceRequest {
///     connection: Some(Box::new(Connection { id: "c-1".into(), ..Default::default() })),
///     ..Default::default()
/// };
/// let conn = chain.request(Context::new(), request.clone()).await.unwrap();
/// chain.request(Context::new(), request).await.unwrap();
/// assert_eq!(requests.seen.get("c-1"), Some(2));
///
/// chain.close(Context::new(), conn).await.unwrap();
/// assert!(requests.seen.is_empty()); // released by the chain
/// # }
/// ```
pub struct PerConnection<V> {
    inner: Shards<Box<str>, V>,
}

impl<V> PerConnection<V> {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Shards::new(DEFAULT_SHARDS),
        }
    }

    /// A copy of `id`'s value, if it has one.
    pub fn get(&self, id: &str) -> Option<V>
    where
        V: Clone,
    {
        self.inner.lock(id).get(id).cloned()
    }

    /// Sets `id`'s value.
    pub fn set(&self, id: &str, value: V) {
        self.inner.lock(id).insert(id.into(), value);
    }

    /// Calls `f` on `id`'s value, made with `V::default()` if it has none,
    /// and returns what `f` returns.
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut V) -> R) -> R
    where
        V: Default,
    {
        let mut shard = self.inner.lock(id);
        if let Some(value) = shard.get_mut(id) {
            return f(value);
        }
        let (value, _) = shard.get_or_insert_with(id.into(), V::default);
        f(value)
    }

    /// Removes and returns `id`'s value if `condition` holds of it (checked
    /// and removed atomically). For the crate's own elements, whose entries
    /// end on events of their own.
    pub(crate) fn take_if(&self, id: &str, condition: impl FnOnce(&V) -> bool) -> Option<V> {
        let mut shard = self.inner.lock(id);
        match shard.get(id) {
            Some(value) if condition(value) => shard.remove(id),
            _ => None,
        }
    }

    /// Whether `id` has a value.
    pub fn contains(&self, id: &str) -> bool {
        self.inner.lock(id).get(id).is_some()
    }

    /// Number of connections with a value (a snapshot).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no connection has a value (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Send> ConnectionState for PerConnection<V> {
    fn contains(&self, id: &str) -> bool {
        PerConnection::contains(self, id)
    }

    fn release(&self, id: &str) {
        self.inner.lock(id).remove(id);
    }

    fn len(&self) -> usize {
        PerConnection::len(self)
    }
}

impl<V> Default for PerConnection<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for PerConnection<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerConnection")
            .field("len", &self.len())
            .finish()
    }
}
