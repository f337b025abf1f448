/*
 * iosv's C: MmProbeAndLockPages behind a structured-exception handler, and the hooks of
 * the two MDL map routines that raise an exception on a user-mode failure.
 *
 * MmProbeAndLockPages reports failure by raising an exception (DDI reference: "Calls to
 * MmProbeAndLockPages must be enclosed in a try/except block"). Rust cannot catch an SEH
 * exception, so the call is made here, inside __try/__except, and the exception code is
 * returned as an NTSTATUS (0 = locked). Built by build.rs with the WDK's compiler on
 * Windows, and with clang in MSVC mode by scripts/check-glue on Linux.
 *
 * No WDK header is included so that the file is the same for both compilers; the one
 * prototype below is MmProbeAndLockPages's from wdm.h (KPROCESSOR_MODE is CCHAR,
 * LOCK_OPERATION an enum).
 */

typedef long NTSTATUS;
typedef struct _MDL MDL;
typedef void *PVOID;

__declspec(dllimport) void __stdcall MmProbeAndLockPages(MDL *Mdl, char AccessMode, int Operation);
unsigned long __cdecl _exception_code(void);

/* IRQL <= APC_LEVEL for pageable memory, <= DISPATCH_LEVEL for resident memory (as the
 * routine itself). On success the MDL's pages are locked: unlock them with MmUnlockPages. */
NTSTATUS iosv_probe_and_lock_pages(MDL *mdl, char access_mode, int operation)
{
    NTSTATUS status = 0;
    __try {
        MmProbeAndLockPages(mdl, access_mode, operation);
    } __except (1 /* EXCEPTION_EXECUTE_HANDLER */) {
        status = (NTSTATUS)_exception_code();
    }
    return status;
}


/*
 * The hooks of MmMapLockedPagesSpecifyCache and MmMapLockedPages. With AccessMode UserMode
 * a failure raises an exception (DDI reference) that the target catches in its __try.
 * Made from Rust, that exception would unwind through Rust frames (undefined behaviour),
 * so the hook is this C function: it calls the real routine (an exception then unwinds
 * through C frames only, straight back to the target) and hands a successful result to
 * iosv's engine (iosv_after_map_locked_pages, in Rust, platform/windows/mdl_hooks.rs),
 * with the return address into the target for attribution (exact at any IRQL).
 */
__declspec(dllimport) PVOID __stdcall MmMapLockedPagesSpecifyCache(MDL *Mdl, char AccessMode,
    int CacheType, PVOID RequestedAddress, unsigned long BugCheckOnFailure,
    unsigned long Priority);
__declspec(dllimport) PVOID __stdcall MmMapLockedPages(MDL *Mdl, char AccessMode);
void *_ReturnAddress(void);
#pragma intrinsic(_ReturnAddress)
PVOID iosv_after_map_locked_pages(PVOID va, MDL *mdl, char access_mode, int cache_type,
    unsigned long long return_address, unsigned long long importer, int legacy);

/*
 * Each is reached through a per-driver thunk (platform/windows/mdl_hooks.rs), which jumps
 * here without a frame of its own, so _ReturnAddress() is still the target's. The thunk
 * passes its driver id: MmMapLockedPagesSpecifyCache's in the upper half of AccessMode's
 * register (mode_and_id: the mode in the low byte), MmMapLockedPages's as a third
 * argument.
 */
PVOID iosv_hook_map_locked_pages_specify_cache(MDL *mdl, unsigned long long mode_and_id,
    int cache_type, PVOID requested_address, unsigned long bugcheck_on_failure,
    unsigned long priority)
{
    unsigned long long ret = (unsigned long long)_ReturnAddress();
    char access_mode = (char)mode_and_id;
    PVOID va = MmMapLockedPagesSpecifyCache(mdl, access_mode, cache_type, requested_address,
        bugcheck_on_failure, priority);
    return iosv_after_map_locked_pages(va, mdl, access_mode, cache_type, ret,
        mode_and_id >> 32, 0);
}

/* MmMapLockedPages maps cached (MmCached = 1). */
PVOID iosv_hook_map_locked_pages(MDL *mdl, char access_mode, unsigned long long importer)
{
    unsigned long long ret = (unsigned long long)_ReturnAddress();
    PVOID va = MmMapLockedPages(mdl, access_mode);
    /* 1: MmCached, what MmMapLockedPages maps with; legacy 1: the routine was
       MmMapLockedPages. */
    return iosv_after_map_locked_pages(va, mdl, access_mode, 1, ret, importer, 1);
}
