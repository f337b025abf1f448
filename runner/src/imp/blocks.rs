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

/// Whether `p` is a live block of `kind`.
#[must_use]
pub fn is_live(kind: Kind, p: usize) -> bool {
    with(|m| m.get(&p) == Some(&kind))
}

/// Frees the live block `p` of `kind` on behalf of `routine`; anything else is a
/// bug-check report (the run ends here).
pub fn free(kind: Kind, p: usize, routine: &str) {
    // Removed only when it is a live block of this kind; otherwise what it is, if any.
    let outcome: Result<(), Option<Kind>> = with(|m| match m.get(&p).copied() {
        Some(k) if k == kind => {
            m.remove(&p);
            Ok(())
        }
        other => Err(other),
    });
    if let Err(other) = outcome {
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
    // SAFETY: `p` was a live block of this kind (allocated by calloc in `allocate`) and
    // is no longer in the table, so no later free can reach it again.
    unsafe { libc::free(p as *mut libc::c_void) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_remembered_by_kind_until_freed() {
        let p = allocate(Kind::Pool, 32);
        assert!(is_live(Kind::Pool, p));
        assert!(!is_live(Kind::Mdl, p));
        free(Kind::Pool, p, "ExFreePool");
        assert!(!is_live(Kind::Pool, p));
    }
}
