//! The kernel stack: `__chkstk` (the compiler's stack probe), `KeExpandKernelStackAndCallout`
//! and `RtlCaptureStackBackTrace`.
//!
//! Driver code runs on the stack of the runner's thread (8 MiB for the main thread and
//! the control-code thread), larger than any kernel stack, so an expansion is a plain
//! call.

use super::kernel::{Status, STATUS_SUCCESS};

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
);

unsafe extern "win64" {
    /// `__chkstk` (special ABI, above): the address bound to `__chkstk` imports.
    pub fn iosv_runner_chkstk();
}

type Callout = extern "win64" fn(usize);

/// `KeExpandKernelStackAndCallout(Callout, Parameter, Size)`: calls `Callout(Parameter)`
/// on the current stack (large enough for any `Size` a kernel allows).
pub extern "win64" fn ke_expand_kernel_stack_and_callout(
    callout: usize,
    parameter: usize,
    _size: usize,
) -> Status {
    // SAFETY: the DDI gives the callout this signature (EXPAND_STACK_CALLOUT).
    let f = unsafe { std::mem::transmute::<usize, Callout>(callout) };
    f(parameter);
    STATUS_SUCCESS
}

/// `RtlCaptureStackBackTrace(FramesToSkip, FramesToCapture, BackTrace, BackTraceHash)`:
/// captures no frame (returns 0; the hash, if asked, is 0). The runner has no stack
/// walker for frames without unwind data; callers treat 0 frames as "unknown caller".
pub extern "win64" fn rtl_capture_stack_back_trace(
    _skip: u32,
    _capture: u32,
    _trace: usize,
    hash: usize,
) -> u16 {
    if hash != 0 {
        // SAFETY: the caller's optional ULONG out parameter (DDI).
        unsafe { super::Obj::new(hash, 4) }.set::<u32>(0, 0);
    }
    0
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

    #[test]
    fn chkstk_keeps_rax_and_the_other_registers() {
        for size in [0u64, 8, 0xFFF, 0x1000, 0x1001, 0x8000, 0x10000] {
            assert_eq!(probe(size), (size, 0x1111, 0x2222), "size {size:#x}");
        }
    }
}
