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

/// Live blocks: address → kind.
static LIVE: Mutex<Option<HashMap<usize, Kind>>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut HashMap<usize, Kind>) -> R) -> R {
    let mut g = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    f(g.get_or_insert_with(HashMap::new))
}

/// Zeroed memory of `len` bytes, remembered as a live block of `kind` (0: out of memory).
#[must_use]
pub fn allocate(kind: Kind, len: usize) -> usize {
    let p = alloc_zeroed(len);
    if p != 0 {
        with(|m| m.insert(p, kind));
    }
    p
}

/// Ends the run with a bug-check report naming `routine` unless `p` is a live block of
/// `kind` (a double free, a foreign pointer, another kind's block).
pub fn require_live(kind: Kind, p: usize, routine: &str) {
    let Err(other) = with(|m| match m.get(&p).copied() {
        Some(k) if k == kind => Ok(()),
        other => Err(other),
    }) else {
        return;
    };
    let why = match other {
        Some(k) => format!("a live {}, not a {}", k.what(), kind.what()),
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
    // SAFETY: `p` was a live block of this kind (allocated by calloc in `allocate`) and
    // is no longer in the table, so no later free can reach it again (driver code runs on
    // one thread at a time, so nothing freed it between the check and the removal).
    unsafe { libc::free(p as *mut libc::c_void) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_remembered_by_kind_until_freed() {
        let p = allocate(Kind::Pool, 32);
        let kind_of = |p| with(|m| m.get(&p).copied());
        assert_eq!(kind_of(p), Some(Kind::Pool));
        require_live(Kind::Pool, p, "ExFreePool");
        free(Kind::Pool, p, "ExFreePool");
        assert_eq!(kind_of(p), None);
    }
}
