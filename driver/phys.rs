//! Physical-range facts: the cache class of a map call, parameter validation (IOSV011),
//! and a lock-free *conflict filter* over physical regions for IOSV010.
//!
//! The filter counts live mappings per (2 MiB physical region, cache class) in a
//! direct-mapped array of counters: a map whose regions hold no mapping of another class
//! cannot conflict, so the exact check (a bounded lookup in the table's physical index,
//! which also asks the filter which regions to probe) runs only when the filter says a
//! conflict is possible. Hash collisions only cost an extra walk, never a missed
//! conflict. Mappings spanning more than [`MAX_REGIONS`] regions are counted once in a
//! per-class "huge" counter that every check consults. Counters are plain atomic
//! increments: nothing waits.

#![forbid(unsafe_code)]

use crate::sync::{try_boxed_slice, AtomicU32, Ordering, OutOfMemory};
use alloc::boxed::Box;

/// log2 of the region size the filter counts in (2 MiB).
pub const REGION_SHIFT: u32 = 21;
/// Regions a mapping is counted in individually; larger mappings count as huge.
pub const MAX_REGIONS: u64 = 64;

/// Size of a page (x64 and ARM64 small pages): Mm maps, caches and unmaps whole pages.
pub const PAGE_SIZE: u64 = 0x1000;

/// `BYTE_OFFSET(va)`: the offset of `va` in its page.
pub const fn byte_offset(va: u64) -> u64 {
    va & (PAGE_SIZE - 1)
}

/// `PAGE_ALIGN(va)`: the start of `va`'s page.
pub const fn page_align(va: u64) -> u64 {
    va & !(PAGE_SIZE - 1)
}

/// `ROUND_TO_PAGES(size)`: `size` rounded up to whole pages (saturating).
pub const fn page_round(size: u64) -> u64 {
    page_align(size.saturating_add(PAGE_SIZE - 1))
}

/// `ADDRESS_AND_SIZE_TO_SPAN_PAGES(va, size)`: the pages `[va, va + size)` touches — what
/// MmMapIoSpace maps for an address and a size, and what MmUnmapIoSpace unmaps from
/// `PAGE_ALIGN(va)`. `None` if the range wraps.
pub fn span_pages(va: u64, size: u64) -> Option<u64> {
    let end = byte_offset(va).checked_add(size)?;
    Some(end.div_ceil(PAGE_SIZE))
}

/// The whole pages `[first, end)` that the byte range `[start, start + size)` touches
/// (`None` for an empty or wrapping range).
pub fn page_range(start: u64, size: u64) -> Option<(u64, u64)> {
    let last = start.checked_add(size.checked_sub(1)?)?;
    Some((page_align(start), page_align(last).checked_add(PAGE_SIZE)?))
}

/// The pages two physical byte ranges share, `[first, end)`: the cache attribute belongs
/// to the page, so ranges that share a page conflict even when their bytes do not
/// overlap (IOSV010). `None` if they share none.
pub fn shared_pages(a: u64, a_size: u64, b: u64, b_size: u64) -> Option<(u64, u64)> {
    let (a0, a1) = page_range(a, a_size)?;
    let (b0, b1) = page_range(b, b_size)?;
    let (first, end) = (a0.max(b0), a1.min(b1));
    (first < end).then_some((first, end))
}

/// `MmMaximumCacheType`: cache types of MmMapIoSpace must be below it.
pub const MM_MAXIMUM_CACHE_TYPE: u32 = 6;
/// `PAGE_READONLY`.
pub const PAGE_READONLY: u32 = 0x02;
/// `PAGE_READWRITE`.
pub const PAGE_READWRITE: u32 = 0x04;
/// `PAGE_EXECUTE`.
pub const PAGE_EXECUTE: u32 = 0x10;
/// `PAGE_EXECUTE_READ`.
pub const PAGE_EXECUTE_READ: u32 = 0x20;
/// `PAGE_EXECUTE_READWRITE`.
pub const PAGE_EXECUTE_READWRITE: u32 = 0x40;
/// `PAGE_NOCACHE`.
pub const PAGE_NOCACHE: u32 = 0x200;
/// `PAGE_WRITECOMBINE`.
pub const PAGE_WRITECOMBINE: u32 = 0x400;

/// How the processor may cache a mapping; mappings of one range must agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CacheClass {
    /// Uncached (MmNonCached, MmNonCachedUnordered, PAGE_NOCACHE).
    NonCached = 0,
    /// Cached (MmCached, MmHardwareCoherentCached, no Ex cache flag).
    Cached = 1,
    /// Write-combined (MmWriteCombined, MmUSWCCached, PAGE_WRITECOMBINE).
    WriteCombined = 2,
}

const CLASSES: usize = 3;

impl CacheClass {
    /// The class of a MmMapIoSpace cache type or a MmMapIoSpaceEx protection.
    pub fn of(cache: u32, map_ex: bool) -> CacheClass {
        if map_ex {
            if cache & PAGE_NOCACHE != 0 {
                CacheClass::NonCached
            } else if cache & PAGE_WRITECOMBINE != 0 {
                CacheClass::WriteCombined
            } else {
                CacheClass::Cached
            }
        } else {
            // MmNonCached 0, MmCached 1, MmWriteCombined 2, MmHardwareCoherentCached 3,
            // MmNonCachedUnordered 4, MmUSWCCached 5; anything else (invalid) as
            // non-cached. A table lookup instead of a match (the map hook's path).
            const OF_TYPE: [CacheClass; 6] = [
                CacheClass::NonCached,
                CacheClass::Cached,
                CacheClass::WriteCombined,
                CacheClass::Cached,
                CacheClass::NonCached,
                CacheClass::WriteCombined,
            ];
            usize::try_from(cache)
                .ok()
                .and_then(|i| OF_TYPE.get(i))
                .copied()
                .unwrap_or(CacheClass::NonCached)
        }
    }

    /// Name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            CacheClass::NonCached => "non-cached",
            CacheClass::Cached => "cached",
            CacheClass::WriteCombined => "write-combined",
        }
    }
}

/// What is wrong with a map call's parameters (IOSV011), if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadParameter {
    /// NumberOfBytes is zero.
    ZeroLength,
    /// PhysicalAddress + NumberOfBytes wraps past 2^64.
    RangeWraps,
    /// MmMapIoSpace cache type is not below MmMaximumCacheType.
    CacheType,
    /// MmMapIoSpaceEx protection is not one base protection plus at most one cache flag.
    Protection,
}

/// Validates a map call's parameters.
pub fn check_parameters(
    physical: u64,
    size: u64,
    cache: u32,
    map_ex: bool,
) -> Option<BadParameter> {
    if size == 0 {
        return Some(BadParameter::ZeroLength);
    }
    if physical.checked_add(size).is_none() {
        return Some(BadParameter::RangeWraps);
    }
    if map_ex {
        let base = cache & !(PAGE_NOCACHE | PAGE_WRITECOMBINE);
        let flags = cache & (PAGE_NOCACHE | PAGE_WRITECOMBINE);
        let base_ok = matches!(
            base,
            PAGE_READONLY
                | PAGE_READWRITE
                | PAGE_EXECUTE
                | PAGE_EXECUTE_READ
                | PAGE_EXECUTE_READWRITE
        );
        if !base_ok || flags == PAGE_NOCACHE | PAGE_WRITECOMBINE {
            return Some(BadParameter::Protection);
        }
    } else if cache >= MM_MAXIMUM_CACHE_TYPE {
        return Some(BadParameter::CacheType);
    }
    None
}

/// The counters of one region bucket, one per class (the fourth is padding): 16 bytes,
/// aligned, so a bucket never straddles two cache lines.
#[repr(align(16))]
struct RegionCounts([AtomicU32; 4]);

impl RegionCounts {
    /// The counter of `class`.
    #[inline]
    fn of(&self, class: CacheClass) -> &AtomicU32 {
        // The class is the counter's index (0..=2 of 4: never out of range).
        let [non_cached, ..] = &self.0;
        self.0.get(class as usize).unwrap_or(non_cached)
    }

    /// True if a class other than `class` has a live mapping here.
    #[inline]
    fn other_live(&self, class: CacheClass) -> bool {
        other_live(&self.0, class)
    }
}

/// True if a counter of `counts` (indexed by class) other than `class`'s is non-zero:
/// both other counters are read, without a branch between them.
#[inline(always)]
fn other_live(counts: &[AtomicU32], class: CacheClass) -> bool {
    // The other two classes are `class + 1` and `class + 2`, modulo 3, found in a table
    // (no branch on the class).
    const OTHERS: [(usize, usize); 3] = [(1, 2), (0, 2), (0, 1)];
    let (a, b) = OTHERS.get(class as usize).copied().unwrap_or((1, 2));
    let load = |i: usize| counts.get(i).map_or(0, |c| c.load(Ordering::Acquire));
    load(a) | load(b) != 0
}

/// The conflict filter. See the module docs.
pub struct ConflictFilter {
    counts: Box<[RegionCounts]>,
    huge: [AtomicU32; CLASSES],
    buckets: usize,
}

impl ConflictFilter {
    /// A filter of `buckets` region counters per class.
    pub fn new(buckets: usize) -> Result<ConflictFilter, OutOfMemory> {
        let buckets = buckets.max(1);
        Ok(ConflictFilter {
            counts: try_boxed_slice(buckets, |_| {
                RegionCounts(core::array::from_fn(|_| AtomicU32::new(0)))
            })?,
            huge: core::array::from_fn(|_| AtomicU32::new(0)),
            buckets,
        })
    }

    /// The one region `[physical, physical + size)` lies in, if it lies in one (`None`
    /// for an empty, wrapping or several-region range): the hooks' common case, without
    /// the overflow checks of [`regions`](Self::regions) (same answer as
    /// `regions(..) == Some((region, 1))`).
    #[inline(always)]
    fn one_region(physical: u64, size: u64) -> Option<u64> {
        const REGION: u64 = 1 << REGION_SHIFT;
        // Bytes from `physical` to the end of its region: 1..=REGION. `size - 1` below
        // it means the last byte is in the same region (and cannot wrap); `size` 0 wraps
        // to u64::MAX and fails.
        let room = REGION.wrapping_sub(physical & (REGION - 1));
        (size.wrapping_sub(1) < room).then_some(physical >> REGION_SHIFT)
    }

    #[inline]
    fn regions(physical: u64, size: u64) -> Option<(u64, u64)> {
        let last = physical.checked_add(size.checked_sub(1)?)?;
        let first = physical >> REGION_SHIFT;
        // `last >= physical`, so `last >> REGION_SHIFT >= first` and `n` cannot wrap.
        let n = (last >> REGION_SHIFT).wrapping_sub(first).wrapping_add(1);
        (n <= MAX_REGIONS).then_some((first, n))
    }

    /// The class counters of `region`'s bucket.
    #[inline]
    fn bucket(&self, region: u64) -> Option<&RegionCounts> {
        let h = region.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b = (u128::from(h).wrapping_mul(self.buckets as u128) >> 64) as usize;
        self.counts.get(b)
    }

    #[inline(always)]
    fn each_counter(
        &self,
        physical: u64,
        size: u64,
        class: CacheClass,
        mut f: impl FnMut(&AtomicU32),
    ) {
        match Self::regions(physical, size) {
            // The common case, one region, without the loop.
            Some((first, 1)) => {
                if let Some(b) = self.bucket(first) {
                    f(b.of(class));
                }
            }
            Some((first, n)) => {
                for r in 0..n {
                    if let Some(b) = self.bucket(first.wrapping_add(r)) {
                        f(b.of(class));
                    }
                }
            }
            None => {
                if let Some(c) = self.huge.get(class as usize) {
                    f(c);
                }
            }
        }
    }

    /// Counts a live mapping.
    pub fn add(&self, physical: u64, size: u64, class: CacheClass) {
        self.each_counter(physical, size, class, |c| {
            c.fetch_add(1, Ordering::AcqRel);
        });
    }

    /// [`add`](Self::add) and [`may_conflict`](Self::may_conflict) (for the other classes,
    /// so this mapping's own count does not matter) in one pass: each region's bucket is
    /// hashed once. Returns true if a live mapping of another class may overlap.
    /// The common case (one region) is inlined into the caller; the others are not.
    #[inline]
    pub fn add_checked(&self, physical: u64, size: u64, class: CacheClass) -> bool {
        match Self::one_region(physical, size) {
            Some(region) => {
                let huge_other = other_live(&self.huge, class);
                match self.bucket(region) {
                    Some(b) => {
                        b.of(class).fetch_add(1, Ordering::AcqRel);
                        huge_other | b.other_live(class)
                    }
                    None => huge_other,
                }
            }
            None => self.add_checked_many(physical, size, class),
        }
    }

    /// [`add_checked`](Self::add_checked) of a mapping of several regions or a huge one.
    #[inline(never)]
    fn add_checked_many(&self, physical: u64, size: u64, class: CacheClass) -> bool {
        let huge_other = other_live(&self.huge, class);
        match Self::regions(physical, size) {
            Some((first, n)) => {
                let mut other = huge_other;
                for r in 0..n {
                    if let Some(b) = self.bucket(first.wrapping_add(r)) {
                        b.of(class).fetch_add(1, Ordering::AcqRel);
                        other = other || b.other_live(class);
                    }
                }
                other
            }
            None => {
                if let Some(c) = self.huge.get(class as usize) {
                    c.fetch_add(1, Ordering::AcqRel);
                }
                huge_other || self.counts.iter().any(|b| b.other_live(class))
            }
        }
    }

    /// Uncounts a mapping that is gone. The common case (one region) is inlined into the
    /// caller; the others are not.
    #[inline]
    pub fn remove(&self, physical: u64, size: u64, class: CacheClass) {
        match Self::one_region(physical, size) {
            Some(region) => {
                if let Some(b) = self.bucket(region) {
                    b.of(class).fetch_sub(1, Ordering::AcqRel);
                }
            }
            None => self.remove_many(physical, size, class),
        }
    }

    /// [`remove`](Self::remove) of a mapping of several regions or a huge one.
    #[inline(never)]
    fn remove_many(&self, physical: u64, size: u64, class: CacheClass) {
        self.each_counter(physical, size, class, |c| {
            c.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// True if a live mapping of another class than `class` may lie (partly) in 2 MiB
    /// region `region` (never false when one does).
    pub fn region_may_conflict(&self, region: u64, class: CacheClass) -> bool {
        other_live(&self.huge, class) || self.bucket(region).is_some_and(|b| b.other_live(class))
    }

    /// True if a live mapping of another class may overlap `[physical, physical + size)`.
    pub fn may_conflict(&self, physical: u64, size: u64, class: CacheClass) -> bool {
        if other_live(&self.huge, class) {
            return true;
        }
        match Self::regions(physical, size) {
            // One hash per region; the region's three class counters are adjacent.
            Some((first, n)) => (0..n).any(|r| {
                self.bucket(first.wrapping_add(r))
                    .is_some_and(|b| b.other_live(class))
            }),
            // A huge mapping may overlap anything.
            None => self.counts.iter().any(|b| b.other_live(class)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        assert_eq!(
            check_parameters(0x1000, 0, 0, false),
            Some(BadParameter::ZeroLength)
        );
        assert_eq!(
            check_parameters(u64::MAX, 2, 0, false),
            Some(BadParameter::RangeWraps)
        );
        assert_eq!(
            check_parameters(0, 1, 6, false),
            Some(BadParameter::CacheType)
        );
        assert_eq!(check_parameters(0, 1, 5, false), None);
        assert_eq!(
            check_parameters(0, 1, PAGE_READWRITE | PAGE_NOCACHE, true),
            None
        );
        assert_eq!(check_parameters(0, 1, PAGE_EXECUTE_READ, true), None);
        assert_eq!(
            check_parameters(
                0,
                1,
                PAGE_READWRITE | PAGE_NOCACHE | PAGE_WRITECOMBINE,
                true
            ),
            Some(BadParameter::Protection)
        );
        assert_eq!(
            check_parameters(0, 1, PAGE_NOCACHE, true),
            Some(BadParameter::Protection)
        );
        assert_eq!(
            check_parameters(0, 1, PAGE_READWRITE | PAGE_READONLY, true),
            Some(BadParameter::Protection)
        );
        assert_eq!(
            check_parameters(0, 1, PAGE_READWRITE | 0x1000, true),
            Some(BadParameter::Protection)
        );
    }

    #[test]
    fn pages() {
        assert_eq!(span_pages(0x1010, 0x1000), Some(2));
        assert_eq!(span_pages(0x1000, 0x1000), Some(1));
        assert_eq!(span_pages(0x1FFF, 1), Some(1));
        assert_eq!(span_pages(u64::MAX, 2), Some(2));
        assert_eq!(page_range(0x1800, 0x100), Some((0x1000, 0x2000)));
        assert_eq!(page_range(0x1800, 0x900), Some((0x1000, 0x3000)));
        assert_eq!(page_range(0x1800, 0), None);
        assert_eq!(
            page_range(u64::MAX - 0x10, 0x10),
            None,
            "the last page's end wraps"
        );
        // Two halves of one page share it; neighbouring pages share nothing.
        assert_eq!(
            shared_pages(0x5000, 0x800, 0x5800, 0x800),
            Some((0x5000, 0x6000))
        );
        assert_eq!(shared_pages(0x5000, 0x1000, 0x6000, 0x1000), None);
        assert_eq!(
            shared_pages(0x5000, 0x3000, 0x6FF0, 0x20),
            Some((0x6000, 0x8000))
        );
    }

    #[test]
    fn classes() {
        assert_eq!(CacheClass::of(0, false), CacheClass::NonCached);
        assert_eq!(CacheClass::of(1, false), CacheClass::Cached);
        assert_eq!(CacheClass::of(5, false), CacheClass::WriteCombined);
        assert_eq!(CacheClass::of(PAGE_READWRITE, true), CacheClass::Cached);
        assert_eq!(
            CacheClass::of(PAGE_READWRITE | PAGE_WRITECOMBINE, true),
            CacheClass::WriteCombined
        );
    }

    #[test]
    fn one_region_is_regions_of_one() {
        let region = 1u64 << REGION_SHIFT;
        let edges = [
            0,
            1,
            0x1000,
            region - 0x1000,
            region - 1,
            region,
            5 * region + 7,
        ];
        let edges = edges
            .into_iter()
            .chain([u64::MAX - region, u64::MAX - 0x1000, u64::MAX]);
        let sizes = [0, 1, 0x1000, region - 1, region, region + 1, u64::MAX];
        for physical in edges {
            for size in sizes
                .into_iter()
                .chain([region - (physical & (region - 1))])
            {
                let want = match ConflictFilter::regions(physical, size) {
                    Some((first, 1)) => Some(first),
                    _ => None,
                };
                assert_eq!(
                    ConflictFilter::one_region(physical, size),
                    want,
                    "{physical:#x} + {size:#x}"
                );
            }
        }
    }

    #[test]
    fn filter_flags_other_classes_only() {
        let f = ConflictFilter::new(1024).unwrap();
        f.add(0xF000_0000, 0x1000, CacheClass::NonCached);
        assert!(!f.may_conflict(0xF000_0000, 0x1000, CacheClass::NonCached));
        assert!(f.may_conflict(0xF000_0800, 0x10, CacheClass::Cached));
        f.remove(0xF000_0000, 0x1000, CacheClass::NonCached);
        assert!(!f.may_conflict(0xF000_0800, 0x10, CacheClass::Cached));
        f.add(0, 1 << 40, CacheClass::WriteCombined);
        assert!(f.may_conflict(0x1234_0000, 1, CacheClass::Cached));
        f.remove(0, 1 << 40, CacheClass::WriteCombined);
        // add_checked counts and answers may_conflict for the other classes.
        assert!(!f.add_checked(0xF000_0000, 0x1000, CacheClass::NonCached));
        assert!(!f.add_checked(0xF000_0000, 0x1000, CacheClass::NonCached));
        assert!(f.add_checked(0xF000_0800, 0x10, CacheClass::Cached));
        assert!(f.may_conflict(0xF000_0000, 1, CacheClass::WriteCombined));
        assert!(f.add_checked(0, 1 << 40, CacheClass::WriteCombined));
        assert!(f.may_conflict(0x1234_0000, 1, CacheClass::NonCached));
    }
}
