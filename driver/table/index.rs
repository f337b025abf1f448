//! Bounded indexes of the live-mapping table by *virtual* and by *physical* address, so that
//! no hook path walks the whole table (issue #10): the interior-unmap / page-base lookup of
//! an unmap of an unknown base asks the virtual index, the exact cache-conflict check asks
//! the physical one.
//!
//! # Levels and chunks
//! A mapping of `size` bytes is filed once per address space, at the smallest *level* `L`
//! whose *chunk* (`1 << shift(L)` bytes, `shift(L) = 12 + 4·L`: 4 KiB, 64 KiB, 1 MiB, …,
//! 2^60) is at least `size`, under the chunk that holds its start address. A range no
//! larger than its level's chunk touches at most two chunks, so every mapping that
//! contains `addr` is filed under `chunk(addr)` or `chunk(addr) - 1` at its level: a
//! virtual lookup probes two keys per level ([`LEVELS`] levels), whatever the number of
//! live mappings. Live virtual mappings do not overlap, so a key of level `L` holds at
//! most ~32 live ones (mappings larger than a sixteenth of the chunk, starting in it).
//!
//! A physical range `[first, end)` (whole pages) shares a page with a mapping filed at
//! level `L` only if that mapping starts in chunks `chunk(first) - 1 ..= chunk(end - 1)`
//! of level `L`; the conflict check probes those keys, and at the levels whose chunk is
//! smaller than a conflict-filter region only inside the regions the filter flags.
//!
//! # Entries
//! One `u32` word per filed mapping: bit 31 = address space (1 = virtual), bits `s..31` =
//! a fingerprint of the key (level and chunk), bits `0..s` = table slot + 1 (`0` = free),
//! where `s` is the fewest bits that hold the table's slot count (17 for the default 64 Ki
//! mappings: a 14-bit fingerprint; at most 31). A word is unique (one entry per slot and
//! space), written only by the thread that owns the table slot while it is BUSY: claimed by
//! a CAS `0 → word`, released by a plain store of `0` (no other thread ever writes a word
//! that holds a value, so the release needs no read-modify-write). Fingerprint collisions only add
//! candidates (the home bucket already tells most keys apart): every candidate slot is read
//! through the table's seqlock and checked against the exact predicate, so the index can
//! return too much, never too little.
//!
//! The table's insert and remove ([`SpanIndex::add_both`], [`SpanIndex::remove_both`]) do
//! not file virtual entries of level 0 (mappings of at most a page): the table hashes its
//! entries by the page of their base, so a page's probe chain in the table already lists
//! every mapping starting in it (`Table::visit_around` reads the chains of `addr`'s page
//! and the one before for level 0, and this index for the others).
//!
//! Buckets of [`BUCKET`] words (one aligned line) with F14-style overflow counts and a
//! bounded probe window, as the table itself. An entry that finds no free word in its
//! window (or a mapping larger than the last level's chunk, or a slot number past the
//! index's slot bits) is *unindexed*: counted, and while that count is non-zero lookups fall
//! back to a walk of the table — the index can never make a check miss a mapping.

use crate::sync::{try_boxed_slice, AtomicU32, Ordering, OutOfMemory};
use alloc::boxed::Box;

/// Words per bucket (one cache line of 4-byte words).
#[cfg(not(loom))]
pub const BUCKET: usize = 16;
/// Buckets an insert probes at most.
#[cfg(not(loom))]
pub const MAX_PROBE_BUCKETS: usize = 16;
/// Smaller buckets under loom (same algorithm, explorable state space).
#[cfg(loom)]
pub const BUCKET: usize = 2;
/// See the non-loom value.
#[cfg(loom)]
pub const MAX_PROBE_BUCKETS: usize = 2;

/// Levels: chunk shifts 12, 16, …, 60.
pub const LEVELS: u32 = 13;
/// Bits of the slot number (plus one) in an entry of an index made by [`SpanIndex::new`].
const DEFAULT_SLOT_BITS: u32 = 24;
/// The address-space bit of an entry.
const VIRTUAL: u32 = 1 << 31;

/// Address space of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Physical addresses (the cache-conflict check).
    Physical,
    /// Virtual addresses (the unmap lookups).
    Virtual,
}

/// The chunk shift of `level`.
pub const fn shift(level: u32) -> u32 {
    12u32.wrapping_add(level.wrapping_mul(4))
}

/// The level a mapping of `size` bytes is filed at (`None`: larger than the last chunk).
pub fn level_of(size: u64) -> Option<u32> {
    // Smallest L with size <= 1 << (12 + 4L): with `bits` the bit length of size - 1,
    // L = ceil((bits - 12) / 4) = (bits - 9) / 4 (and 0 while bits <= 12).
    let bits = 64u32.saturating_sub(size.saturating_sub(1).leading_zeros());
    let level = bits.saturating_sub(9) >> 2;
    (level < LEVELS).then_some(level)
}

/// The key of chunk `chunk` of `level` in `space`: its home bucket hash and its entry
/// fingerprint (with the space bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    hash: u64,
    tag: u32,
}

impl Key {
    /// The key under `fp_mask` (the fingerprint bits of the index's words).
    #[inline(always)]
    fn new(space: Space, level: u32, chunk: u64, fp_mask: u32) -> Key {
        // chunk < 2^52 (shift >= 12), level < 16: both fit in 56 bits. The high bits of
        // the product pick the home bucket; the fingerprint is taken from bits 8..39, below
        // those (for fewer than 2^24 buckets), so that keys sharing a home bucket do not
        // share their fingerprint too (bits 24..55 did, at a million mappings).
        let k = (chunk << 4) | u64::from(level);
        let hash = k.wrapping_mul(super::FIB);
        let space_bit = match space {
            Space::Physical => 0,
            Space::Virtual => VIRTUAL,
        };
        let mid = u32::try_from((hash >> 8) & u64::from(u32::MAX)).unwrap_or(0);
        Key {
            hash,
            tag: space_bit | (mid & fp_mask),
        }
    }
}

/// One bucket's words, one cache line.
#[repr(align(64))]
struct Bucket([AtomicU32; BUCKET]);

/// A lock-free multimap from (space, level, chunk) to table slots. See the module docs.
pub struct SpanIndex {
    buckets: Box<[Bucket]>,
    overflow: Box<[AtomicU32]>,
    /// Entries that could not be filed (see the module docs).
    unindexed: AtomicU32,
    /// The slot bits of a word (slot + 1; the largest slot + 1 that fits).
    slot_mask: u32,
    /// Slots below this fit in the slot bits (`slot_mask` as a slot count).
    slot_limit: usize,
    /// The fingerprint bits of a word (between the slot bits and the space bit).
    fp_mask: u32,
}

impl SpanIndex {
    /// An index with room for about `entries` entries at a 3/4 load, for slot numbers
    /// below 2^24 - 1.
    pub fn new(entries: usize) -> Result<SpanIndex, OutOfMemory> {
        Self::with_slot_bits(entries, DEFAULT_SLOT_BITS)
    }

    /// An index with room for about `entries` entries at a 3/4 load, for the slots of a
    /// table of `slots` slots (the fewer slot bits, the longer the fingerprint).
    pub fn for_slots(entries: usize, slots: usize) -> Result<SpanIndex, OutOfMemory> {
        // Slot numbers + 1 up to `slots` must fit.
        let bits = usize::BITS.saturating_sub(slots.leading_zeros());
        Self::with_slot_bits(entries, bits)
    }

    fn with_slot_bits(entries: usize, slot_bits: u32) -> Result<SpanIndex, OutOfMemory> {
        let slot_bits = slot_bits.clamp(1, 31);
        let slot_mask = u32::MAX >> 32u32.saturating_sub(slot_bits);
        let words = entries.saturating_mul(4) / 3;
        let n = words.div_ceil(BUCKET).max(MAX_PROBE_BUCKETS);
        Ok(SpanIndex {
            buckets: try_boxed_slice(n, |_| Bucket(core::array::from_fn(|_| AtomicU32::new(0))))?,
            overflow: try_boxed_slice(n, |_| AtomicU32::new(0))?,
            unindexed: AtomicU32::new(0),
            slot_mask,
            slot_limit: usize::try_from(slot_mask).unwrap_or(usize::MAX),
            fp_mask: !(slot_mask | VIRTUAL),
        })
    }

    /// The key of chunk `chunk` of `level` in `space`.
    #[inline(always)]
    fn key_of(&self, space: Space, level: u32, chunk: u64) -> Key {
        Key::new(space, level, chunk, self.fp_mask)
    }

    /// Slot `slot` + 1 as the slot bits of a word; `None` if it does not fit.
    #[inline(always)]
    fn slot_word(&self, slot: usize) -> Option<u32> {
        // One compare: below `slot_limit` (at most 2^31 - 1), `slot` + 1 fits in the slot
        // bits, so the cast keeps every bit.
        (slot < self.slot_limit).then_some((slot as u32).wrapping_add(1))
    }

    /// Bytes of memory the index holds.
    pub fn memory_bytes(&self) -> usize {
        self.buckets.len().saturating_mul(
            core::mem::size_of::<Bucket>().saturating_add(core::mem::size_of::<AtomicU32>()),
        )
    }

    /// True if no entry is filed, none is counted as unindexed and no overflow count is
    /// left (tests: everything added was removed again).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.complete()
            && self.overflow.iter().all(|o| o.load(Ordering::Relaxed) == 0)
            && self
                .buckets
                .iter()
                .all(|b| b.0.iter().all(|w| w.load(Ordering::Relaxed) == 0))
    }

    /// True while every live entry is filed (lookups are exact without a walk).
    pub fn complete(&self) -> bool {
        self.unindexed.load(Ordering::Acquire) == 0
    }

    fn home(&self, key: Key) -> usize {
        (u128::from(key.hash).wrapping_mul(self.buckets.len() as u128) >> 64) as usize
    }

    fn next(&self, b: usize) -> usize {
        let n = b.wrapping_add(1);
        if n >= self.buckets.len() {
            0
        } else {
            n
        }
    }

    fn key(&self, space: Space, start: u64, size: u64) -> Option<Key> {
        let level = level_of(size)?;
        Some(self.key_of(space, level, start >> shift(level)))
    }

    /// Files table slot `slot`, holding a mapping of `size` bytes from `start`, in `space`.
    /// Called by the slot's owner before it publishes the slot. Bounded work.
    pub fn add(&self, space: Space, start: u64, size: u64, slot: usize) {
        match self
            .key(space, start, size)
            .and_then(|k| Some((k, k.tag | self.slot_word(slot)?)))
        {
            Some((key, word)) => self.add_word(key, word),
            None => self.count_unindexed(),
        }
    }

    /// Unfiles what [`add`](Self::add) filed for the same arguments. Called by the slot's
    /// owner after it took the slot (BUSY), before it frees it. Bounded work.
    pub fn remove(&self, space: Space, start: u64, size: u64, slot: usize) {
        match self
            .key(space, start, size)
            .and_then(|k| Some((k, k.tag | self.slot_word(slot)?)))
        {
            Some((key, word)) => self.remove_word(key, word),
            None => self.uncount_unindexed(),
        }
    }

    /// [`add`](Self::add) in both spaces at once (the table's insert: one level and one
    /// slot word for the two keys), except that a virtual entry of level 0 is not filed:
    /// the table finds those by its own hash (see the module docs). `level` is
    /// [`level_of`] the mapping's size (the caller has it already).
    #[inline(always)]
    pub fn add_both(&self, level: Option<u32>, virt: u64, phys: u64, slot: usize) {
        match self.both(level, virt, phys, slot) {
            Some((v, p, n)) => {
                if let Some(v) = v {
                    self.add_word(v, v.tag | n);
                }
                self.add_word(p, p.tag | n);
            }
            None => {
                self.count_unindexed();
                self.count_unindexed();
            }
        }
    }

    /// [`remove`](Self::remove) in both spaces at once (`level` as the add's).
    #[inline(always)]
    pub fn remove_both(&self, level: Option<u32>, virt: u64, phys: u64, slot: usize) {
        match self.both(level, virt, phys, slot) {
            Some((v, p, n)) => {
                if let Some(v) = v {
                    self.remove_word(v, v.tag | n);
                }
                self.remove_word(p, p.tag | n);
            }
            None => {
                self.uncount_unindexed();
                self.uncount_unindexed();
            }
        }
    }

    /// The virtual (none at level 0) and physical keys of a mapping and its slot number + 1.
    #[inline(always)]
    fn both(
        &self,
        level: Option<u32>,
        virt: u64,
        phys: u64,
        slot: usize,
    ) -> Option<(Option<Key>, Key, u32)> {
        let level = level?;
        let n = self.slot_word(slot)?;
        let s = shift(level);
        Some((
            (level != 0).then(|| self.key_of(Space::Virtual, level, virt >> s)),
            self.key_of(Space::Physical, level, phys >> s),
            n,
        ))
    }

    #[cold]
    fn count_unindexed(&self) {
        self.unindexed.fetch_add(1, Ordering::AcqRel);
    }

    #[cold]
    fn uncount_unindexed(&self) {
        // Not filed: it was counted instead (exactly once, by the same owner), so the
        // count is at least 1 here.
        self.unindexed.fetch_sub(1, Ordering::AcqRel);
    }

    #[inline(always)]
    fn add_word(&self, key: Key, word: u32) {
        let home = self.home(key);
        // The common case: a free word in the home bucket.
        if let Some(bucket) = self.buckets.get(home) {
            for w in &bucket.0 {
                if w.load(Ordering::Relaxed) == 0
                    && w.compare_exchange(0, word, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    return;
                }
            }
        }
        self.add_far(home, word);
    }

    /// [`add_word`](Self::add_word) past the home bucket.
    #[inline(never)]
    fn add_far(&self, home: usize, word: u32) {
        let mut b = self.next(home);
        for distance in 1..MAX_PROBE_BUCKETS {
            if let Some(bucket) = self.buckets.get(b) {
                for w in &bucket.0 {
                    if w.load(Ordering::Relaxed) == 0
                        && w.compare_exchange(0, word, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                    {
                        self.adjust(home, distance, true);
                        return;
                    }
                }
            }
            b = self.next(b);
        }
        self.count_unindexed();
    }

    #[inline(always)]
    fn remove_word(&self, key: Key, word: u32) {
        let home = self.home(key);
        if let Some(bucket) = self.buckets.get(home) {
            for w in &bucket.0 {
                // Only this slot's owner ever holds `word` (module docs): no CAS.
                if w.load(Ordering::Relaxed) == word {
                    w.store(0, Ordering::Release);
                    return;
                }
            }
        }
        self.remove_far(home, word);
    }

    /// [`remove_word`](Self::remove_word) past the home bucket.
    #[inline(never)]
    fn remove_far(&self, home: usize, word: u32) {
        let mut b = home;
        for distance in 1..MAX_PROBE_BUCKETS {
            if !self.more_after(b) {
                break;
            }
            b = self.next(b);
            if let Some(bucket) = self.buckets.get(b) {
                for w in &bucket.0 {
                    if w.load(Ordering::Relaxed) == word {
                        w.store(0, Ordering::Release);
                        self.adjust(home, distance, false);
                        return;
                    }
                }
            }
        }
        self.uncount_unindexed();
    }

    fn more_after(&self, b: usize) -> bool {
        self.overflow
            .get(b)
            .is_some_and(|o| o.load(Ordering::Acquire) != 0)
    }

    fn adjust(&self, home: usize, distance: usize, add: bool) {
        let mut b = home;
        for _ in 0..distance {
            if let Some(o) = self.overflow.get(b) {
                if add {
                    o.fetch_add(1, Ordering::AcqRel);
                } else {
                    o.fetch_sub(1, Ordering::AcqRel);
                }
            }
            b = self.next(b);
        }
    }

    /// Hands every slot filed under chunk `chunk` of `level` in `space` (and some others,
    /// on a fingerprint collision) to `visit` until it returns false; returns false then.
    /// Bounded: at most the probe window.
    pub fn candidates(
        &self,
        space: Space,
        level: u32,
        chunk: u64,
        visit: &mut impl FnMut(usize) -> bool,
    ) -> bool {
        let key = self.key_of(space, level, chunk);
        let mut b = self.home(key);
        for _ in 0..MAX_PROBE_BUCKETS {
            if let Some(bucket) = self.buckets.get(b) {
                for w in &bucket.0 {
                    let v = w.load(Ordering::Acquire);
                    if v != 0 && v & !self.slot_mask == key.tag {
                        let slot = usize::try_from(v & self.slot_mask)
                            .unwrap_or(0)
                            .wrapping_sub(1);
                        if !visit(slot) {
                            return false;
                        }
                    }
                }
            }
            if !self.more_after(b) {
                break;
            }
            b = self.next(b);
        }
        true
    }

    /// Every slot filed in `space` whose mapping may contain `addr` (the chunks of `addr`
    /// and the one before it at every level from `first_level` on), until `visit` returns
    /// false.
    pub fn around(
        &self,
        space: Space,
        addr: u64,
        first_level: u32,
        visit: &mut impl FnMut(usize) -> bool,
    ) -> bool {
        for level in first_level..LEVELS {
            let c = addr >> shift(level);
            if !self.candidates(space, level, c, visit) {
                return false;
            }
            if let Some(prev) = c.checked_sub(1) {
                if !self.candidates(space, level, prev, visit) {
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn levels() {
        assert_eq!(level_of(0), Some(0));
        assert_eq!(level_of(1), Some(0));
        assert_eq!(level_of(0x1000), Some(0));
        assert_eq!(level_of(0x1001), Some(1));
        assert_eq!(level_of(0x1_0000), Some(1));
        assert_eq!(level_of(0x1_0001), Some(2));
        assert_eq!(level_of(1 << 60), Some(12));
        assert_eq!(level_of((1 << 60) + 1), None);
        assert_eq!(level_of(u64::MAX), None);
    }

    fn all(ix: &SpanIndex, space: Space, addr: u64) -> Vec<usize> {
        let mut v = Vec::new();
        ix.around(space, addr, 0, &mut |s| {
            v.push(s);
            true
        });
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn add_find_remove() {
        let ix = SpanIndex::new(64).unwrap();
        ix.add(Space::Virtual, 0x10_0000, 0x3000, 5);
        ix.add(Space::Physical, 0x10_0000, 0x3000, 5);
        ix.add(Space::Virtual, 0x20_0000, 0x1000, 6);
        assert!(all(&ix, Space::Virtual, 0x10_2FFF).contains(&5));
        assert!(all(&ix, Space::Virtual, 0x20_0000).contains(&6));
        assert!(all(&ix, Space::Physical, 0x10_1000).contains(&5));
        ix.remove(Space::Virtual, 0x10_0000, 0x3000, 5);
        assert!(!all(&ix, Space::Virtual, 0x10_2FFF).contains(&5));
        assert!(all(&ix, Space::Physical, 0x10_1000).contains(&5));
        assert!(ix.complete());
    }

    #[test]
    fn unfileable_entries_are_counted() {
        let ix = SpanIndex::new(8).unwrap();
        ix.add(Space::Virtual, 0, u64::MAX, 1);
        assert!(!ix.complete());
        ix.remove(Space::Virtual, 0, u64::MAX, 1);
        assert!(ix.complete());
        ix.add(Space::Virtual, 0, 1, 1 << 30);
        assert!(!ix.complete());
        ix.remove(Space::Virtual, 0, 1, 1 << 30);
        assert!(ix.complete());
        // Fill one key past its window: the rest are counted, then uncounted.
        let n = MAX_PROBE_BUCKETS * BUCKET + 3;
        for s in 0..n {
            ix.add(Space::Virtual, 0x1000, 0x1000, s);
        }
        assert!(!ix.complete());
        for s in 0..n {
            ix.remove(Space::Virtual, 0x1000, 0x1000, s);
        }
        assert!(ix.complete());
        assert!(ix.overflow.iter().all(|o| o.load(Ordering::Relaxed) == 0));
        assert!(ix
            .buckets
            .iter()
            .all(|b| b.0.iter().all(|w| w.load(Ordering::Relaxed) == 0)));
    }

    #[test]
    #[cfg_attr(miri, ignore = "a 2 Mi-word index: slow under miri")]
    fn fingerprints_tell_the_keys_of_a_bucket_apart() {
        // An index for a 1.5 Mi-slot table (21 slot bits, a 10-bit fingerprint), filled to
        // its design load with distinct physical keys: a lookup of one key hands out few
        // slots of other keys (each would cost a seqlock read and a test).
        let slots = 3 << 19;
        let ix = SpanIndex::for_slots(2 << 20, slots).unwrap();
        let n = 2 << 20;
        // Distinct pages in no particular order (an odd multiplier is a bijection mod 2^40).
        let page = |i: usize| (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93) & ((1 << 40) - 1);
        for i in 0..n {
            ix.add(Space::Physical, page(i) << 12, 0x1000, i % slots);
        }
        assert!(ix.complete());
        let mut foreign = 0usize;
        let lookups = 4096;
        for i in (0..n).step_by(n / lookups) {
            ix.candidates(Space::Physical, 0, page(i), &mut |s| {
                foreign += usize::from(s != i % slots);
                true
            });
        }
        // About 2 x 16 words in a probe chain at 3/4 load, each a false candidate with
        // probability 2^-10: ~0.03 per lookup. Allow 0.1.
        assert!(
            foreign * 10 <= lookups,
            "{foreign} foreign candidates in {lookups} lookups"
        );
    }

    #[test]
    fn buckets_are_lines() {
        assert_eq!(core::mem::align_of::<Bucket>(), 64);
        assert_eq!(core::mem::size_of::<Bucket>(), 64);
    }
}
