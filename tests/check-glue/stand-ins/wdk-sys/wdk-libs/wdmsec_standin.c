/*
 * STAND-IN for the WDK's static library wdmsec.lib, for the Linux link check of iosv.sys
 * only (tests/check-glue). Never shipped, never run: the real library comes with the WDK
 * and is linked on Windows. WdmlibIoCreateDeviceSecure (wdmsec.h; IoCreateDeviceSecure is
 * a macro for it) has the WDK's prototype and forwards to IoCreateDevice, ignoring the SDDL
 * string and class GUID, so the image imports what the routine is at least built on.
 */

typedef long NTSTATUS;
typedef unsigned long ULONG;
typedef unsigned long DEVICE_TYPE;
typedef unsigned char BOOLEAN;
typedef struct _DRIVER_OBJECT DRIVER_OBJECT;
typedef struct _DEVICE_OBJECT DEVICE_OBJECT;
typedef struct _UNICODE_STRING UNICODE_STRING;
typedef struct _GUID GUID;

__declspec(dllimport) NTSTATUS __stdcall IoCreateDevice(
    DRIVER_OBJECT *DriverObject, ULONG DeviceExtensionSize, UNICODE_STRING *DeviceName,
    DEVICE_TYPE DeviceType, ULONG DeviceCharacteristics, BOOLEAN Exclusive,
    DEVICE_OBJECT **DeviceObject);

NTSTATUS __stdcall WdmlibIoCreateDeviceSecure(
    DRIVER_OBJECT *DriverObject, ULONG DeviceExtensionSize, UNICODE_STRING *DeviceName,
    DEVICE_TYPE DeviceType, ULONG DeviceCharacteristics, BOOLEAN Exclusive,
    const UNICODE_STRING *DefaultSDDLString, const GUID *DeviceClassGuid,
    DEVICE_OBJECT **DeviceObject)
{
    (void)DefaultSDDLString;
    (void)DeviceClassGuid;
    return IoCreateDevice(DriverObject, DeviceExtensionSize, DeviceName, DeviceType,
                          DeviceCharacteristics, Exclusive, DeviceObject);
}
