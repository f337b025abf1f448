//! The kernel stack: `__chkstk` (the compiler's stack probe), `KeExpandKernelStackAndCallout`
//! and `RtlCaptureStackBackTrace`.
//!
//! Driver code runs on the stack of the runner's thread (8 MiB for the main thread and
//! the control-code thread), larger than any kernel stack, so an expansion is a plain
//! call.

use super::kernel::{Status, STATUS_SUCCESS};
use std::sync::atomic::{AtomicU64, Ordering};

// `__chkstk`: called by functions whose frame is 4 KiB or more, with the frame size in
// RAX, before they `sub rsp, rax`. It touches every page from the caller's stack pointer
// down to `rsp - RAX`, in order, so that a guard page is met one page at a time. Its ABI
// is special: it may change only R10, R11 and the flags (RAX must survive: the caller
// subtracts it next). Here the pages are already mapped (a Linux thread stack), so the
// probes only read.
core::arch::global_asm!(
    ".pushsection .text.iosv_runner_chkstk,\"ax\",@progbits",
    ".p2align 4",
    ".globl iosv_runner_chkstk",
    "iosv_runner_chkstk:",
    // Counted (memory and flags only).
    "lock inc qword ptr [rip + {calls}]",
    // r10 = the caller's stack pointer (above our return address), r11 = lowest address.
    "lea r10, [rsp + 8]",
    "mov r11, r10",
    "sub r11, rax",
    "jb 3f",
    "2:",
    "sub r10, 0x1000",
    "cmp r10, r11",
    "jb 3f",
    "test qword ptr [r10], r10",
    "jmp 2b",
    "3:",
    "ret",
    ".popsection",
    calls = sym CHKSTK_CALLS,
);

/// Calls of `__chkstk` so far (all threads).
static CHKSTK_CALLS: AtomicU64 = AtomicU64::new(0);

/// How many times driver code called `__chkstk`.
#[must_use]
pub fn chkstk_calls() -> u64 {
    CHKSTK_CALLS.load(Ordering::Relaxed)
}

unsafe extern "win64" {
    /// `__chkstk` (special ABI, above): the address bound to `__chkstk` imports.
    pub fn iosv_runner_chkstk();
}

type Callout = extern "win64" fn(usize);

/// `MAXIMUM_EXPANSION_SIZE` on x64 (ntddk.h: `KERNEL_LARGE_STACK_SIZE` 0x12000 less half
/// a page): the most `KeExpandKernelStackAndCallout` may be asked for.
const MAXIMUM_EXPANSION_SIZE: usize = 0x12000 - 0x800;

/// `STATUS_INVALID_PARAMETER_3`.
const STATUS_INVALID_PARAMETER_3: Status = 0xC000_00F1_u32 as i32;

/// `KeExpandKernelStackAndCallout(Callout, Parameter, Size)`: calls `Callout(Parameter)`
/// on the current stack (large enough for any `Size` a kernel allows). A `Size` past
/// [`MAXIMUM_EXPANSION_SIZE`], which the DDI page forbids, fails with
/// `STATUS_INVALID_PARAMETER_3` and the callout is not called, as the Windows kernel
/// does (the Windows Research Kernel's `KeExpandKernelStackAndCalloutEx`).
pub extern "win64" fn ke_expand_kernel_stack_and_callout(
    callout: usize,
    parameter: usize,
    size: usize,
) -> Status {
    if size > MAXIMUM_EXPANSION_SIZE {
        return STATUS_INVALID_PARAMETER_3;
    }
    // SAFETY: the DDI gives the callout this signature (EXPAND_STACK_CALLOUT).
    let f = unsafe { std::mem::transmute::<usize, Callout>(callout) };
    f(parameter);
    STATUS_SUCCESS
}

// `RtlCaptureStackBackTrace(FramesToSkip, FramesToCapture, BackTrace, BackTraceHash)`:
// the caller's nonvolatile registers and stack pointer are still as they were at the
// call; the trampoline saves them (RSP at entry, RBX, RBP, RSI, RDI, R12–R15) and passes
// their address as a fifth argument to `capture_body`.
core::arch::global_asm!(
    ".pushsection .text.iosv_runner_capture,\"ax\",@progbits",
    ".p2align 4",
    ".globl iosv_runner_capture_stack_back_trace",
    "iosv_runner_capture_stack_back_trace:",
    "sub rsp, 0x78",
    "lea rax, [rsp + 0x78]",
    "mov [rsp + 0x28], rax",
    "mov [rsp + 0x30], rbx",
    "mov [rsp + 0x38], rbp",
    "mov [rsp + 0x40], rsi",
    "mov [rsp + 0x48], rdi",
    "mov [rsp + 0x50], r12",
    "mov [rsp + 0x58], r13",
    "mov [rsp + 0x60], r14",
    "mov [rsp + 0x68], r15",
    "lea rax, [rsp + 0x28]",
    "mov [rsp + 0x20], rax",
    "call {body}",
    "add rsp, 0x78",
    "ret",
    ".popsection",
    body = sym capture_body,
);

unsafe extern "win64" {
    /// `RtlCaptureStackBackTrace` (trampoline above).
    pub fn iosv_runner_capture_stack_back_trace();
}

/// The body of `RtlCaptureStackBackTrace`: frame 0 is the return address of the call
/// (in the routine that called it), each further frame the return address one frame up,
/// found with the x64 unwinder over the images' unwind data ([`super::seh`]); the walk
/// stops at the first address outside a driver image (the runner's own frames). Writes
/// at most `capture` frames after skipping `skip`; returns how many it wrote. The hash,
/// if asked, is the sum of the frames written (the DDI leaves its computation open).
extern "win64" fn capture_body(
    skip: u32,
    capture: u32,
    trace: usize,
    hash: usize,
    saved: *const [u64; 9],
) -> u16 {
    // SAFETY: the trampoline passes the 9 words it stored on its own frame, live for this
    // call.
    let saved = unsafe { *saved };
    let [entry_rsp, rbx, rbp, rsi, rdi, r12, r13, r14, r15] = saved;
    // SAFETY: `entry_rsp` is the stack pointer at the call: it holds the return address.
    let rip = unsafe { *(entry_rsp as *const u64) };
    let mut ctx = super::seh::Context {
        rip,
        regs: [
            0,
            0,
            0,
            rbx,
            entry_rsp.wrapping_add(8),
            rbp,
            rsi,
            rdi,
            0,
            0,
            0,
            0,
            r12,
            r13,
            r14,
            r15,
        ],
        ..super::seh::Context::default()
    };
    let wanted = skip.saturating_add(capture).min(256) as usize;
    let mut frames = Vec::with_capacity(wanted);
    while frames.len() < wanted && super::trap::image_of(ctx.rip as usize).is_some() {
        frames.push(ctx.rip);
        if super::seh::unwind_to_caller(&mut ctx, entry_rsp).is_none() {
            break;
        }
    }
    let out: Vec<u64> = frames.into_iter().skip(skip as usize).collect();
    for (k, f) in out.iter().enumerate() {
        // SAFETY: `BackTrace` holds `FramesToCapture` pointers (DDI); k < capture.
        unsafe { super::Obj::new(trace + 8 * k, 8) }.set::<u64>(0, *f);
    }
    if hash != 0 {
        let sum = out.iter().fold(0u32, |h, f| h.wrapping_add(*f as u32));
        // SAFETY: the caller's optional ULONG out parameter (DDI).
        unsafe { super::Obj::new(hash, 4) }.set::<u32>(0, sum);
    }
    u16::try_from(out.len()).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls `__chkstk` through its ABI with RAX = `size` and checks that RAX and the
    /// callee-saved and argument registers it must not touch are unchanged.
    fn probe(size: u64) -> (u64, u64, u64) {
        let (rax, rcx, rdx): (u64, u64, u64);
        // SAFETY: calls the probe with its documented register interface, below the red
        // zone; it only reads the stack below rsp within `size` (at most 64 KiB, inside
        // the test thread's 2 MiB stack); R10, R11 and the flags are declared clobbered.
        unsafe {
            core::arch::asm!(
                // Past the red zone the compiler may use below rsp.
                "sub rsp, 128",
                "call {f}",
                "add rsp, 128",
                f = sym iosv_runner_chkstk,
                inout("rax") size => rax,
                inout("rcx") 0x1111u64 => rcx,
                inout("rdx") 0x2222u64 => rdx,
                out("r10") _,
                out("r11") _,
            );
        }
        (rax, rcx, rdx)
    }

    static CALLED: AtomicU64 = AtomicU64::new(0);

    extern "win64" fn count(parameter: usize) {
        CALLED.fetch_add(parameter as u64, Ordering::Relaxed);
    }

    /// Up to MAXIMUM_EXPANSION_SIZE the callout runs; past it the call fails with
    /// STATUS_INVALID_PARAMETER_3 and the callout does not run.
    #[test]
    fn stack_expansion_refuses_more_than_the_maximum() {
        let f = count as extern "win64" fn(usize) as usize;
        assert_eq!(
            ke_expand_kernel_stack_and_callout(f, 1, MAXIMUM_EXPANSION_SIZE),
            STATUS_SUCCESS
        );
        assert_eq!(
            ke_expand_kernel_stack_and_callout(f, 2, MAXIMUM_EXPANSION_SIZE + 1),
            STATUS_INVALID_PARAMETER_3
        );
        assert_eq!(CALLED.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn chkstk_keeps_rax_and_the_other_registers() {
        for size in [0u64, 8, 0xFFF, 0x1000, 0x1001, 0x8000, 0x10000] {
            assert_eq!(probe(size), (size, 0x1111, 0x2222), "size {size:#x}");
        }
    }
}
