//! Structured exception handling for driver code: `__try`/`__except`/`__finally` built
//! on `__C_specific_handler`, with an x64 virtual unwinder over the image's
//! `RUNTIME_FUNCTION` table (`.pdata`) and `UNWIND_INFO` codes.
//!
//! When a fault in driver code is not emulated ([`super::trap`]), [`dispatch`] walks the
//! driver's frames from the faulting one outwards, as `RtlDispatchException` does. For a
//! frame whose language handler is `__C_specific_handler` it reads the scope table; a
//! scope covering the frame's PC with `EXCEPTION_EXECUTE_HANDLER` (or a filter that
//! returns 1) is the target. Then the `__finally` blocks of the scopes left on the way
//! run (with `AbnormalTermination` TRUE), the target frame's nonvolatile registers and
//! RSP are restored, RAX gets the exception code and execution resumes at the
//! `__except` block. Frames are walked only while the PC is inside a driver image;
//! there is no handler in the host's frames, so an exception reaching them is a crash.
//!
//! Filters and `__finally` blocks run inside the fault handler (on its alternate stack,
//! with the fault signal blocked): a fault inside a filter ends the child.
//! `EXCEPTION_CONTINUE_EXECUTION` from a filter resumes at the faulting instruction.

use super::trap;

/// `STATUS_ACCESS_VIOLATION`.
pub const ACCESS_VIOLATION: u32 = 0xC000_0005;
/// `STATUS_ILLEGAL_INSTRUCTION`.
pub const ILLEGAL_INSTRUCTION: u32 = 0xC000_001D;
/// `STATUS_INTEGER_DIVIDE_BY_ZERO`.
pub const INTEGER_DIVIDE_BY_ZERO: u32 = 0xC000_0094;
/// `STATUS_BREAKPOINT`.
pub const BREAKPOINT: u32 = 0x8000_0003;

const UNW_FLAG_EHANDLER: u8 = 1;
const UNW_FLAG_UHANDLER: u8 = 2;
const UNW_FLAG_CHAININFO: u8 = 4;
const MAX_FRAMES: usize = 64;

/// Integer registers in x64 unwind-code order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI,
/// R8–R15), and RIP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Context {
    /// The sixteen integer registers.
    pub regs: [u64; 16],
    /// The instruction pointer.
    pub rip: u64,
    /// XMM0–XMM15 (XMM6–XMM15 are nonvolatile in the x64 ABI: the unwinder restores
    /// them from `UWOP_SAVE_XMM128` slots).
    pub xmm: [u128; 16],
}

const RSP: usize = 4;

/// Reads `len` ≤ 8 bytes at `address` if it lies in a driver image.
fn image_read(address: u64, len: usize) -> Option<u64> {
    let a = usize::try_from(address).ok()?;
    let (base, size) = trap::image_of(a)?;
    if a.checked_add(len)? > base + size {
        return None;
    }
    let mut v = 0u64;
    for i in 0..len {
        // SAFETY: [a, a + len) lies inside a mapped driver image (checked above).
        let b = unsafe { ((a + i) as *const u8).read() };
        v |= u64::from(b) << (8 * i);
    }
    Some(v)
}

/// Reads a stack word. The stack belongs to the thread that faulted, but its RSP and the
/// saved values the unwinder follows are the driver's: only addresses within 1 MiB above
/// the faulting RSP are considered, and they are read with [`trap::read_own`] (a fault
/// here, in the fault handler with the signal blocked, would kill the child without a
/// report).
fn stack_read(address: u64, low: u64) -> Option<u64> {
    if address < low || address - low > (1 << 20) || !address.is_multiple_of(8) {
        return None;
    }
    let mut word = [0u8; 8];
    trap::read_own(address, &mut word).then(|| u64::from_le_bytes(word))
}

/// Reads a 16-byte XMM save slot (8-byte aligned halves, as [`stack_read`]).
fn xmm_read(address: u64, low: u64) -> Option<u128> {
    let lo = stack_read(address, low)?;
    let hi = stack_read(address.wrapping_add(8), low)?;
    Some(u128::from(lo) | (u128::from(hi) << 64))
}

/// `RUNTIME_FUNCTION` of `pc` in its image: (begin, end, unwind info), absolute.
fn runtime_function(pc: u64) -> Option<(u64, u64, u64)> {
    let (base, _) = trap::image_of(usize::try_from(pc).ok()?)?;
    let base = base as u64;
    let nt = base + image_read(base + 0x3C, 4)?;
    // Optional header at nt + 24; data directory 3 (exception) at +112 + 3 * 8.
    let count = image_read(nt + 24 + 108, 4)?;
    if count <= 3 {
        return None;
    }
    let rva = image_read(nt + 24 + 112 + 24, 4)?;
    let size = image_read(nt + 24 + 112 + 28, 4)?;
    let entries = size / 12;
    let target = pc - base;
    // The table is sorted by BeginAddress: binary search.
    let (mut lo, mut hi) = (0u64, entries);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let e = base + rva + 12 * mid;
        let begin = image_read(e, 4)?;
        let end = image_read(e + 4, 4)?;
        if target < begin {
            hi = mid;
        } else if target >= end {
            lo = mid + 1;
        } else {
            return Some((base + begin, base + end, base + image_read(e + 8, 4)?));
        }
    }
    None
}

/// What one frame's unwind info says.
struct Frame {
    /// The frame's establisher frame (what filters and handlers receive).
    establisher: u64,
    /// Absolute address of the language handler and its data, when it has one.
    handler: Option<(u64, u64)>,
}

/// Virtually unwinds `ctx` one frame, to its caller's context (driver code only: a PC
/// outside an image is taken for a leaf). Stack words below `low` are never read. `None`
/// when a word cannot be read.
pub(crate) fn unwind_to_caller(ctx: &mut Context, low: u64) -> Option<()> {
    unwind(ctx, low).map(|_| ())
}

/// Virtually unwinds one frame: `ctx` becomes the caller's context. Returns the frame's
/// establisher and handler.
fn unwind(ctx: &mut Context, low: u64) -> Option<Frame> {
    let Some((begin, _end, mut info)) = runtime_function(ctx.rip) else {
        // A leaf function: the return address is at RSP.
        let rsp = ctx.regs[RSP];
        ctx.rip = stack_read(rsp, low)?;
        ctx.regs[RSP] = rsp.wrapping_add(8);
        return Some(Frame {
            establisher: rsp,
            handler: None,
        });
    };
    let offset_in_function = ctx.rip - begin;
    let mut establisher = None;
    let mut handler = None;
    let mut first = true;
    for _ in 0..32 {
        let header = image_read(info, 4)?;
        let flags = ((header & 0xFF) >> 3) as u8;
        let prolog = (header >> 8) & 0xFF;
        let codes = (header >> 16) & 0xFF;
        let frame_reg = ((header >> 24) & 0xF) as usize;
        let frame_off = (header >> 28) & 0xF;
        let frame = if frame_reg != 0 {
            ctx.regs[frame_reg].wrapping_sub(frame_off * 16)
        } else {
            ctx.regs[RSP]
        };
        if first {
            establisher = Some(frame);
            if flags & (UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER) != 0 {
                let at = info + 4 + 2 * ((codes + 1) & !1);
                handler = Some((begin_of(info, image_read(at, 4)?)?, at + 4));
            }
        }
        let mut i = 0u64;
        while i < codes {
            let slot = image_read(info + 4 + 2 * i, 2)?;
            let code_offset = slot & 0xFF;
            let op = (slot >> 8) & 0xF;
            let op_info = ((slot >> 12) & 0xF) as usize;
            let next16 = |k: u64| image_read(info + 4 + 2 * (i + k), 2);
            // In the prolog of the faulting function, only what already ran is undone.
            let applies =
                !first || offset_in_function >= prolog || code_offset <= offset_in_function;
            let used = match op {
                0 => {
                    if applies {
                        let rsp = ctx.regs[RSP];
                        ctx.regs[op_info] = stack_read(rsp, low)?;
                        ctx.regs[RSP] = rsp.wrapping_add(8);
                    }
                    1
                }
                1 => {
                    let (size, n) = if op_info == 0 {
                        (next16(1)? * 8, 2)
                    } else {
                        (next16(1)? | (next16(2)? << 16), 3)
                    };
                    if applies {
                        ctx.regs[RSP] = ctx.regs[RSP].wrapping_add(size);
                    }
                    n
                }
                2 => {
                    if applies {
                        ctx.regs[RSP] = ctx.regs[RSP].wrapping_add(op_info as u64 * 8 + 8);
                    }
                    1
                }
                3 => {
                    if applies {
                        ctx.regs[RSP] = frame;
                    }
                    1
                }
                4 => {
                    if applies {
                        ctx.regs[op_info] = stack_read(frame.wrapping_add(next16(1)? * 8), low)?;
                    }
                    2
                }
                5 => {
                    if applies {
                        let off = next16(1)? | (next16(2)? << 16);
                        ctx.regs[op_info] = stack_read(frame.wrapping_add(off), low)?;
                    }
                    3
                }
                // UWOP_SAVE_XMM128 (offset / 16 in the next slot) and its _FAR form
                // (unscaled 32-bit offset): nonvolatile XMM registers saved in the frame.
                8 => {
                    if applies {
                        let at = frame.wrapping_add(next16(1)? * 16);
                        ctx.xmm[op_info] = xmm_read(at, low)?;
                    }
                    2
                }
                9 => {
                    if applies {
                        let off = next16(1)? | (next16(2)? << 16);
                        ctx.xmm[op_info] = xmm_read(frame.wrapping_add(off), low)?;
                    }
                    3
                }
                6 => 2,
                10 => {
                    if applies {
                        let rsp = ctx.regs[RSP].wrapping_add(if op_info == 1 { 8 } else { 0 });
                        ctx.rip = stack_read(rsp, low)?;
                        ctx.regs[RSP] = stack_read(rsp.wrapping_add(24), low)?;
                        return Some(Frame {
                            establisher: establisher.unwrap_or(frame),
                            handler,
                        });
                    }
                    1
                }
                _ => return None,
            };
            i += used;
        }
        if flags & UNW_FLAG_CHAININFO == 0 {
            break;
        }
        // The chained RUNTIME_FUNCTION follows the (even-padded) codes.
        let chained = info + 4 + 2 * ((codes + 1) & !1);
        let (image_base, _) = trap::image_of(usize::try_from(info).ok()?)?;
        info = image_base as u64 + image_read(chained + 8, 4)?;
        first = false;
    }
    let rsp = ctx.regs[RSP];
    ctx.rip = stack_read(rsp, low)?;
    ctx.regs[RSP] = rsp.wrapping_add(8);
    Some(Frame {
        establisher: establisher?,
        handler,
    })
}

/// The absolute address of an RVA of the image holding `inside`.
fn in_image(address: u64) -> bool {
    usize::try_from(address).is_ok_and(|a| trap::image_of(a).is_some())
}

fn begin_of(inside: u64, rva: u64) -> Option<u64> {
    let (base, _) = trap::image_of(usize::try_from(inside).ok()?)?;
    Some(base as u64 + rva)
}

/// The address `handler` really is: itself, or what its `jmp [rip+disp32]` thunk jumps to
/// (the host routine behind an alias).
fn resolve_thunk(handler: u64) -> u64 {
    if image_read(handler, 2) == Some(0x25FF) {
        if let Some(disp) = image_read(handler + 2, 4) {
            let slot = (handler + 6).wrapping_add(disp as u32 as i32 as i64 as u64);
            if let Some(target) = image_read(slot, 8) {
                // The slot may hold the routine's kernel-space alias (kaddr).
                return usize::try_from(target)
                    .ok()
                    .and_then(super::kaddr::target_of)
                    .map_or(target, |r| r as u64);
            }
        }
    }
    handler
}

/// One `C_SCOPE_TABLE` entry, absolute addresses (`handler` 1 = EXECUTE_HANDLER, `target`
/// 0 = a `__finally`).
#[derive(Debug, Clone, Copy)]
struct Scope {
    begin: u64,
    end: u64,
    handler: u64,
    target: u64,
}

fn scopes(data: u64) -> impl Iterator<Item = Scope> {
    let count = image_read(data, 4).unwrap_or(0).min(256);
    (0..count).filter_map(move |k| {
        let e = data + 4 + 16 * k;
        let base = trap::image_of(usize::try_from(e).ok()?)?.0 as u64;
        let rva = |o: u64| image_read(e + o, 4);
        let handler = rva(8)?;
        let target = rva(12)?;
        Some(Scope {
            begin: base + rva(0)?,
            end: base + rva(4)?,
            handler: if handler == 1 { 1 } else { base + handler },
            target: if target == 0 { 0 } else { base + target },
        })
    })
}

type Filter = extern "win64" fn(usize, u64) -> i32;
type Termination = extern "win64" fn(u8, u64);

/// `EXCEPTION_RECORD` and `CONTEXT`-less `EXCEPTION_POINTERS` for filters: the record
/// (code, flags, address) is real; the context pointer is null.
#[repr(C)]
struct Pointers {
    record: *const Record,
    context: usize,
}

#[repr(C)]
struct Record {
    code: u32,
    flags: u32,
    nested: usize,
    address: u64,
    parameters: u32,
    _pad: u32,
    info: [u64; 15],
}

/// Where to resume after a handled exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "made and consumed in the fault handler, which must not allocate (no Box)"
)]
pub enum Resume {
    /// At the `__except` block: this context (nonvolatile registers, RSP, RIP) with RAX =
    /// the code.
    Handler(Context),
    /// At the faulting instruction (a filter said EXCEPTION_CONTINUE_EXECUTION).
    Retry,
}

/// Looks for a `__try`/`__except` that handles exception `code` raised at `fault` (the
/// faulting thread's registers), runs the filters and the `__finally` blocks on the way.
/// `None` when no driver frame handles it.
#[must_use]
pub fn dispatch(fault: &Context, code: u32, handler_marker: u64) -> Option<Resume> {
    let record = Record {
        code,
        flags: 0,
        nested: 0,
        address: fault.rip,
        parameters: 0,
        _pad: 0,
        info: [0; 15],
    };
    let pointers = Pointers {
        record: &raw const record,
        context: 0,
    };
    let low = fault.regs[RSP];
    // First pass: find the target frame and scope.
    let mut ctx = *fault;
    let mut found = None;
    for depth in 0..MAX_FRAMES {
        trap::image_of(usize::try_from(ctx.rip).ok()?)?;
        let pc = ctx.rip;
        let here = ctx;
        let frame = unwind(&mut ctx, low)?;
        let Some((handler, data)) = frame.handler else {
            continue;
        };
        if resolve_thunk(handler) != handler_marker {
            continue;
        }
        for (index, s) in scopes(data).enumerate() {
            // The scope table is the driver's data: a handler or target outside its
            // images is not code it emitted; skip it rather than jump there from here.
            if s.target == 0
                || pc < s.begin
                || pc >= s.end
                || !in_image(s.target)
                || (s.handler != 1 && !in_image(s.handler))
            {
                continue;
            }
            let verdict = if s.handler == 1 {
                1
            } else {
                // SAFETY: not provable from here — the address is code inside a driver
                // image (checked above) that the scope table names as this scope's filter,
                // which compilers emit as `LONG filter(EXCEPTION_POINTERS *, establisher)`.
                // Calling it is running driver code, as the driver itself would through
                // RtlDispatchException; a bad one faults and ends the child.
                let f = unsafe { std::mem::transmute::<usize, Filter>(s.handler as usize) };
                f((&raw const pointers) as usize, frame.establisher)
            };
            match verdict {
                1 => {
                    found = Some((depth, index, here, s.target));
                    break;
                }
                -1 => return Some(Resume::Retry),
                _ => {}
            }
        }
        if found.is_some() {
            break;
        }
    }
    let (target_depth, target_index, target_ctx, target) = found?;
    // Second pass: run the __finally blocks of the scopes left, innermost first.
    let mut ctx = *fault;
    for depth in 0..=target_depth {
        let pc = ctx.rip;
        let frame = unwind(&mut ctx, low)?;
        let Some((handler, data)) = frame.handler else {
            continue;
        };
        if resolve_thunk(handler) != handler_marker {
            continue;
        }
        for (index, s) in scopes(data).enumerate() {
            if depth == target_depth && index >= target_index {
                break;
            }
            if s.target == 0 && pc >= s.begin && pc < s.end && in_image(s.handler) {
                // SAFETY: as for the filter above: driver code (checked to be inside an
                // image) the scope table names as a `__finally` block,
                // `void handler(BOOLEAN abnormal, establisher)`.
                let f = unsafe { std::mem::transmute::<usize, Termination>(s.handler as usize) };
                f(1, frame.establisher);
            }
        }
    }
    let mut resume = target_ctx;
    resume.rip = target;
    resume.regs[0] = u64::from(code);
    Some(Resume::Handler(resume))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame whose prolog saved XMM6 (`UWOP_SAVE_XMM128`) after `sub rsp, 0x28`: the
    /// unwinder restores XMM6 from the frame, RSP and the return address; a save slot on
    /// an unmapped address fails the unwind instead of faulting.
    #[test]
    fn unwinding_restores_nonvolatile_xmm_and_never_faults_on_bad_stack() {
        let image: &'static mut [u8] = Box::leak(vec![0u8; 0x1000].into_boxed_slice());
        let put = |img: &mut [u8], at: usize, v: u32| {
            img[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        put(image, 0x3C, 0x80);
        put(image, 0x80 + 24 + 108, 16); // NumberOfRvaAndSizes
        put(image, 0x80 + 24 + 112 + 24, 0x300); // exception directory
        put(image, 0x80 + 24 + 112 + 28, 12);
        put(image, 0x300, 0x500); // RUNTIME_FUNCTION: begin, end, unwind info
        put(image, 0x304, 0x600);
        put(image, 0x308, 0x400);
        // UNWIND_INFO v1, prolog 0x10 bytes, 3 code slots, no frame register.
        image[0x400..0x404].copy_from_slice(&[1, 0x10, 3, 0]);
        let slot = |offset: u16, op: u16, info: u16| offset | (op << 8) | (info << 12);
        let codes = [slot(0x0C, 8, 6), 1, slot(0x04, 2, 4)];
        for (k, c) in codes.iter().enumerate() {
            image[0x404 + 2 * k..0x406 + 2 * k].copy_from_slice(&c.to_le_bytes());
        }
        let base = image.as_ptr() as usize;
        trap::add_image(base, image.len());

        let xmm6 = 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210u128;
        let mut stack = [0u64; 8];
        stack[2] = xmm6 as u64;
        stack[3] = (xmm6 >> 64) as u64;
        stack[5] = 0xDEAD_0000; // return address, at RSP + 0x28
        let rsp = stack.as_ptr() as u64;
        let at = |rsp: u64| {
            let mut regs = [0; 16];
            regs[RSP] = rsp;
            Context {
                regs,
                rip: base as u64 + 0x520,
                ..Context::default()
            }
        };
        let mut ctx = at(rsp);
        let frame = unwind(&mut ctx, rsp).expect("unwinds");
        assert_eq!(frame.establisher, rsp);
        assert_eq!(ctx.xmm[6], xmm6);
        assert_eq!(ctx.rip, 0xDEAD_0000);
        assert_eq!(ctx.regs[RSP], rsp + 0x30);

        // RSP on a page that cannot be read: the reads fail, nothing faults. The page
        // stays mapped, inaccessible, until the check is done: an unmapped hole could be
        // handed to another test thread's allocation in between (seen: 2 runs in 40 at 8
        // test threads, the read then succeeded).
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0x1000,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let hole = p as u64;
        let mut ctx = at(hole);
        let unwound = unwind(&mut ctx, hole);
        // SAFETY: unmaps what was mapped above; nothing refers to it (only its address was
        // used, for reads that failed).
        unsafe { libc::munmap(p, 0x1000) };
        assert!(unwound.is_none());
    }

    #[test]
    fn nothing_is_dispatched_outside_driver_images() {
        let ctx = Context {
            rip: 0x1000,
            ..Context::default()
        };
        assert_eq!(dispatch(&ctx, ACCESS_VIOLATION, 0x1234), None);
    }
}
