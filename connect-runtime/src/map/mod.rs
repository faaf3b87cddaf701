//! Storage for typed concurrent maps: [`SyncMap`], with the verbs of Go's
//! `sync.Map`, and [`RefCountMap`], whose entries live exactly as long as
//! they are referenced.
//!
//! Both are sharded maps behind short, synchronous critical sections: no lock
//! is ever held across an `.await`, and no user code runs under a lock except
//! the closures that decide an entry atomically: `make` in
//! [`SyncMap::load_or_store_with`] and [`RefCountMap::acquire`], `condition`
//! in [`SyncMap::delete_if`]. Those must not touch the same map (its shard's
//! lock is held). Declare a named, typed map over one of them with
//! [`ConcurrentMap`](crate::ConcurrentMap).
//!
//! [`PerConnection`] is the third: an element's state for each connection,
//! whose entries the chain removes when their connection ends there.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::sync::lock;

mod per_connection;

pub use per_connection::{ConnectionState, PerConnection};

/// Keys are hashed with a seed of each map's own, as Go's maps are: fast
/// (foldhash), not a cryptographic hash as std's `RandomState` is, whose
/// cost showed on every call's lookups.
type RandomState = DefaultHashBuilder;

/// Shards when none are asked for: enough to keep 2–64 cores from queueing
/// on one lock, small enough that `len` and `range` stay cheap.
pub const DEFAULT_SHARDS: usize = 16;

/// A map storage a [`ConcurrentMap`](crate::ConcurrentMap) newtype can
/// wrap: [`SyncMap`] and [`RefCountMap`]. The derive needs only these two
/// calls; every other verb is the storage's own, reached through `Deref`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a concurrent map storage",
    label = "expected `SyncMap<K, V>` or `RefCountMap<K, V>` from `connect_runtime::map`",
    note = "keys need `Hash + Eq` and values `Clone`"
)]
pub trait Storage: Sized {
    /// An empty storage with `shards` shards (a power of two).
    fn with_shards(shards: usize) -> Self;

    /// Number of entries (a snapshot).
    fn len(&self) -> usize;

    /// Whether there are no entries (a snapshot).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V: Clone> Storage for SyncMap<K, V> {
    fn with_shards(shards: usize) -> Self {
        SyncMap::with_shards(shards)
    }

    fn len(&self) -> usize {
        SyncMap::len(self)
    }
}

impl<K: Hash + Eq, V: Clone> Storage for RefCountMap<K, V> {
    fn with_shards(shards: usize) -> Self {
        RefCountMap::with_shards(shards)
    }

    fn len(&self) -> usize {
        RefCountMap::len(self)
    }
}

/// The shared storage: shards of hash tables, each behind a short-lived
/// lock. A key is hashed once per operation; the hash picks the shard and
/// then the slot.
pub(crate) struct Shards<K, T> {
    hasher: RandomState,
    shards: Box<[Shard<K, T>]>,
}

type Shard<K, T> = Mutex<HashTable<(K, T)>>;

/// A shard lock and the hash of the key it was taken for.
pub(crate) struct Locked<'a, K, T> {
    table: MutexGuard<'a, HashTable<(K, T)>>,
    hash: u64,
    hasher: &'a RandomState,
}

impl<K: Hash + Eq, T> Locked<'_, K, T> {
    fn entry<Q: Eq + ?Sized>(&self, key: &Q) -> Option<&(K, T)>
    where
        K: Borrow<Q>,
    {
        self.table.find(self.hash, |(k, _)| k.borrow() == key)
    }

    fn get<Q: Eq + ?Sized>(&self, key: &Q) -> Option<&T>
    where
        K: Borrow<Q>,
    {
        self.entry(key).map(|(_, t)| t)
    }

    /// The stored key equal to `key`: what a table whose entries are
    /// their own keys (`T` is `()`) holds.
    pub(crate) fn key<Q: Eq + ?Sized>(&self, key: &Q) -> Option<&K>
    where
        K: Borrow<Q>,
    {
        self.entry(key).map(|(k, _)| k)
    }

    pub(crate) fn get_mut<Q: Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut T>
    where
        K: Borrow<Q>,
    {
        self.table
            .find_mut(self.hash, |(k, _)| k.borrow() == key)
            .map(|(_, t)| t)
    }

    /// Removes `key`. A table left three-quarters empty gives memory back,
    /// so that a map that once held many entries does not keep their room
    /// (amortised: the table at least halves each time).
    pub(crate) fn remove<Q: Eq + ?Sized>(&mut self, key: &Q) -> Option<T>
    where
        K: Borrow<Q>,
    {
        self.remove_entry(key).map(|(_, t)| t)
    }

    /// As [`remove`](Self::remove), returning the stored key too.
    pub(crate) fn remove_entry<Q: Eq + ?Sized>(&mut self, key: &Q) -> Option<(K, T)>
    where
        K: Borrow<Q>,
    {
        let removed = self
            .table
            .find_entry(self.hash, |(k, _)| k.borrow() == key)
            .ok()
            .map(|entry| entry.remove().0);
        let (len, capacity) = (self.table.len(), self.table.capacity());
        if capacity > MIN_SHRINK_CAPACITY && len * 4 < capacity {
            let hasher = self.hasher;
            self.table.shrink_to(len * 2, |(k, _)| hasher.hash_one(k));
        }
        removed
    }

    /// The value for `key`, inserting `make()`'s if there is none; and
    /// whether it was there already.
    fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> T) -> (&mut T, bool) {
        let hasher = self.hasher;
        match self
            .table
            .entry(self.hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k))
        {
            hashbrown::hash_table::Entry::Occupied(entry) => (&mut entry.into_mut().1, true),
            hashbrown::hash_table::Entry::Vacant(entry) => {
                (&mut entry.insert((key, make())).into_mut().1, false)
            }
        }
    }

    /// Stores `value` under `key`, replacing the entry, key and all: a key
    /// may carry more than what it is compared by.
    pub(crate) fn insert(&mut self, key: K, value: T) {
        let hasher = self.hasher;
        match self
            .table
            .entry(self.hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k))
        {
            hashbrown::hash_table::Entry::Occupied(mut entry) => *entry.get_mut() = (key, value),
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert((key, value));
            }
        }
    }
}

impl<K: Hash + Eq, T> Shards<K, T> {
    pub(crate) fn new(shards: usize) -> Self {
        assert!(
            shards.is_power_of_two(),
            "shard count must be a power of two, not {shards}"
        );
        Self {
            hasher: RandomState::default(),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
        }
    }

    pub(crate) fn lock<Q: Hash + ?Sized>(&self, key: &Q) -> Locked<'_, K, T> {
        let hash = self.hasher.hash_one(key);
        // The table uses the low bits (slot) and the top seven (tag); the
        // shard comes from bits in between, so neither loses entropy.
        let index = (hash >> SHARD_BITS_AT) as usize & (self.shards.len() - 1);
        Locked {
            table: lock(&self.shards[index]),
            hash,
            hasher: &self.hasher,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Calls `f` on a copy of each shard's entries, taken under the shard's
    /// lock and visited after releasing it.
    pub(crate) fn range<R>(&self, mut copy: impl FnMut(&K, &T) -> R, mut f: impl FnMut(R) -> bool) {
        for shard in self.shards.iter() {
            let snapshot: Vec<R> = lock(shard).iter().map(|(k, t)| copy(k, t)).collect();
            for item in snapshot {
                if !f(item) {
                    return;
                }
            }
        }
    }
}

/// A shard's table smaller than this keeps its room when entries go.
const MIN_SHRINK_CAPACITY: usize = 64;

/// Where in the 64-bit hash the shard index is taken from.
const SHARD_BITS_AT: u32 = 32;

/// A concurrent map with the verbs of Go's `sync.Map`.
///
/// Values are returned by clone, so they are usually cheap handles (`Arc`s,
/// small records).
///
/// ```
/// use connect_runtime::map::SyncMap;
///
/// let map: SyncMap<String, u32> = SyncMap::new();
/// map.store("a".into(), 1);
/// assert_eq!(map.load("a"), Some(1));
/// assert_eq!(map.load_or_store("a".into(), 2), (1, true));
/// assert_eq!(map.load_and_delete("a"), Some(1));
/// assert!(map.is_empty());
/// ```
pub struct SyncMap<K, V> {
    inner: Shards<K, V>,
}

impl<K: Hash + Eq, V: Clone> SyncMap<K, V> {
    /// An empty map with [`DEFAULT_SHARDS`] shards.
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }

    /// An empty map with `shards` shards.
    ///
    /// # Panics
    /// If `shards` is not a power of two.
    pub fn with_shards(shards: usize) -> Self {
        Self {
            inner: Shards::new(shards),
        }
    }

    /// The value for `key`, if any.
    pub fn load<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.lock(key).get(key).cloned()
    }

    /// Sets the value for `key`.
    pub fn store(&self, key: K, value: V) {
        self.inner.lock(&key).insert(key, value);
    }

    /// The existing value for `key` and `true`, or, if there was none,
    /// stores `value` and returns it and `false`.
    pub fn load_or_store(&self, key: K, value: V) -> (V, bool) {
        let mut shard = self.inner.lock(&key);
        let (stored, loaded) = shard.get_or_insert_with(key, || value);
        (stored.clone(), loaded)
    }

    /// As [`SyncMap::load_or_store`], creating the value only if `key` has
    /// none (`make` runs under the shard's lock: keep it short, and do not
    /// use this map from it).
    pub fn load_or_store_with(&self, key: K, make: impl FnOnce() -> V) -> (V, bool) {
        let mut shard = self.inner.lock(&key);
        let (stored, loaded) = shard.get_or_insert_with(key, make);
        (stored.clone(), loaded)
    }

    /// Removes `key` if its value satisfies `condition` (checked and removed
    /// atomically: `condition` runs under the shard's lock, so it must not
    /// use this map); returns whether it was removed.
    pub fn delete_if<Q>(&self, key: &Q, condition: impl FnOnce(&V) -> bool) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.inner.lock(key);
        if shard.get(key).is_some_and(condition) {
            shard.remove(key);
            true
        } else {
            false
        }
    }

    /// Removes `key`, returning its value if there was one.
    pub fn load_and_delete<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.lock(key).remove(key)
    }

    /// Removes `key`.
    pub fn delete<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.lock(key).remove(key);
    }

    /// Calls `f` for each entry until it returns `false`.
    ///
    /// `f` runs with no lock held, so it may use the map (even remove the
    /// entry it is looking at) without deadlocking. It sees each shard as it
    /// was when the shard was reached: entries stored or removed while
    /// `range` runs may or may not be seen, and there is no single instant
    /// at which the whole map looked as `f` saw it (as with Go's
    /// `sync.Map.Range`).
    pub fn range(&self, f: impl FnMut(&K, &V) -> bool)
    where
        K: Clone,
    {
        let mut f = f;
        self.inner
            .range(|k, v| (k.clone(), v.clone()), |(k, v)| f(&k, &v));
    }

    /// Number of entries (summed shard by shard, so only a snapshot).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V: Clone> Default for SyncMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug, V: Clone + fmt::Debug> fmt::Debug for SyncMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        self.range(|k, v| {
            map.entry(k, v);
            true
        });
        map.finish()
    }
}

/// Identifies one value stored in a [`RefCountMap`]: a value created for a
/// key, removed, and created again is a different instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance(u64);

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

impl Instance {
    fn next() -> Self {
        Self(NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed))
    }
}

/// What [`RefCountMap::acquire`] returns: the value, which instance it is,
/// and whether this call created it.
#[derive(Clone, Debug)]
pub struct Acquired<V> {
    /// The value now referenced once more.
    pub value: V,
    /// Which instance was acquired; hand it back to `release` or `evict`.
    pub instance: Instance,
    /// `true` if there was no value and `make` created this one.
    pub created: bool,
}

/// What [`RefCountMap::release`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released<V> {
    /// That was the last reference: the entry was removed; here is its value.
    Last(V),
    /// Other references remain; this many.
    Shared(usize),
    /// That was the last reference, and the entry stays, unused, until
    /// [`RefCountMap::evict_unused`] removes it or `acquire` counts it
    /// again ([`RefCountMap::release_keeping`]); here is its value.
    Unused(V),
    /// The map no longer holds that instance (it was evicted, or replaced by
    /// a newer one): nothing changed.
    Gone,
}

struct Counted<V> {
    value: V,
    instance: Instance,
    refs: usize,
}

/// A concurrent map whose entries are reference counted: `acquire` creates
/// a key's value on first use and counts a reference, `release` drops one
/// and removes the entry with the last. What `connect` keeps its per-URL
/// clients in.
///
/// Every operation is atomic per key. Releases and evictions name the
/// [`Instance`] they mean, so a late release can never remove a newer value
/// stored under the same key.
///
/// ```
/// use connect_runtime::map::{RefCountMap, Released};
///
/// let clients: RefCountMap<String, &str> = RefCountMap::new();
/// let a = clients.acquire("tcp://a:1".into(), |_| "client-1");
/// let b = clients.acquire("tcp://a:1".into(), |_| unreachable!("already there"));
/// assert!(a.created && !b.created);
/// assert_eq!(clients.refs("tcp://a:1"), Some(2));
///
/// assert_eq!(clients.release("tcp://a:1", a.instance), Released::Shared(1));
/// assert_eq!(clients.release("tcp://a:1", b.instance), Released::Last("client-1"));
/// assert!(clients.is_empty());
/// ```
pub struct RefCountMap<K, V> {
    inner: Shards<K, Counted<V>>,
}

impl<K: Hash + Eq, V: Clone> RefCountMap<K, V> {
    /// An empty map with [`DEFAULT_SHARDS`] shards.
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }

    /// An empty map with `shards` shards.
    ///
    /// # Panics
    /// If `shards` is not a power of two.
    pub fn with_shards(shards: usize) -> Self {
        Self {
            inner: Shards::new(shards),
        }
    }

    /// Counts one more reference to `key`'s value, creating it with `make`
    /// if there is none. `make` is told the new value's [`Instance`].
    ///
    /// `make` runs under the shard's lock, so that two callers never both
    /// create a value for one key: keep it short, and do not touch this map
    /// from it.
    pub fn acquire(&self, key: K, make: impl FnOnce(Instance) -> V) -> Acquired<V> {
        let mut shard = self.inner.lock(&key);
        // Copied before anything is counted or inserted: a `clone` that
        // panics leaves the map as it was.
        let mut made = None;
        let (counted, existed) = shard.get_or_insert_with(key, || {
            let instance = Instance::next();
            let value = make(instance);
            made = Some(value.clone());
            Counted {
                value,
                instance,
                refs: 0,
            }
        });
        let value = made.unwrap_or_else(|| counted.value.clone());
        counted.refs += 1;
        Acquired {
            value,
            instance: counted.instance,
            created: !existed,
        }
    }

    /// Drops one reference to `instance`; removes the entry when it was the
    /// last. A release of an instance the map no longer holds changes nothing.
    pub fn release<Q>(&self, key: &Q, instance: Instance) -> Released<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.release_with(key, instance, false)
    }

    /// As [`release`](Self::release), but the last release keeps the entry
    /// with no references, returning [`Released::Unused`]: for values worth
    /// keeping a while in case they are wanted again (a client lingering
    /// after its last connection).
    pub fn release_keeping<Q>(&self, key: &Q, instance: Instance) -> Released<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.release_with(key, instance, true)
    }

    fn release_with<Q>(&self, key: &Q, instance: Instance, keep: bool) -> Released<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.inner.lock(key);
        match shard.get_mut(key) {
            Some(counted) if counted.instance == instance => {
                counted.refs -= 1;
                match (counted.refs, keep) {
                    (0, true) => Released::Unused(counted.value.clone()),
                    (0, false) => {
                        let removed = shard.remove(key).expect("entry was just found");
                        Released::Last(removed.value)
                    }
                    (refs, _) => Released::Shared(refs),
                }
            }
            _ => Released::Gone,
        }
    }

    /// Removes `instance` if nothing references it, returning its value;
    /// `None` if it is referenced or the map no longer holds it.
    pub fn evict_unused<Q>(&self, key: &Q, instance: Instance) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.take_if(key, instance, |refs| refs == 0)
            .map(|(value, _)| value)
    }

    /// Removes `instance` whatever its count (a client found dead), returning
    /// its value; `None` if the map no longer holds that instance.
    pub fn evict<Q>(&self, key: &Q, instance: Instance) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.take(key, instance).map(|(value, _)| value)
    }

    /// Removes `instance` with its count, for a caller that goes on counting
    /// elsewhere (a client retired while in use); `None` if the map no
    /// longer holds that instance.
    pub fn take<Q>(&self, key: &Q, instance: Instance) -> Option<(V, usize)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.take_if(key, instance, |_| true)
    }

    fn take_if<Q>(
        &self,
        key: &Q,
        instance: Instance,
        refs: impl FnOnce(usize) -> bool,
    ) -> Option<(V, usize)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.inner.lock(key);
        match shard.get(key) {
            Some(counted) if counted.instance == instance && refs(counted.refs) => shard
                .remove(key)
                .map(|counted| (counted.value, counted.refs)),
            _ => None,
        }
    }

    /// The value for `key` and its instance, without counting a reference.
    pub fn load<Q>(&self, key: &Q) -> Option<(V, Instance)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner
            .lock(key)
            .get(key)
            .map(|c| (c.value.clone(), c.instance))
    }

    /// How many references `key`'s value has, if it is present.
    pub fn refs<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.lock(key).get(key).map(|c| c.refs)
    }

    /// Calls `f` with each key, value and reference count until it returns
    /// `false`; with no lock held, and seeing each shard as it was when
    /// reached, as [`SyncMap::range`] does.
    pub fn range(&self, f: impl FnMut(&K, &V, usize) -> bool)
    where
        K: Clone,
    {
        let mut f = f;
        self.inner.range(
            |k, c| (k.clone(), c.value.clone(), c.refs),
            |(k, v, refs)| f(&k, &v, refs),
        );
    }

    /// Number of keys with a value (summed shard by shard).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V: Clone> Default for RefCountMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug, V: Clone + fmt::Debug> fmt::Debug for RefCountMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        self.range(|k, v, refs| {
            map.entry(k, &(v, refs));
            true
        });
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_value_released_keeping_stays_unused_until_evicted_or_acquired() {
        let map: RefCountMap<&str, u32> = RefCountMap::new();
        let first = map.acquire("k", |_| 1);
        assert_eq!(
            map.release_keeping("k", first.instance),
            Released::Unused(1)
        );
        assert_eq!(map.refs("k"), Some(0));
        // Acquired again: the same instance, not a new value.
        let again = map.acquire("k", |_| unreachable!("kept"));
        assert_eq!(again.instance, first.instance);
        assert_eq!(map.evict_unused("k", first.instance), None, "in use");
        assert_eq!(
            map.release_keeping("k", again.instance),
            Released::Unused(1)
        );
        assert_eq!(map.evict_unused("k", first.instance), Some(1));
        assert!(map.is_empty());
        assert_eq!(map.release_keeping("k", first.instance), Released::Gone);
        assert_eq!(map.evict_unused("k", first.instance), None);
    }

    /// A key compared by its name alone, carrying a payload.
    #[derive(Clone, Debug)]
    struct Named(&'static str, u32);

    impl Hash for Named {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    impl PartialEq for Named {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }

    impl Eq for Named {}

    impl Borrow<str> for Named {
        fn borrow(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn an_entry_that_is_its_own_key_is_replaced_whole() {
        let shards: Shards<Named, ()> = Shards::new(4);
        shards.lock(&Named("a", 1)).insert(Named("a", 1), ());
        shards.lock(&Named("a", 2)).insert(Named("a", 2), ());
        shards.lock(&Named("b", 3)).insert(Named("b", 3), ());
        assert_eq!(shards.len(), 2);
        // Found by name alone, with the payload stored last.
        assert_eq!(shards.lock("a").key("a").map(|k| k.1), Some(2));
        let removed = shards.lock("a").remove_entry("a");
        assert_eq!(removed.map(|(k, ())| k.1), Some(2));
        assert!(shards.lock("a").key("a").is_none());
        assert_eq!(shards.lock("b").key("b").map(|k| k.1), Some(3));
    }

    #[test]
    fn range_may_touch_the_map_it_ranges_over() {
        let map: SyncMap<u32, u32> = SyncMap::with_shards(4);
        for i in 0..100 {
            map.store(i, i);
        }
        let mut seen = 0;
        map.range(|k, _| {
            map.delete(k);
            map.store(k + 1000, 0);
            seen += 1;
            seen < 200
        });
        assert!(seen >= 100);
        assert!(map.load(&5).is_none());
    }

    #[test]
    fn range_stops_when_told() {
        let map: SyncMap<u32, u32> = SyncMap::new();
        for i in 0..10 {
            map.store(i, i);
        }
        let mut calls = 0;
        map.range(|_, _| {
            calls += 1;
            calls < 3
        });
        assert_eq!(calls, 3);
    }

    /// A value whose `clone` panics while `fail` is set.
    struct Brittle {
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Clone for Brittle {
        fn clone(&self) -> Self {
            assert!(
                !self.fail.load(std::sync::atomic::Ordering::Relaxed),
                "clone failed"
            );
            Self {
                fail: Arc::clone(&self.fail),
            }
        }
    }

    #[test]
    fn a_clone_that_panics_counts_nothing_and_creates_nothing() {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let map: RefCountMap<&str, Brittle> = RefCountMap::new();
        let make = |_| Brittle {
            fail: Arc::clone(&fail),
        };
        let acquired = catch_unwind(AssertUnwindSafe(|| map.acquire("k", make)));
        assert!(acquired.is_err());
        assert_eq!((map.refs("k"), map.len()), (None, 0));

        fail.store(false, std::sync::atomic::Ordering::Relaxed);
        let held = map.acquire("k", make);
        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let acquired = catch_unwind(AssertUnwindSafe(|| map.acquire("k", make)));
        assert!(acquired.is_err());
        assert_eq!(map.refs("k"), Some(1));
        assert!(matches!(map.release("k", held.instance), Released::Last(_)));
    }

    #[test]
    fn a_stale_release_cannot_remove_a_newer_instance() {
        let map: RefCountMap<&str, u32> = RefCountMap::new();
        let old = map.acquire("k", |_| 1);
        assert_eq!(map.evict("k", old.instance), Some(1));
        let new = map.acquire("k", |_| 2);
        assert!(new.created);
        assert_ne!(old.instance, new.instance);

        assert_eq!(map.release("k", old.instance), Released::Gone);
        assert_eq!(map.evict("k", old.instance), None);
        assert_eq!(map.refs("k"), Some(1));
        assert_eq!(map.release("k", new.instance), Released::Last(2));
        assert!(map.is_empty());
    }

    #[test]
    fn concurrent_acquire_creates_once_and_release_removes_once() {
        let map: Arc<RefCountMap<u32, u64>> = Arc::new(RefCountMap::with_shards(2));
        let made = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (map, made) = (Arc::clone(&map), Arc::clone(&made));
                std::thread::spawn(move || {
                    let mut last = 0;
                    for round in 0..1000u32 {
                        let key = round % 7;
                        let got = map.acquire(key, |_| made.fetch_add(1, Ordering::SeqCst));
                        if let Released::Last(_) = map.release(&key, got.instance) {
                            last += 1;
                        }
                    }
                    last
                })
            })
            .collect();
        let lasts: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(map.is_empty());
        // Every creation is matched by exactly one last release.
        assert_eq!(lasts, made.load(Ordering::SeqCst));
    }
}
