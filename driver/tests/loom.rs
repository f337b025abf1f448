//! Loom models of the lock-free structures: every interleaving (within loom's preemption
//! bound) of concurrent inserts, removes, lookups, walks and journal pushes/reads.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p iosv --test loom --release`
//! (the table then uses buckets of 2 slots and a 2-bucket window: same algorithm, smaller
//! state space).
#![cfg(loom)]

use iosv::journal::RawJournal;
use iosv::table::{InsertOutcome, Mapping, RemoveOutcome, Space, SpanIndex, Table};
use loom::sync::Arc;
use loom::thread;

const BASE: u64 = 0xFFFF_F880_0000_0000;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn concurrent_inserts_of_distinct_keys_are_both_found() {
    model(|| {
        let t = Arc::new(Table::new(3, 1).unwrap());
        let t2 = Arc::clone(&t);
        let h = thread::spawn(move || t2.insert(&Mapping::new(BASE, 1)));
        let a = t.insert(&Mapping::new(BASE + 0x1000, 2));
        let b = h.join().unwrap();
        assert_eq!((a, b), (InsertOutcome::Inserted, InsertOutcome::Inserted));
        assert_eq!(t.get(BASE).map(|m| m.size), Some(1));
        assert_eq!(t.get(BASE + 0x1000).map(|m| m.size), Some(2));
    });
}

#[test]
fn racing_removes_have_one_winner() {
    model(|| {
        let t = Arc::new(Table::new(3, 0).unwrap());
        t.insert(&Mapping::new(BASE, 7));
        let t2 = Arc::clone(&t);
        let h = thread::spawn(move || t2.remove(BASE));
        let a = t.remove(BASE);
        let b = h.join().unwrap();
        let wins = [a, b]
            .iter()
            .filter(|r| matches!(r, RemoveOutcome::Removed(m) if m.size == 7))
            .count();
        assert_eq!(wins, 1, "{a:?} {b:?}");
        assert!(t.get(BASE).is_none());
    });
}

#[test]
fn lookup_during_insert_sees_nothing_or_the_whole_entry() {
    model(|| {
        let t = Arc::new(Table::new(3, 1).unwrap());
        let t2 = Arc::clone(&t);
        let h = thread::spawn(move || {
            let mut m = Mapping::new(BASE, 0x2000);
            m.physical = 0xF00D;
            m.stack_depth = 1;
            m.stack[0] = 0xCAFE;
            t2.insert(&m);
        });
        if let Some(m) = t.get(BASE) {
            assert_eq!(
                (m.size, m.physical, m.frames()),
                (0x2000, 0xF00D, &[0xCAFE][..])
            );
        }
        let mut seen = 0;
        t.walk(0, usize::MAX, |m| {
            assert_eq!((m.size, m.physical), (0x2000, 0xF00D));
            seen += 1;
            true
        });
        assert!(seen <= 1);
        h.join().unwrap();
        assert!(t.get(BASE).is_some());
    });
}

#[test]
fn remove_and_insert_of_other_key_keep_overflow_chains_valid() {
    model(|| {
        // Capacity 3 → 2 buckets of 2: keys spill into the neighbour bucket.
        let t = Arc::new(Table::new(3, 0).unwrap());
        for i in 0..2u64 {
            t.insert(&Mapping::new(BASE + (i << 12), i + 1));
        }
        let t2 = Arc::clone(&t);
        let h = thread::spawn(move || t2.remove(BASE));
        let r = t.insert(&Mapping::new(BASE + (5 << 12), 9));
        h.join().unwrap();
        assert_eq!(
            t.get(BASE + (1 << 12)).map(|m| m.size),
            Some(2),
            "untouched key stays reachable"
        );
        if r == InsertOutcome::Inserted {
            assert_eq!(t.get(BASE + (5 << 12)).map(|m| m.size), Some(9));
        }
    });
}

#[test]
fn index_adds_and_removes_of_one_key_race_cleanly() {
    // Two owners file different slots under the same key while a third unfiles its own:
    // afterwards exactly the two new slots are found, and a lookup during the race never
    // sees a slot that was not filed.
    model(|| {
        let ix = Arc::new(SpanIndex::new(2).unwrap());
        ix.add(Space::Virtual, 0x1000, 0x1000, 7);
        let ix2 = Arc::clone(&ix);
        let h = thread::spawn(move || ix2.add(Space::Virtual, 0x1000, 0x1000, 1));
        ix.remove(Space::Virtual, 0x1000, 0x1000, 7);
        ix.add(Space::Virtual, 0x1000, 0x1000, 2);
        let mut seen = Vec::new();
        ix.candidates(Space::Virtual, 0, 1, &mut |s| {
            seen.push(s);
            true
        });
        assert!(seen.iter().all(|s| [1, 2, 7].contains(s)), "{seen:?}");
        h.join().unwrap();
        let mut seen = Vec::new();
        ix.candidates(Space::Virtual, 0, 1, &mut |s| {
            seen.push(s);
            true
        });
        seen.sort_unstable();
        if ix.complete() {
            assert_eq!(seen, [1, 2]);
        } else {
            // A full window counts the entry instead: lookups then walk the table.
            assert!(seen.len() < 2);
        }
    });
}

#[test]
fn index_lookup_during_insert_and_remove() {
    // Mappings of two pages: the virtual lookup asks the index.
    lookup_during_insert_and_remove(0x2000);
}

#[test]
fn page_chain_lookup_during_insert_and_remove() {
    // Mappings of one page: the virtual lookup reads the table's probe chain of the page
    // (level 0 is not in the virtual index), the physical one still asks the index.
    lookup_during_insert_and_remove(0x1000);
}

fn lookup_during_insert_and_remove(size: u64) {
    // A mapping is filed before it is published and unfiled only after it is taken: a
    // lookup racing an insert and a remove never misses a mapping that stays live.
    model(move || {
        let t = Arc::new(Table::new(3, 0).unwrap());
        let mut b = Mapping::new(BASE + 0x10_0000, size);
        b.physical = 0x9000_0000;
        t.insert(&b);
        let t2 = Arc::clone(&t);
        let h = thread::spawn(move || {
            let mut a = Mapping::new(BASE, size);
            a.physical = 0x8000_0000;
            t2.insert(&a);
        });
        let _ = t.remove(BASE + 0x10_0000);
        let inside = BASE + size - 0x800;
        if let Some(m) = t.find_containing(inside) {
            assert_eq!((m.base, m.physical), (BASE, 0x8000_0000));
        }
        h.join().unwrap();
        assert_eq!(t.find_containing(inside).map(|m| m.base), Some(BASE));
        assert_eq!(t.find_containing(BASE + 0x10_0000 + size - 0x800), None);
        let mut phys = Vec::new();
        t.visit_physical(
            0x8000_0000 + size - 0x1000,
            0x8000_0000 + size,
            |_| true,
            |m| {
                phys.push(m.base);
                true
            },
        );
        assert_eq!(phys, [BASE]);
    });
}

#[test]
fn journal_two_producers_one_reader() {
    model(|| {
        let j = Arc::new(RawJournal::<2>::new(1).unwrap());
        let j2 = Arc::clone(&j);
        let h = thread::spawn(move || {
            j2.push(|s, w| *w = [s, s ^ 0xFF]);
        });
        j.push(|s, w| *w = [s, s ^ 0xFF]);
        let mut delivered = 0;
        let end = j.read(0, 4, |s, w| {
            assert_eq!(*w, [s, s ^ 0xFF], "a torn record was delivered");
            delivered += 1;
        });
        assert_eq!(end.next, delivered + end.lost);
        h.join().unwrap();
        let end2 = j.read(end.next, 4, |s, w| assert_eq!(*w, [s, s ^ 0xFF]));
        assert_eq!(end2.next, 2);
    });
}

#[test]
fn mdl_index_concurrent_add_and_remove_never_forget_a_live_mdl() {
    use iosv::mdl::MdlIndex;
    // Two MDLs share one of the two loom buckets or not, depending on the hash: either
    // way, a live MDL must read as "may hold" whatever the interleaving.
    const A: u64 = 0xFFFF_C000_0000_1000;
    const B: u64 = 0xFFFF_C000_0000_2000;
    model(|| {
        let ix = Arc::new(MdlIndex::new().unwrap());
        ix.add(A);
        let ix2 = Arc::clone(&ix);
        let h = thread::spawn(move || {
            ix2.add(B);
            assert!(ix2.may_hold(B));
            ix2.remove(B);
        });
        ix.add(A);
        ix.remove(A);
        assert!(ix.may_hold(A), "one mapping of A is still live");
        h.join().unwrap();
        ix.remove(A);
        assert!(!ix.may_hold(A) && !ix.may_hold(B), "every mapping is gone");
    });
}

#[test]
fn graveyard_racing_burials_and_a_reader() {
    use iosv::table::{Graveyard, MappingHead, Tombstone, WAYS};
    // One set of four slots, one of them already used: two writers bury distinct bases
    // at once (the hook's bury_mapping and the plain bury) while a reader looks one up.
    // Nobody waits; a reader sees nothing or a whole tombstone; the older tombstone and
    // both new ones are remembered: a writer whose scan saw a slot free but finds it
    // filled after its claim gives it back and scans again (module docs).
    const A: u64 = 0xFFFF_C000_0000_1000;
    const B: u64 = 0xFFFF_C000_0000_2000;
    const OLD: u64 = 0xFFFF_C000_0000_3000;
    let t = |base: u64, when: u64| Tombstone {
        base,
        size: when,
        physical: when ^ 0xF0,
        map_time_ns: when,
        unmap_time_ns: when,
        driver: 1,
        unmapped_by: 2,
        map_site: when,
        process: when << 12,
    };
    model(move || {
        let g = Arc::new(Graveyard::new(WAYS).unwrap());
        assert!(g.bury(&t(OLD, 1)));
        let g2 = Arc::clone(&g);
        let h = thread::spawn(move || {
            let mut m = MappingHead::new(A, 2);
            m.physical = 2 ^ 0xF0;
            m.map_time_ns = 2;
            m.driver = 1;
            assert!(g2.bury_mapping(&m, 2, 2, 2, 2 << 12));
        });
        assert!(g.bury(&t(B, 3)));
        if let Some(seen) = g.find(A) {
            assert_eq!(seen, t(A, 2), "a torn tombstone was read");
        }
        h.join().unwrap();
        assert_eq!(g.find(A), Some(t(A, 2)), "a racing burial replaced A");
        assert_eq!(g.find(B), Some(t(B, 3)), "a racing burial replaced B");
        assert_eq!(g.find(OLD), Some(t(OLD, 1)));
    });
}

#[test]
fn starting_device_while_another_driver_starts_and_ends() {
    use iosv::drivers::Drivers;
    // Driver A's device is starting on thread 1 throughout; driver B's device starts and
    // ends meanwhile. The registry-wide count maps read first never reads 0 while A's
    // start is in progress, so a map by A on thread 1 always finds A's device.
    model(|| {
        let d = Arc::new(Drivers::new().unwrap());
        let a = d.register(b"a.sys", 0x1000, 0x1000, true, false).unwrap();
        let b = d.register(b"b.sys", 0x4000, 0x1000, true, false).unwrap();
        assert!(d.start_begin(a, 0xA1, 1));
        let d2 = Arc::clone(&d);
        let h = thread::spawn(move || {
            assert!(d2.start_begin(b, 0xB1, 2));
            d2.start_end(b, 0xB1);
        });
        assert_eq!(d.starting_device(a, || 1), 0xA1);
        h.join().unwrap();
        assert_eq!(d.starting_device(a, || 1), 0xA1);
        assert_eq!(d.starting_device(b, || 2), 0, "B's start ended");
        d.start_end(a, 0xA1);
        assert_eq!(d.starting_device(a, || 1), 0, "every start ended");
    });
}

#[test]
fn attribution_while_a_driver_reloads_elsewhere() {
    use iosv::drivers::{DriverId, DriverState, Drivers};
    // A's image unloads and loads again at another base while a hook attributes: an
    // address of either image is A's or nobody's, never another driver's, and an
    // address in neither image is nobody's.
    model(|| {
        let d = Arc::new(Drivers::new().unwrap());
        let a = d.register(b"a.sys", 0x10_000, 0x1000, true, false).unwrap();
        let d2 = Arc::clone(&d);
        let h = thread::spawn(move || {
            d2.set_state(a, DriverState::Gone);
            d2.register(b"a.sys", 0x20_000, 0x1000, true, false);
        });
        for addr in [0x10_010, 0x20_010] {
            let who = d.attribute(addr);
            assert!(who == a || who == DriverId::NONE, "{who:?}");
        }
        assert_eq!(d.attribute(0x30_010), DriverId::NONE);
        // A call through A's own thunk returning outside every image (a tail call): A's
        // while A is loaded, else nobody's, never another driver's.
        let who = d.attribute_call(a, 0x30_010);
        assert!(who == a || who == DriverId::NONE, "{who:?}");
        h.join().unwrap();
        assert_eq!(d.attribute_call(a, 0x30_010), a);
        assert_eq!(
            d.attribute(0x10_010),
            DriverId::NONE,
            "the old image is gone"
        );
        assert_eq!(d.attribute(0x20_010), a);
    });
}
