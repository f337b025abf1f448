//! Heap blocks a driver may free: pool (`ExAllocatePool*`), IRPs (`IoAllocateIrp`) and
//! MDLs (`IoAllocateMdl`). Each kind's live blocks are remembered, so a free of a pointer
//! that is not a live block of that kind — a double free, a pointer into the middle of a
//! block, a stack or image address, another kind's block — ends the run with a bug-check
//! report naming the routine, as Windows (Driver Verifier's pool checks, bug check 0xC2
//! BAD_POOL_CALLER) would stop it, instead of corrupting the child's heap.

use super::kernel::alloc_zeroed;
use super::trap;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// What a block was allocated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ExAllocatePool*`.
    Pool,
    /// `IoAllocateIrp` (and the IRPs the child builds for the driver).
    Irp,
    /// `IoAllocateMdl`.
    Mdl,
}

impl Kind {
    const fn what(self) -> &'static str {
        match self {
            Self::Pool => "pool block",
            Self::Irp => "IRP",
            Self::Mdl => "MDL",
        }
    }
}

/// Live blocks: address → (kind, length).
static LIVE: Mutex<Option<HashMap<usize, (Kind, usize)>>> = Mutex::new(None);
/// The live MDL blocks, kept apart too: [`live_mdls`] is asked on every pool free.
static MDLS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn with<R>(f: impl FnOnce(&mut HashMap<usize, (Kind, usize)>) -> R) -> R {
    let mut g = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    f(g.get_or_insert_with(HashMap::new))
}

fn mdls() -> std::sync::MutexGuard<'static, Vec<usize>> {
    MDLS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Zeroed memory of `len` bytes, remembered as a live block of `kind` (0: out of memory).
#[must_use]
pub fn allocate(kind: Kind, len: usize) -> usize {
    let p = alloc_zeroed(len);
    if p != 0 {
        with(|m| m.insert(p, (kind, len)));
        if kind == Kind::Mdl {
            mdls().push(p);
        }
    }
    p
}

/// Runs `f` on the live MDL blocks (`IoAllocateMdl`'s, not yet freed): none of them is
/// freed while it runs ([`free`] releases an MDL under the same lock), so `f` may read
/// them even where another thread frees MDLs — the unit tests do, in parallel; the child
/// runs driver code on one thread at a time.
pub fn with_live_mdls<R>(f: impl FnOnce(&[usize]) -> R) -> R {
    f(&mdls())
}

/// The length of the live block `p` of `kind`. Anything else — a double free, a foreign
/// pointer, another kind's block — ends the run with a bug-check report naming `routine`.
pub fn require_live(kind: Kind, p: usize, routine: &str) -> usize {
    let why = match with(|m| m.get(&p).copied()) {
        Some((k, len)) if k == kind => return len,
        Some((k, _)) => format!("a live {}, not a {}", k.what(), kind.what()),
        None => format!(
            "not a live {} (freed already, or never allocated by the {} routines)",
            kind.what(),
            match kind {
                Kind::Pool => "ExAllocatePool",
                Kind::Irp => "IoAllocateIrp",
                Kind::Mdl => "IoAllocateMdl",
            }
        ),
    };
    trap::bugcheck(&format!("{routine}({p:#x}): {why}"));
}

/// Frees the live block `p` of `kind` on behalf of `routine`; anything else is a
/// bug-check report ([`require_live`]; the run ends there).
pub fn free(kind: Kind, p: usize, routine: &str) {
    require_live(kind, p, routine);
    with(|m| m.remove(&p));
    // An MDL leaves the list and the heap under the list's lock: a scan of the live MDLs
    // (`with_live_mdls`) never reads one freed under it.
    let live_mdls = (kind == Kind::Mdl).then(|| {
        let mut live = mdls();
        live.retain(|&m| m != p);
        live
    });
    // SAFETY: `p` was a live block of this kind (allocated by calloc in `allocate`) and
    // is no longer in the table, so no later free can reach it again (driver code runs on
    // one thread at a time, so nothing freed it between the check and the removal).
    unsafe { libc::free(p as *mut libc::c_void) };
    drop(live_mdls);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_remembered_by_kind_until_freed() {
        let p = allocate(Kind::Pool, 32);
        let kind_of = |p| with(|m| m.get(&p).copied());
        assert_eq!(kind_of(p), Some((Kind::Pool, 32)));
        assert_eq!(require_live(Kind::Pool, p, "ExFreePool"), 32);
        free(Kind::Pool, p, "ExFreePool");
        assert_eq!(kind_of(p), None);
        let m = allocate(Kind::Mdl, 0x38);
        assert!(with_live_mdls(|live| live.contains(&m)));
        free(Kind::Mdl, m, "IoFreeMdl");
        assert!(!with_live_mdls(|live| live.contains(&m)));
    }
}
