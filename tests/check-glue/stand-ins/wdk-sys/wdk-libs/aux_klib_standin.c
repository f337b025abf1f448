/*
 * STAND-IN for the WDK's static library aux_klib.lib, for the Linux build of iosv.sys only
 * (tests/check-glue). Never shipped: the real library comes with the WDK and is linked on
 * Windows. It gives the linker the two symbols the glue calls, with the prototypes of the
 * WDK's aux_klib.h, so that a misspelled or missing routine is a link error here too, and
 * it behaves as the documented routines do, so that `iosvctl run --verifier` can run the
 * image (docs/running-drivers.md, "The kernel component itself"):
 *
 * - AuxKlibInitialize succeeds.
 * - AuxKlibQueryModuleInformation lists the loaded modules from
 *   ZwQuerySystemInformation(SystemModuleInformation) as AUX_MODULE_EXTENDED_INFO
 *   entries (or AUX_MODULE_BASIC_INFO, by ElementSize). A NULL QueryInfo asks for the
 *   size (STATUS_SUCCESS); a buffer too small is STATUS_BUFFER_TOO_SMALL with the size
 *   needed in *BufferSize (the DDI page of AuxKlibQueryModuleInformation).
 */

typedef long NTSTATUS;
typedef unsigned long ULONG;
typedef unsigned short USHORT;
typedef unsigned char UCHAR;

#define STATUS_SUCCESS ((NTSTATUS)0L)
#define STATUS_INFO_LENGTH_MISMATCH ((NTSTATUS)0xC0000004L)
#define STATUS_INVALID_PARAMETER ((NTSTATUS)0xC000000DL)
#define STATUS_BUFFER_TOO_SMALL ((NTSTATUS)0xC0000023L)
#define STATUS_INSUFFICIENT_RESOURCES ((NTSTATUS)0xC000009AL)
#define SYSTEM_MODULE_INFORMATION 11
#define NON_PAGED_POOL_NX 512
#define TAG 0x6c6b7841 /* 'Axkl' */

/* RTL_PROCESS_MODULE_INFORMATION (ntldr.h), 0x128 bytes on x64. */
typedef struct {
    void *Section;
    void *MappedBase;
    void *ImageBase;
    ULONG ImageSize;
    ULONG Flags;
    USHORT LoadOrderIndex;
    USHORT InitOrderIndex;
    USHORT LoadCount;
    USHORT OffsetToFileName;
    UCHAR FullPathName[256];
} ProcessModule;

/* RTL_PROCESS_MODULES. */
typedef struct {
    ULONG NumberOfModules;
    ProcessModule Modules[1];
} ProcessModules;

/* AUX_MODULE_EXTENDED_INFO (aux_klib.h); AUX_MODULE_BASIC_INFO is its first member. */
typedef struct {
    void *ImageBase;
    ULONG ImageSize;
    USHORT FileNameOffset;
    UCHAR FullPathName[256];
} AuxExtended;

__declspec(dllimport) NTSTATUS __stdcall ZwQuerySystemInformation(ULONG Class, void *Info, ULONG Length,
                                            ULONG *ReturnLength);
__declspec(dllimport) void *__stdcall ExAllocatePoolWithTag(int PoolType, unsigned long long Size, ULONG Tag);
__declspec(dllimport) void __stdcall ExFreePoolWithTag(void *P, ULONG Tag);

NTSTATUS __stdcall AuxKlibInitialize(void)
{
    return STATUS_SUCCESS;
}

NTSTATUS __stdcall AuxKlibQueryModuleInformation(ULONG *BufferSize, ULONG ElementSize,
                                                 void *QueryInfo)
{
    ULONG length = 0, i, needed;
    ProcessModules *list = 0;
    NTSTATUS status;
    int attempt;

    if (BufferSize == 0 || (ElementSize != sizeof(AuxExtended) && ElementSize != sizeof(void *)))
        return STATUS_INVALID_PARAMETER;
    for (attempt = 0; attempt < 4; attempt++) {
        status = ZwQuerySystemInformation(SYSTEM_MODULE_INFORMATION, list, length, &length);
        if (status != STATUS_INFO_LENGTH_MISMATCH)
            break;
        if (list)
            ExFreePoolWithTag(list, TAG);
        length += 4 * sizeof(ProcessModule);
        list = ExAllocatePoolWithTag(NON_PAGED_POOL_NX, length, TAG);
        if (list == 0)
            return STATUS_INSUFFICIENT_RESOURCES;
    }
    if (status < 0 || list == 0) {
        if (list)
            ExFreePoolWithTag(list, TAG);
        return status < 0 ? status : STATUS_INSUFFICIENT_RESOURCES;
    }
    needed = list->NumberOfModules * ElementSize;
    if (QueryInfo == 0 || *BufferSize < needed) {
        *BufferSize = needed;
        ExFreePoolWithTag(list, TAG);
        return QueryInfo == 0 ? STATUS_SUCCESS : STATUS_BUFFER_TOO_SMALL;
    }
    for (i = 0; i < list->NumberOfModules; i++) {
        ProcessModule *m = &list->Modules[i];
        if (ElementSize == sizeof(AuxExtended)) {
            AuxExtended *out = (AuxExtended *)QueryInfo + i;
            ULONG k;
            out->ImageBase = m->ImageBase;
            out->ImageSize = m->ImageSize;
            out->FileNameOffset = m->OffsetToFileName;
            for (k = 0; k < 256; k++)
                out->FullPathName[k] = m->FullPathName[k];
        } else {
            ((void **)QueryInfo)[i] = m->ImageBase;
        }
    }
    *BufferSize = needed;
    ExFreePoolWithTag(list, TAG);
    return STATUS_SUCCESS;
}
