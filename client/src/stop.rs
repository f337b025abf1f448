//! Ctrl-C and SIGTERM: they set [`STOP`], which follow loops and the host endpoint poll to
//! end cleanly.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C (and SIGTERM): follow loops and the host endpoint stop.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C or SIGTERM was received.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Installs the Ctrl-C / SIGTERM handler that sets [`STOP`] (once per process).
pub fn install_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Failing to install it only means Ctrl-C kills the process the default way.
        let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    });
}
