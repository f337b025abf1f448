//! The simulated memory manager: what `MmMapIoSpace`, `MmMapIoSpaceEx` and
//! `MmUnmapIoSpace` do in the host, and the ground truth of what is really mapped.
//!
//! # Addresses
//! Mappings get canonical kernel virtual addresses from [`VA_START`]..[`VA_END`]. A
//! mapping of `size` bytes at physical `p` takes `ceil(((p & 0xFFF) + size) / 4096)` pages
//! and its base is the page-aligned block plus `p & 0xFFF`, as the real routine returns.
//! Freed blocks are reused eagerly: one LIFO free list per page count, so the next map of
//! the same page count gets the most recently freed block — which is exactly what makes
//! a missed unmap meet a stale table entry (IOSV013) and a late double unmap hit someone
//! else's mapping. Blocks are never split or merged, so an address inside a block is
//! never the base of another block. Addresses in [`NEVER_MAPPED_START`].. are never
//! handed out (the scenarios' "unknown address" bugs use them).
//!
//! # Soundness
//! The simulated Mm keeps every live mapping with whether it was made through iosv's
//! hook. An unmap of a base it does not hold, or with a byte count that covers another
//! number of pages, is what would corrupt PTEs or bug-check a real system: it is recorded
//! as a [`Corruption`] (and otherwise ignored, or for a page-count mismatch the block is
//! released as mapped). Tests assert that no corruption happens while containment is on.
//!
//! # Cost
//! This stands in for the kernel, not for iosv: it uses std mutexes — one for the address
//! allocator and one of [`SHARDS`] for the live map — so a map or unmap takes two
//! uncontended-in-the-common-case locks.

use iosv::phys::{
    MM_MAXIMUM_CACHE_TYPE, PAGE_EXECUTE, PAGE_EXECUTE_READ, PAGE_EXECUTE_READWRITE, PAGE_NOCACHE,
    PAGE_READONLY, PAGE_READWRITE, PAGE_WRITECOMBINE,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

/// First virtual address the simulated Mm hands out.
pub const VA_START: u64 = 0xFFFF_D000_0000_0000;
/// End of the simulated Mm's virtual range (16 TiB).
pub const VA_END: u64 = 0xFFFF_E000_0000_0000;
/// Start of a canonical kernel range the simulated Mm never hands out.
pub const NEVER_MAPPED_START: u64 = 0xFFFF_E000_0000_0000;
/// Page size.
pub const PAGE_SIZE: u64 = 0x1000;
/// Shards of the live map.
pub const SHARDS: usize = 64;

/// One mapping the simulated Mm holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmMapping {
    /// Base returned to the caller (page-aligned block + physical page offset).
    pub base: u64,
    /// Bytes requested.
    pub size: u64,
    /// Physical address requested.
    pub physical: u64,
    /// Cache type (MmMapIoSpace) or protection (MmMapIoSpaceEx).
    pub cache: u32,
    /// Made by MmMapIoSpaceEx.
    pub map_ex: bool,
    /// Made through iosv's hook (the verifier called the real routine), not directly.
    pub via_iosv: bool,
}

/// Something a real system would not have survived: the unmap that did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// `MmUnmapIoSpace` of an address the Mm does not hold as a base (unknown, interior,
    /// or already unmapped).
    NotMapped {
        /// Address passed.
        base: u64,
        /// Byte count passed.
        size: u64,
        /// The call came through iosv (it was not contained).
        via_iosv: bool,
    },
    /// `MmUnmapIoSpace` with a byte count that spans another number of pages than the
    /// mapping (wrong PTEs would be released). The block is released as mapped.
    SizeMismatch {
        /// Base passed.
        base: u64,
        /// Bytes mapped.
        mapped: u64,
        /// Bytes passed.
        passed: u64,
        /// The call came through iosv.
        via_iosv: bool,
    },
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let via = |v: bool| if v { "through iosv" } else { "bypassing iosv" };
        match self {
            Corruption::NotMapped {
                base,
                size,
                via_iosv,
            } => write!(
                f,
                "MmUnmapIoSpace({base:#x}, {size:#x}) {} of an address the Mm does not hold as a base",
                via(*via_iosv)
            ),
            Corruption::SizeMismatch {
                base,
                mapped,
                passed,
                via_iosv,
            } => write!(
                f,
                "MmUnmapIoSpace({base:#x}, {passed:#x}) {} of a mapping of {mapped:#x} bytes",
                via(*via_iosv)
            ),
        }
    }
}

#[derive(Default)]
struct Allocator {
    /// Page count → page-aligned blocks, most recently freed last.
    free: HashMap<u64, Vec<u64>>,
    /// Next never-used page-aligned address.
    next: u64,
}

#[derive(Clone, Copy)]
struct Live {
    m: MmMapping,
    pages: u64,
}

/// Counters of the simulated Mm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmCounters {
    /// Successful maps.
    pub maps: u64,
    /// Maps that returned NULL (injected failure, bad parameters, address space full).
    pub map_failures: u64,
    /// Unmap calls (including corrupting ones).
    pub unmaps: u64,
    /// Corruptions recorded.
    pub corruptions: u64,
    /// Maps that reused a freed block.
    pub reuses: u64,
}

/// The simulated memory manager. See the module docs.
pub struct SimMm {
    alloc: Mutex<Allocator>,
    live: Box<[Mutex<HashMap<u64, Live>>]>,
    fail_next: AtomicU64,
    corruptions: Mutex<Vec<Corruption>>,
    maps: AtomicU64,
    map_failures: AtomicU64,
    unmaps: AtomicU64,
    corruption_count: AtomicU64,
    reuses: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pages spanned by `size` bytes starting at `physical`'s offset in its page; `None` if
/// the count overflows.
pub fn page_count(physical: u64, size: u64) -> Option<u64> {
    (physical & (PAGE_SIZE - 1))
        .checked_add(size)?
        .checked_add(PAGE_SIZE - 1)
        .map(|b| b / PAGE_SIZE)
}

/// True if the real routine would accept `protect` for MmMapIoSpaceEx.
fn protection_ok(protect: u32) -> bool {
    let base = protect & !(PAGE_NOCACHE | PAGE_WRITECOMBINE);
    let flags = protect & (PAGE_NOCACHE | PAGE_WRITECOMBINE);
    matches!(
        base,
        PAGE_READONLY | PAGE_READWRITE | PAGE_EXECUTE | PAGE_EXECUTE_READ | PAGE_EXECUTE_READWRITE
    ) && flags != PAGE_NOCACHE | PAGE_WRITECOMBINE
}

impl Default for SimMm {
    fn default() -> Self {
        Self::new()
    }
}

impl SimMm {
    /// An empty Mm.
    pub fn new() -> SimMm {
        SimMm {
            alloc: Mutex::new(Allocator {
                free: HashMap::new(),
                next: VA_START,
            }),
            live: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            fail_next: AtomicU64::new(0),
            corruptions: Mutex::new(Vec::new()),
            maps: AtomicU64::new(0),
            map_failures: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            corruption_count: AtomicU64::new(0),
            reuses: AtomicU64::new(0),
        }
    }

    fn shard(&self, base: u64) -> Option<&Mutex<HashMap<u64, Live>>> {
        let h = (base >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        self.live.get(usize::try_from(h).unwrap_or(0))
    }

    /// Makes the next `n` maps fail (return NULL), as if system PTEs ran out.
    pub fn fail_next_maps(&self, n: u64) {
        self.fail_next.store(n, Ordering::Relaxed);
    }

    fn take_failure(&self) -> bool {
        self.fail_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// `MmMapIoSpace` (`map_ex == false`, `cache` = MEMORY_CACHING_TYPE) or
    /// `MmMapIoSpaceEx` (`cache` = page protection). Returns the base, or 0 when the map
    /// fails: an injected failure, zero length, a range that wraps, a cache type not below
    /// MmMaximumCacheType, an invalid protection, or the address range is exhausted.
    pub fn map(&self, physical: u64, size: u64, cache: u32, map_ex: bool, via_iosv: bool) -> u64 {
        let valid = size != 0
            && physical.checked_add(size).is_some()
            && if map_ex {
                protection_ok(cache)
            } else {
                cache < MM_MAXIMUM_CACHE_TYPE
            };
        let pages = page_count(physical, size);
        let (Some(pages), true) = (pages, valid) else {
            self.map_failures.fetch_add(1, Ordering::Relaxed);
            return 0;
        };
        if self.take_failure() {
            self.map_failures.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        let block = {
            let mut a = lock(&self.alloc);
            match a.free.get_mut(&pages).and_then(Vec::pop) {
                Some(b) => {
                    self.reuses.fetch_add(1, Ordering::Relaxed);
                    Some(b)
                }
                None => {
                    let bytes = pages.checked_mul(PAGE_SIZE);
                    let end = bytes
                        .and_then(|b| a.next.checked_add(b))
                        .filter(|e| *e <= VA_END);
                    match end {
                        Some(end) => {
                            let b = a.next;
                            a.next = end;
                            Some(b)
                        }
                        None => None,
                    }
                }
            }
        };
        let Some(block) = block else {
            self.map_failures.fetch_add(1, Ordering::Relaxed);
            return 0;
        };
        let base = block | (physical & (PAGE_SIZE - 1));
        let m = MmMapping {
            base,
            size,
            physical,
            cache,
            map_ex,
            via_iosv,
        };
        if let Some(s) = self.shard(block) {
            lock(s).insert(block, Live { m, pages });
        }
        self.maps.fetch_add(1, Ordering::Relaxed);
        base
    }

    /// `MmUnmapIoSpace`. Like the real routine, it unmaps from `PAGE_ALIGN(base)`: the
    /// base the map returned, or the page-aligned address of its first page (what a
    /// driver that drops the page offset passes, IOSV014), both release the block. An
    /// unmap the real routine would not survive — of an address that is neither, or with
    /// a byte count that spans another number of pages from that address — is recorded
    /// as a [`Corruption`].
    pub fn unmap(&self, base: u64, size: u64, via_iosv: bool) {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        let block = base & !(PAGE_SIZE - 1);
        let removed = self.shard(block).and_then(|s| {
            let mut live = lock(s);
            let accepted = live
                .get(&block)
                .is_some_and(|l| l.m.base == base || base == block);
            if accepted {
                live.remove(&block)
            } else {
                None
            }
        });
        let Some(live) = removed else {
            self.corrupt(Corruption::NotMapped {
                base,
                size,
                via_iosv,
            });
            return;
        };
        if page_count(base, size) != Some(live.pages) {
            self.corrupt(Corruption::SizeMismatch {
                base,
                mapped: live.m.size,
                passed: size,
                via_iosv,
            });
        }
        lock(&self.alloc)
            .free
            .entry(live.pages)
            .or_default()
            .push(block);
    }

    fn corrupt(&self, c: Corruption) {
        self.corruption_count.fetch_add(1, Ordering::Relaxed);
        lock(&self.corruptions).push(c);
    }

    /// Every corruption recorded so far, oldest first.
    pub fn corruptions(&self) -> Vec<Corruption> {
        lock(&self.corruptions).clone()
    }

    /// Whether the Mm holds a mapping with this base.
    pub fn is_mapped(&self, base: u64) -> bool {
        self.mapping(base).is_some()
    }

    /// The mapping with this base, if any.
    pub fn mapping(&self, base: u64) -> Option<MmMapping> {
        let block = base & !(PAGE_SIZE - 1);
        self.shard(block)
            .and_then(|s| lock(s).get(&block).map(|l| l.m).filter(|m| m.base == base))
    }

    /// Every live mapping (the ground truth), sorted by base. Not atomic across shards:
    /// call it when no map or unmap is running for a consistent picture.
    pub fn mappings(&self) -> Vec<MmMapping> {
        let mut v: Vec<MmMapping> = self
            .live
            .iter()
            .flat_map(|s| lock(s).values().map(|l| l.m).collect::<Vec<_>>())
            .collect();
        v.sort_by_key(|m| m.base);
        v
    }

    /// The counters.
    pub fn counters(&self) -> MmCounters {
        MmCounters {
            maps: self.maps.load(Ordering::Relaxed),
            map_failures: self.map_failures.load(Ordering::Relaxed),
            unmaps: self.unmaps.load(Ordering::Relaxed),
            corruptions: self.corruption_count.load(Ordering::Relaxed),
            reuses: self.reuses.load(Ordering::Relaxed),
        }
    }
}

/// `MmNonCached` (a MEMORY_CACHING_TYPE).
pub const MM_NON_CACHED: u32 = 0;
/// `MmCached`.
pub const MM_CACHED: u32 = 1;
/// `MmWriteCombined`.
pub const MM_WRITE_COMBINED: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9: the audit printed corruptions as Rust debug structs with decimal addresses.
    #[test]
    fn corruptions_display_in_hex_as_calls() {
        let c = Corruption::SizeMismatch {
            base: 0xFFFF_D000_0000_1000,
            mapped: 0x2000,
            passed: 0x3000,
            via_iosv: true,
        };
        let s = std::format!("{c}");
        assert_eq!(
            s,
            "MmUnmapIoSpace(0xffffd00000001000, 0x3000) through iosv of a mapping of 0x2000 bytes"
        );
        let c = Corruption::NotMapped {
            base: 0x10,
            size: 0x1000,
            via_iosv: false,
        };
        assert!(std::format!("{c}").starts_with("MmUnmapIoSpace(0x10, 0x1000) bypassing iosv"));
    }

    #[test]
    fn offsets_pages_and_lifo_reuse() {
        let mm = SimMm::new();
        let a = mm.map(0xF000_0123, 0x1000, 0, false, true);
        assert_eq!(a & 0xFFF, 0x123);
        assert!((VA_START..VA_END).contains(&a));
        let b = mm.map(0xF000_0000, 0x2000, 0, false, true);
        mm.unmap(a, 0x1000, true);
        // Same page count (2): the freed block comes back.
        let c = mm.map(0xF100_0000, 0x1800, 0, false, false);
        assert_eq!(c & !0xFFF, a & !0xFFF);
        assert_eq!(mm.mappings().len(), 2);
        assert!(mm.corruptions().is_empty());
        mm.unmap(b, 0x2000, true);
        mm.unmap(b, 0x2000, true);
        mm.unmap(c + 0x1000, 0x1000, true);
        mm.unmap(c, 0x10_0000, false);
        assert_eq!(mm.corruptions().len(), 3);
        assert!(matches!(
            mm.corruptions()[2],
            Corruption::SizeMismatch { .. }
        ));
        assert!(mm.mappings().is_empty());
    }

    #[test]
    fn failures() {
        let mm = SimMm::new();
        assert_eq!(mm.map(0x1000, 0, 0, false, true), 0);
        assert_eq!(mm.map(0x1000, 0x1000, 7, false, true), 0);
        assert_eq!(
            mm.map(
                0x1000,
                0x1000,
                PAGE_NOCACHE | PAGE_WRITECOMBINE | PAGE_READWRITE,
                true,
                true
            ),
            0
        );
        assert_eq!(mm.map(u64::MAX - 10, 0x1000, 0, false, true), 0);
        mm.fail_next_maps(1);
        assert_eq!(mm.map(0x1000, 0x1000, 0, false, true), 0);
        assert_ne!(
            mm.map(0x1000, 0x1000, PAGE_READWRITE | PAGE_NOCACHE, true, true),
            0
        );
        assert_eq!(mm.counters().map_failures, 5);
    }
}
