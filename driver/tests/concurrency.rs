//! Real-thread stress of the lock-free structures: what loom proves on tiny models, here
//! at scale — concurrent churn, racing removers, readers walking under churn.
#![cfg(not(loom))]

use iosv::journal::RawJournal;
use iosv::table::{InsertOutcome, Mapping, RemoveOutcome, Table};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

const BASE: u64 = 0xFFFF_F880_0000_0000;

#[test]
fn churn_keeps_every_thread_s_own_keys_exact() {
    let t = Arc::new(Table::new(4096, 4).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|id| {
            let t = Arc::clone(&t);
            thread::spawn(move || {
                for round in 0..200u64 {
                    let keys: Vec<u64> = (0..200u64)
                        .map(|i| BASE + (id << 32) + (i << 12) + round % 3)
                        .collect();
                    for (i, k) in keys.iter().enumerate() {
                        let mut m = Mapping::new(*k, i as u64 + 1);
                        m.stack_depth = 1;
                        m.stack[0] = *k ^ id;
                        assert_eq!(t.insert(&m), InsertOutcome::Inserted);
                    }
                    for (i, k) in keys.iter().enumerate() {
                        let got = t.get(*k).expect("own key present");
                        assert_eq!((got.size, got.stack[0]), (i as u64 + 1, *k ^ id));
                    }
                    for (i, k) in keys.iter().enumerate() {
                        match t.remove(*k) {
                            RemoveOutcome::Removed(m) => assert_eq!(m.size, i as u64 + 1),
                            other => panic!("{other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let mut n = 0;
    t.walk(0, usize::MAX, |_| {
        n += 1;
        true
    });
    assert_eq!(n, 0);
}

#[test]
fn exactly_one_of_racing_removers_wins() {
    let t = Arc::new(Table::new(1024, 0).unwrap());
    let wins = Arc::new(AtomicU64::new(0));
    for round in 0..300u64 {
        let k = BASE + (round << 12);
        t.insert(&Mapping::new(k, 0x1000));
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let t = Arc::clone(&t);
                let wins = Arc::clone(&wins);
                thread::spawn(move || {
                    if let RemoveOutcome::Removed(_) = t.remove(k) {
                        wins.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    }
    assert_eq!(wins.load(Ordering::Relaxed), 300);
}

#[test]
fn walkers_see_only_whole_entries_under_churn() {
    let t = Arc::new(Table::new(512, 2).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (t, stop) = (Arc::clone(&t), Arc::clone(&stop));
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = BASE + ((i % 300) << 12);
                let mut m = Mapping::new(k, k ^ 0xABCD);
                m.physical = k.rotate_left(7);
                m.stack_depth = 2;
                m.stack = [k, !k, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                t.insert(&m);
                if i % 2 == 1 {
                    t.remove(BASE + (((i + 150) % 300) << 12));
                }
                i += 1;
            }
        })
    };
    for _ in 0..300 {
        t.walk(0, usize::MAX, |m| {
            assert_eq!(m.size, m.base ^ 0xABCD);
            assert_eq!(m.physical, m.base.rotate_left(7));
            assert_eq!(m.frames(), &[m.base, !m.base]);
            true
        });
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

#[test]
fn journal_producers_and_reader_account_for_every_record() {
    const PRODUCERS: u64 = 3;
    const EACH: u64 = 20_000;
    let j = Arc::new(RawJournal::<4>::new(256).unwrap());
    let done = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (j, done) = (Arc::clone(&j), Arc::clone(&done));
            thread::spawn(move || {
                for i in 0..EACH {
                    j.push(|seq, w| *w = [seq, p, i, seq ^ p ^ i]);
                }
                done.fetch_add(1, Ordering::Release);
            })
        })
        .collect();
    let (mut cursor, mut delivered, mut lost) = (0u64, 0u64, 0u64);
    loop {
        let finished = done.load(Ordering::Acquire) == PRODUCERS;
        let end = j.read(cursor, 64, |seq, w| {
            assert_eq!(w[0], seq);
            assert_eq!(w[3], w[0] ^ w[1] ^ w[2], "torn record delivered");
            delivered += 1;
        });
        lost += end.lost;
        cursor = end.next;
        if finished && cursor == j.tail() {
            break;
        }
    }
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(delivered + lost, PRODUCERS * EACH);
    assert_eq!(cursor, PRODUCERS * EACH);
}
