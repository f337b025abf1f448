/*
 * STAND-IN for the WDK's static library aux_klib.lib, for the Linux link check of iosv.sys
 * only (tests/check-glue). Never shipped, never run: the real library comes with the WDK
 * and is linked on Windows. It only gives the linker the two symbols the glue calls, with
 * the prototypes of the WDK's aux_klib.h, so that a misspelled or missing routine is a
 * link error here too. Both fail with STATUS_NOT_IMPLEMENTED.
 */

typedef long NTSTATUS;
typedef unsigned long ULONG;

#define STATUS_NOT_IMPLEMENTED ((NTSTATUS)0xC0000002L)

NTSTATUS __stdcall AuxKlibInitialize(void)
{
    return STATUS_NOT_IMPLEMENTED;
}

NTSTATUS __stdcall AuxKlibQueryModuleInformation(ULONG *BufferSize, ULONG ElementSize,
                                                 void *QueryInfo)
{
    (void)BufferSize;
    (void)ElementSize;
    (void)QueryInfo;
    return STATUS_NOT_IMPLEMENTED;
}
