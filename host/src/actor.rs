//! Actors: the per-thread state a thread needs to run driver I/O and inject bugs — a
//! random generator, a private page count and a private physical scratch window. Each
//! thread of a stress phase has its own, so the bugs of two threads never meet in the Mm.

use crate::mm::{page_count, PAGE_SIZE};
use crate::rng::Rng;
use crate::{lock, Host};
use std::sync::atomic::Ordering;
use std::vec::Vec;

/// Page count of the mappings an actor's double-unmap and stale-entry bugs use:
/// `PRIVATE_PAGES + actor index` (modulo 1024). No device BAR may be this large
/// (scenarios refuse BARs of 64 MiB or more), so no other thread maps this page count.
pub const PRIVATE_PAGES: u64 = 16 * 1024;
/// Physical scratch windows of actors (4 GiB each) start here (512 GiB).
pub const SCRATCH_PHYSICAL: u64 = 0x80_0000_0000;
/// Pages a runtime or bug window spans at most (16 KiB plus a sub-page offset).
const MAX_RUNTIME_PAGES: u64 = 5;

/// The per-thread state a thread needs to run driver I/O and inject bugs: a random
/// generator, a private page count and a private physical scratch window.
pub struct Actor {
    /// The actor's random generator.
    pub rng: Rng,
    pub(crate) index: u32,
    pub(crate) bad_parameter: u32,
    pub(crate) double_unmap: u32,
    pub(crate) map_irql: u32,
    private_pages: Option<u64>,
}

impl Actor {
    /// The actor's index.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// The page count of this actor's double-unmap and stale-entry mappings: by default
    /// [`PRIVATE_PAGES`] + index (64 MiB and up, a size no BAR has). A caller that knows
    /// which page counts its threads and devices use can pick a smaller, private one.
    pub fn private_pages(&self) -> u64 {
        self.private_pages
            .unwrap_or_else(|| PRIVATE_PAGES.wrapping_add(u64::from(self.index % 1024)))
    }

    /// Sets the page count of [`Actor::private_pages`]. For exact reports under
    /// concurrency no other thread may map that many pages meanwhile.
    pub fn set_private_pages(&mut self, pages: u64) {
        self.private_pages = Some(pages.max(1));
    }
    pub(crate) fn scratch(&self) -> u64 {
        SCRATCH_PHYSICAL.wrapping_add(u64::from(self.index % 4096).wrapping_mul(0x1_0000_0000))
    }
    /// A runtime window in the scratch area: 2..=4 pages, sometimes not page-aligned.
    pub(crate) fn window(&mut self) -> (u64, u64) {
        let pages = self.rng.range(2, 4);
        let offset = if self.rng.chance(0.25) {
            self.rng.below(0x800) & !7
        } else {
            0
        };
        let physical = self
            .scratch()
            .wrapping_add(0x1000_0000)
            .wrapping_add(self.rng.below(0x1000).wrapping_mul(PAGE_SIZE));
        (
            physical.wrapping_add(offset),
            pages.wrapping_mul(PAGE_SIZE).wrapping_sub(offset),
        )
    }
}

impl Host {
    /// A new actor (see [`Actor`]) whose generator is seeded with `seed`.
    pub fn actor(&self, seed: u64) -> Actor {
        let index = self.sys.next_actor.fetch_add(1, Ordering::Relaxed);
        Actor {
            rng: Rng::new(seed ^ u64::from(index).wrapping_mul(0x9E37_79B9)),
            index,
            bad_parameter: 0,
            double_unmap: 0,
            map_irql: 0,
            private_pages: None,
        }
    }

    /// Page counts no device BAR, automatic BAR, runtime window or bug window of the
    /// simulated drivers spans: `count` of them, smallest first (from 6 pages up). Used to
    /// give each concurrent [`Actor`] a private, realistic page count.
    pub fn private_page_counts(&self, count: usize) -> Vec<u64> {
        let mut used: std::collections::HashSet<u64> = (0..=MAX_RUNTIME_PAGES).collect();
        used.extend([0x1_0000 / PAGE_SIZE, 1]);
        for dev in lock(&self.sys.devices).values() {
            used.extend(
                dev.bars
                    .iter()
                    .filter_map(|b| page_count(b.physical, b.size)),
            );
        }
        (MAX_RUNTIME_PAGES.saturating_add(1)..)
            .filter(|p| !used.contains(p))
            .take(count)
            .collect()
    }
}
