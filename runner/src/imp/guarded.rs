//! Guarded mutexes (`KGUARDED_MUTEX`): `KeInitializeGuardedMutex`,
//! `KeAcquireGuardedMutex`, `KeReleaseGuardedMutex`. The `Count` field (offset 0) is 1
//! when free and 0 when owned, as the DDK header's layout has it; an owner waiting for it
//! yields. Special kernel APCs, which the real routine disables, do not exist here.

use super::kernel::atomic_at;
use std::sync::atomic::{AtomicI32, Ordering};

fn count(mutex: usize) -> &'static AtomicI32 {
    atomic_at(mutex, 0, "KGUARDED_MUTEX")
}

/// `KeInitializeGuardedMutex(Mutex)`.
pub extern "win64" fn ke_initialize_guarded_mutex(mutex: usize) {
    count(mutex).store(1, Ordering::SeqCst);
}

/// `KeAcquireGuardedMutex(Mutex)`.
pub extern "win64" fn ke_acquire_guarded_mutex(mutex: usize) {
    let c = count(mutex);
    while c
        .compare_exchange(1, 0, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
}

/// `KeReleaseGuardedMutex(Mutex)`.
pub extern "win64" fn ke_release_guarded_mutex(mutex: usize) {
    count(mutex).store(1, Ordering::Release);
}
