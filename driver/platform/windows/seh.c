/*
 * iosv's only C: MmProbeAndLockPages behind a structured-exception handler.
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
