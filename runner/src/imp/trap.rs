//! Fault handling for driver code: the fake KPCR behind GS, emulation of what the DDK
//! headers inline and user mode cannot execute, and crash reports.
//!
//! A SIGSEGV/SIGILL/SIGBUS/SIGFPE/SIGTRAP whose RIP lies inside a loaded driver image is
//! decoded with `iced-x86`; these are emulated and RIP advanced:
//!
//! - `mov reg, cr8` / `mov cr8, reg` (KeGetCurrentIrql, KeRaiseIrql, KeLowerIrql): the
//!   host's per-thread IRQL;
//! - `cli`, `sti`: no effect (there are no interrupts to mask);
//! - `rdmsr`: reads 0; `wrmsr`: ignored;
//! - `mov`/`movzx`/`movsx` with a memory operand in a live I/O-space mapping (device
//!   memory, [`super::mmio`]) or in KUSER_SHARED_DATA (loads only).
//!
//! Anything else — or any fault outside the images — ends the child with a `crash` line
//! (signal, faulting address, RIP, the driver routine running) and exit status 5; the
//! parent turns it into the report.

use super::{current, mmio, report, seh};
use core::fmt::Write as _;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind, Register};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reads `buf.len()` bytes of this process's memory at `address` through the kernel
/// (`process_vm_readv` on this process), which checks the address: an unmapped or
/// unreadable one is `false`, never a fault — for reads of what the driver hands in or
/// left behind (buffers, its stack, an MDL's pages), where a fault in host code, or a
/// second one in the fault handler, would end the child without a report. One system
/// call, no allocation: safe in the signal handler. `true` only when every byte was read
/// (a read that crosses into an unreadable page is `false`).
pub fn read_own(address: u64, buf: &mut [u8]) -> bool {
    if buf.is_empty() {
        return true;
    }
    let Ok(at) = usize::try_from(address) else {
        return false;
    };
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: at as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // SAFETY: `local` describes `buf`, live and writable for the call; `remote` is only
    // read, by the kernel, which checks it (EFAULT when unmapped); no Rust reference to
    // it exists.
    let n = unsafe { libc::process_vm_readv(me, &local, 1, &remote, 1, 0) };
    usize::try_from(n).ok() == Some(buf.len())
}

/// Exit status of the child after a crash report.
pub const CRASH_STATUS: i32 = 5;
/// Exit status of the child after an unimplemented-routine report.
pub const UNIMPLEMENTED_STATUS: i32 = 6;

const MAX_IMAGES: usize = 8;
static IMAGES: [(AtomicUsize, AtomicUsize); MAX_IMAGES] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; MAX_IMAGES];

/// Registers `[base, base + size)` as driver code: faults there are emulated.
pub fn add_image(base: usize, size: usize) {
    for (b, s) in &IMAGES {
        if b.load(Ordering::Acquire) == 0 {
            s.store(size, Ordering::Release);
            b.store(base, Ordering::Release);
            return;
        }
    }
}

/// The `(base, size)` of the driver image holding `address`.
#[must_use]
pub fn image_of(address: usize) -> Option<(usize, usize)> {
    IMAGES.iter().find_map(|(b, s)| {
        let (base, size) = (b.load(Ordering::Acquire), s.load(Ordering::Acquire));
        (base != 0 && address >= base && address - base < size).then_some((base, size))
    })
}

/// KPCR bytes: `Self` at 0x18, `CurrentPrcb` at 0x20, `Irql` at 0x50, the PRCB at 0x180
/// with `CurrentThread` at 0x188 and `Number` at 0x1A4.
const KPCR_SIZE: usize = 0x8000;
const KTHREAD_SIZE: usize = 0x1000;

/// Gives the calling thread a fake KPCR behind GS (`gs:[0x188]` is a zeroed KTHREAD) and
/// an alternate signal stack, so that driver code can read `gs:` and faults are handled
/// even on a blown stack. Leaks both (one per thread that runs driver code).
///
/// # Errors
/// When `arch_prctl` or `sigaltstack` fails.
pub fn prepare_thread(processor: u32) -> std::io::Result<()> {
    let kpcr = Box::leak(vec![0u8; KPCR_SIZE].into_boxed_slice());
    let kthread = Box::leak(vec![0u8; KTHREAD_SIZE].into_boxed_slice());
    let base = kpcr.as_mut_ptr() as usize;
    // SAFETY: kpcr is a leaked, exclusively owned KPCR_SIZE buffer; Obj never holds a
    // reference into it.
    let pcr = unsafe { super::Obj::new(base, KPCR_SIZE) };
    pcr.set(0x18, base as u64);
    pcr.set(0x20, (base + 0x180) as u64);
    pcr.set(0x188, kthread.as_mut_ptr() as u64);
    pcr.set(0x1A4, processor);
    // SAFETY: ARCH_SET_GS sets this thread's GS base; neither Rust nor glibc use GS on
    // x86-64 Linux (TLS is FS), so only driver code reads through it.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1001, base) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stack = Box::leak(vec![0u8; 256 * 1024].into_boxed_slice());
    let ss = libc::stack_t {
        ss_sp: stack.as_mut_ptr().cast(),
        ss_flags: 0,
        ss_size: stack.len(),
    };
    // SAFETY: `ss` describes a leaked buffer that outlives the thread.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Installs the fault handler for the process.
///
/// # Errors
/// When `sigaction` fails.
pub fn install() -> std::io::Result<()> {
    for sig in [
        libc::SIGSEGV,
        libc::SIGILL,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGTRAP,
    ] {
        // SAFETY: a zeroed sigaction is a valid starting value; fields are set below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_fault as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: a valid sigaction for a synchronous fault signal. The handler is
        // async-signal-safe with respect to the code it interrupts: it allocates nothing
        // and takes no blocking lock (image table: atomics; IRQL and the routine entered:
        // const-initialised thread-locals; device memory: `try_lock`, failing instead of
        // waiting; reports: `write(2)` of a fixed buffer, then `_exit`). It runs on the
        // thread's alternate stack (prepare_thread, 256 KiB) when there is one. The
        // signal is blocked while it runs (no SA_NODEFER): a fault of the same kind
        // inside it — e.g. in a driver's `__except` filter it calls — makes the kernel
        // end the child, which the parent reports as killed by that signal. Filters and
        // `__finally` blocks it calls are driver code: see seh::dispatch.
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers; this handler
    // is the only code using it until it returns.
    let gregs = unsafe { &mut (*uc).uc_mcontext.gregs };
    let rip = reg_at(gregs, libc::REG_RIP) as usize;
    if sig == libc::SIGSEGV {
        // A call through a kernel-space alias of a host routine: resume at the routine.
        if let Some(routine) = super::kaddr::target_of(rip) {
            set_reg_at(gregs, libc::REG_RIP, routine as u64);
            return;
        }
    }
    let mut why = "";
    if let Some((base, size)) = image_of(rip) {
        // Only the faults an emulated instruction raises (#GP, #UD, a device-memory or
        // KUSER_SHARED_DATA access) are emulated. After SIGTRAP (int3) RIP already points
        // past the instruction, and SIGFPE is a divide error: emulating the instruction
        // at RIP would execute the wrong one.
        if matches!(sig, libc::SIGSEGV | libc::SIGILL | libc::SIGBUS) {
            match emulate(gregs, rip, base + size) {
                Ok(()) => return,
                Err(reason) => why = reason,
            }
        }
        // SAFETY: for SA_SIGINFO handlers the kernel's ucontext_t is valid.
        let fp_ptr = unsafe { (*uc).uc_mcontext.fpregs };
        // SAFETY: `fpregs` points to the interrupted thread's saved FPU/SSE state in the
        // signal frame (or is null: as_mut gives None), aligned and live until the handler
        // returns, and only this handler uses it (no other reference exists).
        let fpregs = unsafe { fp_ptr.as_mut() };
        if raise(gregs, fpregs, sig) {
            return;
        }
    }
    // SAFETY: `info` is valid for SA_SIGINFO handlers.
    let info = unsafe { &*info };
    // SAFETY: si_addr reads the fault address field of a fault signal's siginfo.
    let addr = unsafe { info.si_addr() } as usize;
    crash(sig, addr, rip, why);
}

/// Dispatches the fault as an exception to the driver's `__try`/`__except` blocks;
/// true when one handled it (and `gregs` now resume there).
fn raise(
    gregs: &mut [libc::greg_t; 23],
    fpregs: Option<&mut libc::_libc_fpstate>,
    sig: libc::c_int,
) -> bool {
    let code = match sig {
        libc::SIGILL => seh::ILLEGAL_INSTRUCTION,
        libc::SIGFPE => seh::INTEGER_DIVIDE_BY_ZERO,
        libc::SIGTRAP => seh::BREAKPOINT,
        _ => seh::ACCESS_VIOLATION,
    };
    let order = [
        libc::REG_RAX,
        libc::REG_RCX,
        libc::REG_RDX,
        libc::REG_RBX,
        libc::REG_RSP,
        libc::REG_RBP,
        libc::REG_RSI,
        libc::REG_RDI,
        libc::REG_R8,
        libc::REG_R9,
        libc::REG_R10,
        libc::REG_R11,
        libc::REG_R12,
        libc::REG_R13,
        libc::REG_R14,
        libc::REG_R15,
    ];
    let mut ctx = seh::Context {
        regs: [0; 16],
        rip: reg_at(gregs, libc::REG_RIP),
        xmm: [0; 16],
    };
    if let Some(fp) = fpregs.as_deref() {
        for (slot, reg) in ctx.xmm.iter_mut().zip(&fp._xmm) {
            *slot = reg
                .element
                .iter()
                .rev()
                .fold(0u128, |v, &e| (v << 32) | u128::from(e));
        }
    }
    for (slot, &index) in ctx.regs.iter_mut().zip(&order) {
        *slot = reg_at(gregs, index);
    }
    let marker = super::kernel::c_specific_handler_address() as u64;
    match seh::dispatch(&ctx, code, marker) {
        Some(seh::Resume::Retry) => true,
        Some(seh::Resume::Handler(to)) => {
            // Nonvolatile registers, RSP, RIP of the target frame; RAX = the code.
            for k in [0usize, 3, 4, 5, 6, 7, 12, 13, 14, 15] {
                if let (Some(&index), Some(&v)) = (order.get(k), to.regs.get(k)) {
                    set_reg_at(gregs, index, v);
                }
            }
            set_reg_at(gregs, libc::REG_RIP, to.rip);
            // XMM6–XMM15 of the target frame, as the unwinder restored them.
            if let Some(fp) = fpregs {
                for (reg, &v) in fp._xmm.iter_mut().zip(&to.xmm).skip(6) {
                    for (k, e) in reg.element.iter_mut().enumerate() {
                        *e = (v >> (32 * k)) as u32;
                    }
                }
            }
            true
        }
        None => false,
    }
}

/// Reports a crash and ends the child.
fn crash(sig: libc::c_int, addr: usize, rip: usize, why: &str) -> ! {
    let mut b = report::Buf::new();
    let name = match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGILL => "SIGILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    };
    let _ = write!(b, "signal={name} address={addr:#x} rip={rip:#x}");
    match current() {
        Some(e) => {
            let _ = write!(b, " routine={} entry={:#x}", e.name, e.entry);
        }
        None => {
            let _ = write!(b, " routine=-");
        }
    }
    if !why.is_empty() {
        let _ = write!(b, " why={why}");
    }
    report::line(&["crash ", b.as_str()]);
    // SAFETY: _exit is async-signal-safe and ends the process without running anything.
    unsafe { libc::_exit(CRASH_STATUS) }
}

/// Reports a crash of the driver detected outside a fault (a bug check) and ends the
/// child.
pub fn bugcheck(text: &str) -> ! {
    report::line(&["crash bugcheck ", text]);
    // SAFETY: ends the process without unwinding.
    unsafe { libc::_exit(CRASH_STATUS) }
}

fn reg_at(gregs: &[libc::greg_t; 23], index: libc::c_int) -> u64 {
    usize::try_from(index)
        .ok()
        .and_then(|i| gregs.get(i))
        .map_or(0, |&v| v as u64)
}

fn set_reg_at(gregs: &mut [libc::greg_t; 23], index: libc::c_int, value: u64) {
    if let Some(slot) = usize::try_from(index).ok().and_then(|i| gregs.get_mut(i)) {
        *slot = value as libc::greg_t;
    }
}

fn greg_index(full: Register) -> Option<libc::c_int> {
    Some(match full {
        Register::RAX => libc::REG_RAX,
        Register::RCX => libc::REG_RCX,
        Register::RDX => libc::REG_RDX,
        Register::RBX => libc::REG_RBX,
        Register::RSP => libc::REG_RSP,
        Register::RBP => libc::REG_RBP,
        Register::RSI => libc::REG_RSI,
        Register::RDI => libc::REG_RDI,
        Register::R8 => libc::REG_R8,
        Register::R9 => libc::REG_R9,
        Register::R10 => libc::REG_R10,
        Register::R11 => libc::REG_R11,
        Register::R12 => libc::REG_R12,
        Register::R13 => libc::REG_R13,
        Register::R14 => libc::REG_R14,
        Register::R15 => libc::REG_R15,
        Register::RIP => libc::REG_RIP,
        _ => return None,
    })
}

fn is_high_byte(r: Register) -> bool {
    matches!(r, Register::AH | Register::CH | Register::DH | Register::BH)
}

/// Reads general register `r` at its own width.
fn get(gregs: &[libc::greg_t; 23], r: Register) -> Option<u64> {
    let full = greg_index(r.full_register())?;
    let v = reg_at(gregs, full);
    Some(match r.size() {
        1 if is_high_byte(r) => (v >> 8) & 0xFF,
        1 => v & 0xFF,
        2 => v & 0xFFFF,
        4 => v & 0xFFFF_FFFF,
        _ => v,
    })
}

/// Writes general register `r` at its own width (32-bit writes zero the top half).
fn put(gregs: &mut [libc::greg_t; 23], r: Register, value: u64) -> Option<()> {
    let full = greg_index(r.full_register())?;
    let old = reg_at(gregs, full);
    let new = match r.size() {
        1 if is_high_byte(r) => (old & !0xFF00) | ((value & 0xFF) << 8),
        1 => (old & !0xFF) | (value & 0xFF),
        2 => (old & !0xFFFF) | (value & 0xFFFF),
        4 => value & 0xFFFF_FFFF,
        _ => value,
    };
    set_reg_at(gregs, full, new);
    Some(())
}

/// The effective address of `ins`'s memory operand (no segment base: GS and FS
/// accesses do not fault here).
fn effective_address(gregs: &[libc::greg_t; 23], ins: &Instruction) -> Option<u64> {
    if ins.is_ip_rel_memory_operand() {
        return Some(ins.ip_rel_memory_address());
    }
    let mut ea = ins.memory_displacement64();
    if ins.memory_base() != Register::None {
        ea = ea.wrapping_add(get(gregs, ins.memory_base())?);
    }
    if ins.memory_index() != Register::None {
        let scale = u64::from(ins.memory_index_scale());
        ea = ea.wrapping_add(get(gregs, ins.memory_index())?.wrapping_mul(scale));
    }
    if matches!(ins.segment_prefix(), Register::FS | Register::GS) {
        return None;
    }
    Some(ea)
}

fn sign_extend(value: u64, bytes: usize) -> u64 {
    match bytes {
        1 => value as u8 as i8 as i64 as u64,
        2 => value as u16 as i16 as i64 as u64,
        4 => value as u32 as i32 as i64 as u64,
        _ => value,
    }
}

/// Emulates the instruction at `rip` (which lies in an image ending at `end`).
fn emulate(gregs: &mut [libc::greg_t; 23], rip: usize, end: usize) -> Result<(), &'static str> {
    let len = (end - rip).min(15);
    // SAFETY: [rip, rip + len) lies inside the driver image (checked by the caller),
    // which is mapped readable for the life of the process.
    let bytes = unsafe { std::slice::from_raw_parts(rip as *const u8, len) };
    let mut decoder = Decoder::with_ip(64, bytes, rip as u64, DecoderOptions::NONE);
    let ins = decoder.decode();
    if ins.is_invalid() {
        return Err("undecodable-instruction");
    }
    let engine = super::kernel::engine();
    match ins.code() {
        Code::Mov_r64_cr if ins.op1_register() == Register::CR8 => {
            let irql = engine.map_or(0, |e| e.irql());
            put(gregs, ins.op0_register(), u64::from(irql)).ok_or("bad-register")?;
        }
        Code::Mov_cr_r64 if ins.op0_register() == Register::CR8 => {
            let v = get(gregs, ins.op1_register()).ok_or("bad-register")?;
            if let Some(e) = engine {
                e.set_irql((v & 0xF) as u8);
            }
        }
        Code::Cli | Code::Sti | Code::Wrmsr | Code::Wbinvd | Code::Invlpg_m => {}
        Code::Rdmsr => {
            set_reg_at(gregs, libc::REG_RAX, 0);
            set_reg_at(gregs, libc::REG_RDX, 0);
        }
        // I/O ports (READ_PORT_* / WRITE_PORT_*): no device answers; reads float high.
        Code::In_AL_imm8 | Code::In_AL_DX => {
            put(gregs, Register::AL, 0xFF).ok_or("bad-register")?;
        }
        Code::In_AX_imm8 | Code::In_AX_DX => {
            put(gregs, Register::AX, 0xFFFF).ok_or("bad-register")?;
        }
        Code::In_EAX_imm8 | Code::In_EAX_DX => {
            put(gregs, Register::EAX, 0xFFFF_FFFF).ok_or("bad-register")?;
        }
        Code::Out_imm8_AL
        | Code::Out_imm8_AX
        | Code::Out_imm8_EAX
        | Code::Out_DX_AL
        | Code::Out_DX_AX
        | Code::Out_DX_EAX => {}
        _ => emulate_memory(gregs, &ins)?,
    }
    set_reg_at(gregs, libc::REG_RIP, ins.next_ip());
    Ok(())
}

/// The zero flag in RFLAGS.
const ZF: u64 = 1 << 6;

fn emulate_memory(gregs: &mut [libc::greg_t; 23], ins: &Instruction) -> Result<(), &'static str> {
    let memory_op = (0..ins.op_count()).find(|&i| ins.op_kind(i) == OpKind::Memory);
    let Some(memory_op) = memory_op else {
        return Err("privileged-instruction");
    };
    let ea = effective_address(gregs, ins).ok_or("unsupported-address")?;
    let size = ins.memory_size().size();
    let miss = |m: mmio::Miss| match m {
        mmio::Miss::Unmapped => "address-not-mapped",
        mmio::Miss::ReadOnly => "access-denied-by-protection",
        mmio::Miss::Unavailable => "device-memory-unavailable",
    };
    match ins.code() {
        // Loads: register <- memory.
        Code::Mov_r8_rm8
        | Code::Mov_r16_rm16
        | Code::Mov_r32_rm32
        | Code::Mov_r64_rm64
        | Code::Movzx_r16_rm8
        | Code::Movzx_r32_rm8
        | Code::Movzx_r64_rm8
        | Code::Movzx_r16_rm16
        | Code::Movzx_r32_rm16
        | Code::Movzx_r64_rm16
        | Code::Mov_AL_moffs8
        | Code::Mov_AX_moffs16
        | Code::Mov_EAX_moffs32
        | Code::Mov_RAX_moffs64
            if memory_op == 1 =>
        {
            let v = mmio::read(ea, size).map_err(miss)?;
            put(gregs, ins.op0_register(), v).ok_or("bad-register")?;
        }
        Code::Movsx_r16_rm8
        | Code::Movsx_r32_rm8
        | Code::Movsx_r64_rm8
        | Code::Movsx_r16_rm16
        | Code::Movsx_r32_rm16
        | Code::Movsx_r64_rm16
        | Code::Movsxd_r64_rm32 => {
            let v = mmio::read(ea, size).map_err(miss)?;
            put(gregs, ins.op0_register(), sign_extend(v, size)).ok_or("bad-register")?;
        }
        // Stores: memory <- register.
        Code::Mov_rm8_r8
        | Code::Mov_rm16_r16
        | Code::Mov_rm32_r32
        | Code::Mov_rm64_r64
        | Code::Mov_moffs8_AL
        | Code::Mov_moffs16_AX
        | Code::Mov_moffs32_EAX
        | Code::Mov_moffs64_RAX
            if memory_op == 0 =>
        {
            let v = get(gregs, ins.op1_register()).ok_or("bad-register")?;
            mmio::write(ea, size, v).map_err(miss)?;
        }
        // Compare-exchange (`lock cmpxchg`, what an atomic compare_exchange compiles to):
        // if memory == rAX, memory <- source and ZF = 1; else rAX <- memory and ZF = 0.
        // One thread runs driver code at a time, and the emulation runs with it stopped,
        // so read-compare-write is atomic with respect to driver code.
        Code::Cmpxchg_rm64_r64 | Code::Cmpxchg_rm32_r32 if memory_op == 0 => {
            let current = mmio::read(ea, size).map_err(miss)?;
            let acc = if size == 8 {
                Register::RAX
            } else {
                Register::EAX
            };
            let expected = get(gregs, acc).ok_or("bad-register")?;
            let mask = if size == 8 {
                u64::MAX
            } else {
                u64::from(u32::MAX)
            };
            let mut flags = reg_at(gregs, libc::REG_EFL);
            if current & mask == expected & mask {
                let v = get(gregs, ins.op1_register()).ok_or("bad-register")?;
                mmio::write(ea, size, v).map_err(miss)?;
                flags |= ZF;
            } else {
                put(gregs, acc, current).ok_or("bad-register")?;
                flags &= !ZF;
            }
            set_reg_at(gregs, libc::REG_EFL, flags);
        }
        // Stores: memory <- immediate.
        Code::Mov_rm8_imm8 | Code::Mov_rm16_imm16 | Code::Mov_rm32_imm32 | Code::Mov_rm64_imm32 => {
            mmio::write(ea, size, ins.immediate(1)).map_err(miss)?;
        }
        _ => {
            // Not emulated; say why if it touched device memory.
            return Err(match mmio::read(ea, 1) {
                Ok(_) => "instruction-not-emulated-on-device-memory",
                Err(m) => miss(m),
            });
        }
    }
    Ok(())
}
