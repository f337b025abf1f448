//! Per-driver hook thunks: for a hooked routine, one tiny assembly entry point per driver
//! id (1..=[`MAX_DRIVERS`]) and a read-only table of their addresses.
//!
//! Driver `n`'s interception plan patches its import slots with thunks `n`
//! (`hooks::hooks_for`), so a call that reaches a thunk came through that driver's slot
//! (or a pointer `MmGetSystemRoutineAddress` handed it) and the engine can blame the
//! driver even when the return address lies elsewhere — after a tail call (`jmp [IAT]`),
//! in KMDF or the I/O manager ([`Caller::through`](crate::platform::Caller::through)).
//!
//! A thunk copies the caller's return address (`[rsp]` on x64, `x30` on ARM64, exact at
//! entry) into a free argument register, puts its id in another one, and jumps to the
//! routine's body, which takes the routine's arguments plus those two. No stack use, no
//! prologue, every IRQL; the jump leaves the stack as the caller made it, so the body
//! returns straight to the driver, and the Win64 home area every caller allocates covers
//! the extra register arguments. When the routine leaves no second free register, the id
//! goes into the upper half of the register of one of its 32-bit arguments, whose upper
//! bits the ABIs leave undefined; the body takes that register as a `u64` and splits it.
//!
//! Nothing is generated at run time (HVCI allows no new kernel code): the thunks are
//! `global_asm!`, 16 or 32 bytes each.

use crate::drivers::{DriverId, MAX_DRIVERS};
use crate::platform::Caller;

/// The driver ids the thunk tables cover, as the assembler's `.irp` list (one thunk per
/// id, 1..=MAX_DRIVERS; checked against `MAX_DRIVERS` below).
macro_rules! thunk_ids {
    () => {
        "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,\
         33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,\
         61,62,63,64"
    };
}
pub(crate) use thunk_ids;
const _: () = assert!(
    MAX_DRIVERS == 64,
    "thunk_ids! lists one thunk per driver id"
);

/// The assembly of one routine's thunks: `$label` followed by the id, each `$code`
/// (which jumps to `{body}`), then the read-only table `$table` of their addresses
/// (MAX_DRIVERS pointer-sized words, id 1 first, relocated by the loader).
macro_rules! thunk_table_asm {
    ($table:expr, $label:literal, $($code:literal),+) => {
        concat!(
            ".text\n",
            ".irp id, ", $crate::platform::windows::thunks::thunk_ids!(), "\n",
            ".p2align 4\n",
            $label, "\\id:\n",
            $($code, "\n",)+
            ".endr\n",
            ".section .rdata,\"dr\"\n",
            ".p2align 3\n",
            ".globl ", $table, "\n",
            $table, ":\n",
            ".irp id, ", $crate::platform::windows::thunks::thunk_ids!(), "\n",
            ".quad ", $label, "\\id\n",
            ".endr\n",
            ".text\n",
        )
    };
}
pub(crate) use thunk_table_asm;

/// Defines the thunks of one routine for both architectures, the extern table `$table`
/// and `fn $get() -> &'static [usize; MAX_DRIVERS]` reading it. `$x64` / `$arm` are the
/// instructions before the jump to `$body`, with `\id` for the thunk's id.
macro_rules! thunks {
    (
        $(#[$doc:meta])*
        static $table:ident, fn $get:ident, $label:literal,
        x64: [$($x64:literal),+ $(,)?],
        arm: [$($arm:literal),+ $(,)?],
        $body:path
    ) => {
        #[cfg(target_arch = "x86_64")]
        core::arch::global_asm!(
            $crate::platform::windows::thunks::thunk_table_asm!(
                stringify!($table), $label, $($x64,)+ "jmp {body}"
            ),
            body = sym $body,
        );
        #[cfg(target_arch = "aarch64")]
        core::arch::global_asm!(
            $crate::platform::windows::thunks::thunk_table_asm!(
                stringify!($table), $label, $($arm,)+ "b {body}"
            ),
            body = sym $body,
        );
        unsafe extern "C" {
            /// The thunks' addresses, id 1 first (defined by the `global_asm!` above).
            static $table: [usize; $crate::drivers::MAX_DRIVERS];
        }
        $(#[$doc])*
        fn $get() -> &'static [usize; $crate::drivers::MAX_DRIVERS] {
            // SAFETY: the table is defined by the `global_asm!` above as MAX_DRIVERS
            // pointer-sized words in a read-only section, filled by the loader's
            // relocations before any code of this image runs and never written after.
            unsafe { &$table }
        }
    };
}
pub(crate) use thunks;

/// Driver `id`'s thunk in `table` (`None` for an id without one: 0 or past the last).
pub fn thunk_of(table: &[usize; MAX_DRIVERS], id: DriverId) -> Option<usize> {
    usize::from(id.0)
        .checked_sub(1)
        .and_then(|i| table.get(i))
        .copied()
}

/// The driver a thunk named in its register argument.
pub fn importer(id: u64) -> DriverId {
    DriverId(u16::try_from(id).unwrap_or(0))
}

/// The caller of a hook body: driver `id` (its thunk's register argument), returning to
/// `return_address`.
pub fn caller(id: u64, return_address: usize) -> Caller {
    Caller::through(importer(id), return_address as u64)
}
