//! A bounded table of entities: slab storage, an index that is probed with borrowed keys
//! (no allocation to find an entity), CLOCK eviction (second chance, an O(1) amortised
//! approximation of LRU) and the list of entities that have open windows.

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

use super::demand::DemandSeries;
use super::hours::HourCounts;
use super::ids::EntityId;
use super::profile::ProfileAcc;
use crate::windows::EntityWindows;

/// Hour-of-week buckets (Monday 00:00 UTC is bucket 0).
pub const HOURS_PER_WEEK: usize = 168;

/// What the model needs of an entity's key.
pub(crate) trait EntityKey {
    fn entity_id(&self) -> EntityId;
    /// The hash lookups use (consistent with the probe hashes of borrowed keys).
    fn key_hash(&self) -> u64;
    fn heap_bytes(&self) -> usize;
}

/// One modelled entity (a resource or a client).
///
/// In declaration order (`repr(C)`, cache-line aligned): what every event on the entity
/// reads or writes (the serial a connection's reference checks, the CLOCK bit, the gauge,
/// the 1 s ring's pointer) comes first and shares one cache line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C, align(64))]
pub(crate) struct Entity<K> {
    /// Unique per table over its lifetime: references from the connection table check it, so
    /// a slot reused by another entity is never mistaken for the old one.
    #[serde(skip)]
    pub serial: u64,
    /// Connections currently open (a gauge; not restored from snapshots).
    #[serde(skip)]
    pub open_conns: u64,
    /// Used since the clock hand last passed (CLOCK's second chance).
    #[serde(skip)]
    pub referenced: bool,
    pub windows: EntityWindows,
    #[serde(skip)]
    pub hash: u64,
    pub key: K,
    /// Requests per hour of week; empty until the first window closes.
    pub hour_of_week: HourCounts,
    /// Requests per demand step (resources only).
    #[serde(default)]
    pub demand: DemandSeries,
    /// The request profile (resources only, when profiles are on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Box<ProfileAcc>>,
}

impl<K> Entity<K> {
    pub fn new(key: K, hash: u64) -> Self {
        Self {
            key,
            serial: 0,
            hash,
            referenced: false,
            windows: EntityWindows::default(),
            open_conns: 0,
            hour_of_week: HourCounts::default(),
            demand: DemandSeries::default(),
            profile: None,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.windows.heap_bytes()
            + self.hour_of_week.heap_bytes()
            + self.demand.heap_bytes()
            + self
                .profile
                .as_ref()
                .map_or(0, |p| std::mem::size_of::<ProfileAcc>() + p.heap_bytes())
    }
}

/// A reference to a table entry that survives the entry's eviction (it then no longer resolves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntityRef {
    pub slot: u32,
    pub serial: u64,
}

pub(crate) struct EntityTable<K> {
    slots: Vec<Option<Entity<K>>>,
    index: HashTable<u32>,
    free: Vec<u32>,
    hand: usize,
    capacity: usize,
    /// Per slot: the slot is on `active` (a property of the slot, so an evicted entity's
    /// successor in the same slot inherits the listing instead of being listed twice).
    listed: Vec<bool>,
    /// Slots whose entity may have open windows.
    active: Vec<u32>,
    scratch: Vec<u32>,
    next_serial: u64,
    pub created: u64,
    pub evicted: u64,
}

impl<K> EntityTable<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Vec::new(),
            index: HashTable::new(),
            free: Vec::new(),
            hand: 0,
            capacity: capacity.max(1),
            listed: Vec::new(),
            active: Vec::new(),
            scratch: Vec::new(),
            next_serial: 1,
            created: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Lets the table grow to `capacity` (never shrinks: that would drop entities).
    pub fn raise_capacity(&mut self, capacity: usize) {
        self.capacity = self.capacity.max(capacity);
    }

    /// The slot of the entity with this hash for which `eq` holds, marked as used.
    #[inline]
    pub fn find(&mut self, hash: u64, mut eq: impl FnMut(&K) -> bool) -> Option<u32> {
        let slots = &mut self.slots;
        let slot = *self.index.find(hash, |&s| {
            slots[s as usize].as_ref().is_some_and(|e| eq(&e.key))
        })?;
        if let Some(e) = slots[slot as usize].as_mut() {
            e.referenced = true;
        }
        Some(slot)
    }

    /// Inserts a new entity (the caller checked it is absent). When the table is full, an
    /// entity is evicted first and handed to `on_evict`.
    pub fn insert(&mut self, mut entity: Entity<K>, on_evict: impl FnOnce(u32, Entity<K>)) -> u32 {
        if self.index.len() >= self.capacity
            && let Some((slot, old)) = self.evict_one()
        {
            self.evicted += 1;
            on_evict(slot, old);
        }
        entity.serial = self.next_serial;
        self.next_serial += 1;
        self.created += 1;
        let hash = entity.hash;
        let slot = if let Some(slot) = self.free.pop() {
            self.slots[slot as usize] = Some(entity);
            slot
        } else {
            self.slots.push(Some(entity));
            self.listed.push(false);
            (self.slots.len() - 1) as u32
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, slot, |&s| {
            slots[s as usize].as_ref().map_or(0, |e| e.hash)
        });
        slot
    }

    fn evict_one(&mut self) -> Option<(u32, Entity<K>)> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        // Two full turns clear every second chance, so this always finds a victim.
        for _ in 0..=2 * n {
            let i = self.hand;
            self.hand = (self.hand + 1) % n;
            match &mut self.slots[i] {
                Some(e) if e.referenced => e.referenced = false,
                Some(_) => return self.remove(i as u32).map(|e| (i as u32, e)),
                None => {}
            }
        }
        None
    }

    fn remove(&mut self, slot: u32) -> Option<Entity<K>> {
        let entity = self.slots.get_mut(slot as usize)?.take()?;
        if let Ok(entry) = self.index.find_entry(entity.hash, |&s| s == slot) {
            entry.remove();
        }
        self.free.push(slot);
        Some(entity)
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Entity<K>> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Like [`Self::find`], without marking the entity as used.
    pub fn lookup(&self, hash: u64, mut eq: impl FnMut(&K) -> bool) -> Option<&Entity<K>> {
        let slot = *self.index.find(hash, |&s| {
            self.slots[s as usize].as_ref().is_some_and(|e| eq(&e.key))
        })?;
        self.get(slot)
    }

    pub fn get(&self, slot: u32) -> Option<&Entity<K>> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub fn entity_ref(&self, slot: u32) -> Option<EntityRef> {
        self.get(slot).map(|e| EntityRef {
            slot,
            serial: e.serial,
        })
    }

    /// The entity `r` refers to, if it is still the same entity.
    pub fn resolve(&mut self, r: EntityRef) -> Option<&mut Entity<K>> {
        self.get_mut(r.slot).filter(|e| e.serial == r.serial)
    }

    /// The slot `r` refers to, marked as used like [`Self::find`], if it is still the same
    /// entity.
    #[inline]
    pub fn hit(&mut self, r: EntityRef) -> Option<u32> {
        let e = self.slots.get_mut(r.slot as usize)?.as_mut()?;
        if e.serial != r.serial {
            return None;
        }
        e.referenced = true;
        Some(r.slot)
    }

    /// Puts `slot` on the list of entities with open windows.
    #[inline]
    pub fn mark_active(&mut self, slot: u32) {
        let listed = &mut self.listed[slot as usize];
        if !*listed {
            *listed = true;
            self.active.push(slot);
        }
    }

    /// Runs `close` on every entity with open windows; `close` returns whether the entity
    /// still has open windows (it stays listed).
    pub fn for_each_active(&mut self, mut close: impl FnMut(&mut Entity<K>) -> bool) {
        let mut keep = std::mem::take(&mut self.scratch);
        keep.clear();
        for &slot in &self.active {
            let still_open = self.slots[slot as usize].as_mut().is_some_and(&mut close);
            if still_open {
                keep.push(slot);
            } else {
                self.listed[slot as usize] = false;
            }
        }
        self.scratch = std::mem::replace(&mut self.active, keep);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entity<K>> {
        self.slots.iter().flatten()
    }

    /// Approximate heap bytes of the table and its entities.
    pub fn heap_bytes(&self) -> usize
    where
        K: EntityKey,
    {
        self.slots.capacity() * std::mem::size_of::<Option<Entity<K>>>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + (self.free.capacity() + self.active.capacity() + self.scratch.capacity()) * 4
            + self.listed.capacity()
            + self
                .iter()
                .map(|e| e.heap_bytes() + e.key.heap_bytes())
                .sum::<usize>()
    }
}
