//! The violation journal: a multi-producer ring of fixed-size records that no producer
//! ever waits on.
//!
//! # Algorithm
//! A producer takes a sequence number with one `fetch_add` on the tail and owns slot
//! `seq % capacity` for that lap. Each slot has a *stamp* that only grows
//! (`fetch_max`): `2·seq + 2` once record `seq` is published. A producer reads the stamp
//! (a newer lap already there: its record is lost, it writes nothing), writes the words
//! and their checksum, then raises the stamp to "published" — two atomic
//! read-modify-writes per push (the tail and the publication). While it writes, the slot
//! still carries the previous lap's stamp: a reader waiting for `seq` sees it as not yet
//! published and stops there, and a reader of the previous lap's record (already
//! overwritten: it is older than the tail minus the capacity) reads words that no longer
//! match that record's checksum, which covers its sequence number, and counts it lost.
//! Nothing waits: a producer interrupted on its own processor by a higher-IRQL producer
//! (design.md §5) just finishes later, and the interrupting producer uses its own slot.
//! If the ring laps a slow producer, both may write the same slot; the stamp of the
//! newer lap wins and every record carries a checksum of its words and its sequence
//! number, so a torn record is detected by the reader and counted as lost, never
//! delivered.
//!
//! Readers hold a cursor (the next sequence number they want). A read returns the
//! published records from the cursor on, in order, stopping at the first record not yet
//! published; records overwritten (or torn) before the reader reached them are counted
//! as lost, exactly: every sequence number between the old and the new cursor is either
//! delivered, counted lost, or counted discarded (by CLEAR).
//!
//! Memory: `(8 × W + 16)` bytes per record slot (504 B for the 488-byte
//! [`ViolationRecord`]).

#![forbid(unsafe_code)]

use crate::protocol::ViolationRecord;
use crate::sync::{fence, try_boxed_slice, AtomicU64, Ordering, OutOfMemory};
use alloc::boxed::Box;
use zerocopy::{FromBytes, IntoBytes};

/// Words in one [`ViolationRecord`].
pub const RECORD_WORDS: usize = core::mem::size_of::<ViolationRecord>() / 8;
const _: () = assert!(core::mem::size_of::<ViolationRecord>().is_multiple_of(8));

struct RingSlot<const W: usize> {
    stamp: AtomicU64,
    check: AtomicU64,
    words: [AtomicU64; W],
}

/// Where a read ended, and what it could not deliver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadEnd {
    /// Cursor to pass to the next read.
    pub next: u64,
    /// Records in `[cursor, next)` overwritten or torn before they were read.
    pub lost: u64,
    /// Records in `[cursor, next)` discarded by [`RawJournal::discard_all`].
    pub discarded: u64,
    /// Sequence number the next record written will get.
    pub tail: u64,
}

/// The ring, over records of `W` words. See the module docs.
pub struct RawJournal<const W: usize> {
    tail: AtomicU64,
    floor: AtomicU64,
    slots: Box<[RingSlot<W>]>,
    /// `capacity - 1` when the capacity is a power of two (the default 4096): a slot's
    /// index is then `seq & mask`, with no division on the push path.
    mask: Option<u64>,
}

/// Checksum of a record, `first` its first word and `rest` the others: the sequence
/// number and then each word folded in by a bijective mixing round, so two writers' words
/// interleaved in one slot (a lapped producer) are detected. The sequence number is its
/// own round: records whose first word repeats the sequence number (every
/// [`ViolationRecord`]) must not cancel it out (loom found that).
///
/// Four independent chains, each seeded with the sequence number (the first word in
/// chain 0, then word `i` of `rest` in chain `i % 4`), folded into one at the end: a
/// quarter of the serial multiply chain a push would otherwise wait on. A round is
/// rotate, xor, multiply by an odd constant (three instructions, each bijective): the
/// rotation brings the multiply's well-mixed high bits down, so a difference in a word
/// spreads over the whole state by the next round of its chain.
fn checksum(seq: u64, first: u64, rest: &[u64]) -> u64 {
    #[inline(always)]
    fn round(h: u64, w: u64) -> u64 {
        (h.rotate_left(23) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    let mut lanes = [
        round(round(0x243F_6A88_85A3_08D3, seq), first),
        round(0x1319_8A2E_0370_7344, seq),
        round(0xA409_3822_299F_31D0, seq),
        round(0x082E_FA98_EC4E_6C89, seq),
    ];
    let mut chunks = rest.chunks_exact(4);
    for c in &mut chunks {
        for (l, w) in lanes.iter_mut().zip(c) {
            *l = round(*l, *w);
        }
    }
    for (l, w) in lanes.iter_mut().zip(chunks.remainder()) {
        *l = round(*l, *w);
    }
    lanes
        .iter()
        .fold(round(0x4528_21E6_38D0_1377, seq), |h, l| round(h, *l))
}

impl<const W: usize> RawJournal<W> {
    /// A ring of `capacity` records (at least 1), allocated here, once.
    pub fn new(capacity: usize) -> Result<Self, OutOfMemory> {
        let capacity = capacity.max(1);
        Ok(RawJournal {
            tail: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            mask: capacity
                .is_power_of_two()
                .then(|| u64::try_from(capacity.wrapping_sub(1)).ok())
                .flatten(),
            slots: try_boxed_slice(capacity, |_| RingSlot {
                stamp: AtomicU64::new(0),
                check: AtomicU64::new(0),
                words: core::array::from_fn(|_| AtomicU64::new(0)),
            })?,
        })
    }

    /// Records the ring holds.
    pub fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Sequence number the next record will get (= records ever written).
    pub fn tail(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    #[inline]
    fn slot(&self, seq: u64) -> Option<&RingSlot<W>> {
        let idx = match self.mask {
            Some(mask) => seq & mask,
            None => seq.checked_rem(self.capacity())?,
        };
        self.slots.get(usize::try_from(idx).ok()?)
    }

    /// Appends a record; `fill` writes its words given the sequence number it got.
    /// Returns that sequence number. Never waits; bounded work.
    pub fn push(&self, fill: impl FnOnce(u64, &mut [u64; W])) -> u64 {
        let seq = self.tail.fetch_add(1, Ordering::AcqRel);
        let mut words = [0u64; W];
        fill(seq, &mut words);
        let first = words.first().copied().unwrap_or(0);
        self.write(seq, first, &words);
        seq
    }

    /// Writes record `seq` into its slot and publishes it: `first` as its first word,
    /// then the words of `words` after its first (so a caller can replace the first
    /// word without copying the rest).
    #[inline(always)]
    fn write(&self, seq: u64, first: u64, words: &[u64; W]) {
        let Some(slot) = self.slot(seq) else {
            return;
        };
        let published = seq.wrapping_mul(2).wrapping_add(2);
        if slot.stamp.load(Ordering::Relaxed) > published {
            // Lapped before we started: a newer record owns the slot; ours is lost.
            return;
        }
        let rest = words.get(1..).unwrap_or(&[]);
        if let Some((dst0, dst)) = slot.words.split_first() {
            dst0.store(first, Ordering::Relaxed);
            for (d, w) in dst.iter().zip(rest) {
                d.store(*w, Ordering::Relaxed);
            }
        }
        slot.check
            .store(checksum(seq, first, rest), Ordering::Relaxed);
        // Release: a reader that sees this stamp sees the words and the check above.
        slot.stamp.fetch_max(published, Ordering::Release);
    }

    /// Reads up to `max` records from `cursor` on, handing each (with its sequence
    /// number) to `deliver`. See [`ReadEnd`].
    pub fn read(
        &self,
        cursor: u64,
        max: usize,
        mut deliver: impl FnMut(u64, &[u64; W]),
    ) -> ReadEnd {
        let tail = self.tail.load(Ordering::Acquire);
        let floor = self.floor.load(Ordering::Acquire);
        let mut end = ReadEnd {
            next: cursor,
            lost: 0,
            discarded: 0,
            tail,
        };
        if end.next < floor {
            end.discarded = floor.saturating_sub(end.next);
            end.next = floor;
        }
        let oldest = tail.saturating_sub(self.capacity());
        if end.next < oldest {
            end.lost = oldest.saturating_sub(end.next);
            end.next = oldest;
        }
        let mut delivered = 0usize;
        while end.next < tail && delivered < max {
            let seq = end.next;
            let Some(slot) = self.slot(seq) else { break };
            let published = seq.wrapping_mul(2).wrapping_add(2);
            let st = slot.stamp.load(Ordering::Acquire);
            if st < published {
                break; // not yet published: stop here, the next read resumes at it
            }
            let mut ok = false;
            if st == published {
                let mut words = [0u64; W];
                for (dst, src) in words.iter_mut().zip(slot.words.iter()) {
                    *dst = src.load(Ordering::Relaxed);
                }
                let check = slot.check.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                let (first, rest) = words.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
                if slot.stamp.load(Ordering::Relaxed) == st && check == checksum(seq, first, rest) {
                    deliver(seq, &words);
                    delivered = delivered.saturating_add(1);
                    ok = true;
                }
            }
            if !ok {
                end.lost = end.lost.saturating_add(1);
            }
            end.next = seq.saturating_add(1);
        }
        end
    }

    /// Discards every record written so far: later reads skip them and count them as
    /// discarded, not lost.
    pub fn discard_all(&self) {
        let tail = self.tail.load(Ordering::Acquire);
        self.floor.fetch_max(tail, Ordering::AcqRel);
    }
}

/// The violation journal.
pub type Journal = RawJournal<RECORD_WORDS>;

impl RawJournal<RECORD_WORDS> {
    /// Appends a violation record; its `seq` field is set to the sequence number it gets.
    pub fn push_record(&self, record: &ViolationRecord) -> u64 {
        // `seq` is the record's first word: the words are read straight from `record` (no
        // copy of the whole record to set one field), the first replaced by `seq`.
        const _: () = assert!(core::mem::offset_of!(ViolationRecord, seq) == 0);
        match <[u64; RECORD_WORDS]>::ref_from_bytes(record.as_bytes()) {
            Ok(words) => {
                let seq = self.tail.fetch_add(1, Ordering::AcqRel);
                self.write(seq, seq, words);
                seq
            }
            // A record not 8-aligned (never: it holds u64 fields): copied word by word.
            Err(_) => self.push(|seq, words| {
                for (dst, chunk) in words.iter_mut().zip(record.as_bytes().chunks_exact(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(chunk);
                    *dst = u64::from_le_bytes(b);
                }
                if let Some(first) = words.first_mut() {
                    *first = seq;
                }
            }),
        }
    }

    /// Reads records as [`ViolationRecord`]s. See [`RawJournal::read`].
    pub fn read_records(
        &self,
        cursor: u64,
        max: usize,
        mut deliver: impl FnMut(&ViolationRecord),
    ) -> ReadEnd {
        self.read(cursor, max, |_, words| {
            if let Ok(r) = ViolationRecord::read_from_bytes(words.as_bytes()) {
                deliver(&r);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_counts_overwritten_records() {
        let j = RawJournal::<2>::new(4).unwrap();
        for i in 0..3u64 {
            j.push(|seq, w| *w = [seq, i * 10]);
        }
        let mut got = Vec::new();
        let end = j.read(0, 10, |s, w| got.push((s, w[1])));
        assert_eq!(got, [(0, 0), (1, 10), (2, 20)]);
        assert_eq!(
            end,
            ReadEnd {
                next: 3,
                lost: 0,
                discarded: 0,
                tail: 3
            }
        );
        for i in 3..10u64 {
            j.push(|_, w| *w = [i, i]);
        }
        let mut seqs = Vec::new();
        let end = j.read(3, 10, |s, _| seqs.push(s));
        assert_eq!(seqs, [6, 7, 8, 9]);
        assert_eq!(end.lost, 3);
        assert_eq!(end.next, 10);
    }

    #[test]
    fn max_limits_and_cursor_resumes() {
        let j = RawJournal::<1>::new(8).unwrap();
        for _ in 0..5 {
            j.push(|s, w| w[0] = s);
        }
        let mut got = Vec::new();
        let e = j.read(0, 2, |s, _| got.push(s));
        assert_eq!(e.next, 2);
        let e = j.read(e.next, 10, |s, _| got.push(s));
        assert_eq!(e.next, 5);
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn discard_counts_separately() {
        let j = RawJournal::<1>::new(8).unwrap();
        for _ in 0..3 {
            j.push(|s, w| w[0] = s);
        }
        j.discard_all();
        j.push(|s, w| w[0] = s);
        let mut got = Vec::new();
        let e = j.read(0, 10, |s, _| got.push(s));
        assert_eq!(got, [3]);
        assert_eq!((e.discarded, e.lost), (3, 0));
    }

    #[test]
    fn torn_record_is_lost_not_delivered() {
        let j = RawJournal::<2>::new(2).unwrap();
        j.push(|_, w| *w = [1, 2]);
        // Simulate a lapped writer scribbling over a published record.
        j.slots[0].words[1].store(99, Ordering::Relaxed);
        let mut n = 0;
        let e = j.read(0, 10, |_, _| n += 1);
        assert_eq!((n, e.lost, e.next), (0, 1, 1));
    }

    #[test]
    fn a_record_being_overwritten_is_lost_not_delivered() {
        // A producer of the next lap writes its words before it raises the stamp: a
        // reader of the old record in between sees the old stamp over new words.
        let j = RawJournal::<4>::new(1).unwrap();
        j.push(|s, w| *w = [s, 1, 1 << 63, 7]);
        for (i, v) in [9u64, 1, 0, 7 | 1 << 28].into_iter().enumerate() {
            j.slots[0].words[i].store(v, Ordering::Relaxed);
            let mut n = 0;
            let e = j.read(0, 10, |_, _| n += 1);
            assert_eq!((n, e.lost, e.next), (0, 1, 1), "after word {i}");
        }
        // The next push publishes its own record whole.
        let s = j.push(|s, w| *w = [s, 2, 3, 4]);
        let mut got = Vec::new();
        j.read(s, 10, |s, w| got.push((s, *w)));
        assert_eq!(got, [(1, [1, 2, 3, 4])]);
    }

    #[test]
    fn power_of_two_and_other_capacities_use_every_slot() {
        for capacity in [1usize, 3, 4, 5, 8] {
            let j = RawJournal::<1>::new(capacity).unwrap();
            for _ in 0..2 * capacity {
                j.push(|s, w| w[0] = s);
            }
            let mut got = Vec::new();
            let e = j.read(0, 100, |s, w| got.push((s, w[0])));
            let newest = capacity as u64..2 * capacity as u64;
            assert_eq!(got, newest.map(|s| (s, s)).collect::<Vec<_>>());
            assert_eq!(e.lost, capacity as u64);
        }
    }

    #[test]
    fn violation_records_round_trip() {
        let j = Journal::new(4).unwrap();
        let mut r = ViolationRecord {
            rule: 4,
            address: 0xdead_0000,
            ..Default::default()
        };
        r.call_stack[15] = 7;
        let s = j.push_record(&r);
        let mut out = Vec::new();
        j.read_records(0, 4, |r| out.push(*r));
        r.seq = s;
        assert_eq!(out, [r]);
    }
}
