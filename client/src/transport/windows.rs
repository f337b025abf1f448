//! The Windows control device `\\.\IoSpaceVerifier`: `CreateFileW` once, then one
//! synchronous `DeviceIoControl` per request (METHOD_BUFFERED, as the driver requires).
//!
//! `DeviceIoControl` reports failures as Win32 error codes, not NTSTATUS values: they are
//! mapped back with [`super::status_from_win32`]. The I/O manager does not hand
//! `IoStatus.Information` to the caller for an error status, so a STATUS_BUFFER_TOO_SMALL
//! arrives without the required size (`information` = 0) and the client grows its buffer
//! geometrically instead.

use super::{status_from_win32, CallResult, RawReply, Transport, TransportError};
use iosv::protocol::WIN32_DEVICE_PATH;
use std::io;
use std::ptr;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, GENERIC_READ, GENERIC_WRITE, HANDLE,
    INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::DeviceIoControl;

/// An open handle to the iosv control device.
#[derive(Debug)]
pub struct DeviceTransport {
    handle: HANDLE,
}

impl DeviceTransport {
    /// Opens `\\.\IoSpaceVerifier` for reading and writing.
    pub fn open() -> Result<DeviceTransport, TransportError> {
        let path: Vec<u16> = WIN32_DEVICE_PATH
            .encode_utf16()
            .chain(std::iter::once(0))
            .collect();
        // SAFETY: `path` is a NUL-terminated UTF-16 string that outlives the call; the
        // security attributes and template handle may be null.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                ptr::null(),
                OPEN_EXISTING,
                FILE_ATTRIBUTE_NORMAL,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE || handle.is_null() {
            let source = io::Error::last_os_error();
            let code = source.raw_os_error().and_then(|c| u32::try_from(c).ok());
            let hint = match code {
                Some(ERROR_FILE_NOT_FOUND) => "; iosv.sys is not loaded (sc start iosv)",
                Some(ERROR_ACCESS_DENIED) => {
                    "; the control device is open to Administrators and SYSTEM only (use an elevated prompt)"
                }
                _ => "",
            };
            return Err(TransportError::Connect {
                endpoint: format!("device {WIN32_DEVICE_PATH}"),
                source,
                hint: hint.to_string(),
            });
        }
        Ok(DeviceTransport { handle })
    }
}

impl Transport for DeviceTransport {
    fn call(&mut self, code: u32, input: &[u8], output_capacity: usize) -> CallResult {
        let too_big = |what: &str| TransportError::Io {
            endpoint: self.describe(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} larger than 4 GiB"),
            ),
        };
        let in_len = u32::try_from(input.len()).map_err(|_| too_big("input"))?;
        let out_len = u32::try_from(output_capacity).map_err(|_| too_big("output"))?;
        let mut output = vec![0u8; output_capacity];
        let in_ptr = if input.is_empty() {
            ptr::null()
        } else {
            input.as_ptr().cast()
        };
        let out_ptr = if output.is_empty() {
            ptr::null_mut()
        } else {
            output.as_mut_ptr().cast()
        };
        let mut returned: u32 = 0;
        // SAFETY: the handle is open for the life of `self`; `in_ptr`/`out_ptr` are null
        // or point at `in_len`/`out_len` valid bytes that outlive this synchronous call
        // (the handle was opened without FILE_FLAG_OVERLAPPED, so no OVERLAPPED is needed).
        let ok = unsafe {
            DeviceIoControl(
                self.handle,
                code,
                in_ptr,
                in_len,
                out_ptr,
                out_len,
                &mut returned,
                ptr::null_mut(),
            )
        };
        if ok != 0 {
            output.truncate((returned as usize).min(output_capacity));
            return Ok(RawReply {
                status: 0,
                information: u64::from(returned),
                output,
            });
        }
        let source = io::Error::last_os_error();
        match source
            .raw_os_error()
            .and_then(|c| u32::try_from(c).ok())
            .and_then(status_from_win32)
        {
            Some(status) => Ok(RawReply {
                status: status as u32,
                information: 0,
                output: Vec::new(),
            }),
            None => Err(TransportError::Io {
                endpoint: self.describe(),
                source,
            }),
        }
    }

    fn describe(&self) -> String {
        format!("device {WIN32_DEVICE_PATH}")
    }
}

impl Drop for DeviceTransport {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateFileW and is closed exactly once, here.
        unsafe {
            CloseHandle(self.handle);
        }
    }
}
