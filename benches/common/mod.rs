//! The benchmark platform shared by the benches: iosv's one fake platform in its cheapest
//! shape, [`BenchPlatform`] (a per-thread counter for time, a per-thread address pool for
//! Mm, nothing shared or recorded), so figures are the engine's own.

use iosv::platform::fake::thread_number;
pub use iosv::platform::fake::BenchPlatform;

/// Image base of the benchmark's target driver.
pub const IMAGE: u64 = 0xFFFF_F806_1000_0000;

/// Physical page `i % 64` of this thread's own 16 MiB window: each thread plays a
/// different device's BAR, as concurrent drivers do.
pub fn thread_phys(i: u64) -> u64 {
    let t = u64::from(thread_number());
    0xF000_0000 + (t << 24) + ((i & 63) << 12)
}
