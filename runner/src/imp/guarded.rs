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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_mutex_excludes_another_thread() {
        let m = Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0)));
        let addr = m as *const _ as usize;
        ke_initialize_guarded_mutex(addr);
        ke_acquire_guarded_mutex(addr);
        let t = std::thread::spawn(move || {
            ke_acquire_guarded_mutex(addr);
            ke_release_guarded_mutex(addr);
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!t.is_finished(), "the second owner waits");
        ke_release_guarded_mutex(addr);
        t.join().unwrap();
        assert_eq!(count(addr).load(Ordering::SeqCst), 1);
    }
}
