//! The frame format of the host endpoint: how one control request and its reply travel
//! over a byte stream (a Unix domain socket). It carries exactly what `DeviceIoControl`
//! carries — code, input bytes, output capacity in; NTSTATUS, `Information`, output bytes
//! out — so the device and the host speak the same protocol and only the transport
//! differs. The one codec of both sides: the host's server and `iosvctl`'s socket
//! transport.
//!
//! All integers are little-endian; a connection carries any number of frames in turn.
//!
//! ```text
//! request : magic u32 = 0x5653_4F49, code u32, input_len u32, output_capacity u32, input
//! reply   : magic u32 = 0x5653_4F49, status u32, information u64, output_len u32, output
//! ```
//!
//! Decoders trust nothing: a bad magic or a length over the limits is an error, and the
//! stream readers tell a clean close between frames ([`FrameError::Closed`]) from a frame
//! cut short ([`FrameError::Truncated`]).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::vec::Vec;

/// Magic number that starts every frame: "IOSV" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = 0x5653_4F49;
/// Largest `input_len` a request may carry (64 KiB).
pub const MAX_INPUT: u32 = 64 * 1024;
/// Largest `output_capacity` a request may ask for (16 MiB).
pub const MAX_OUTPUT: u32 = 16 * 1024 * 1024;
/// Bytes in a request header.
pub const REQUEST_HEADER_LEN: usize = 16;
/// Bytes in a reply header.
pub const REPLY_HEADER_LEN: usize = 20;
/// STATUS_INVALID_PARAMETER: the reply to a frame that breaks the limits.
pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// IOCTL code.
    pub code: u32,
    /// Input bytes that follow.
    pub input_len: u32,
    /// Output bytes the caller can take.
    pub output_capacity: u32,
}

/// A reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    /// NTSTATUS.
    pub status: u32,
    /// `IoStatus.Information`: bytes written, or needed for STATUS_BUFFER_TOO_SMALL.
    pub information: u64,
    /// Output bytes that follow.
    pub output_len: u32,
}

/// Why a frame could not be decoded, read or written.
#[derive(Debug)]
pub enum FrameError {
    /// The stream ended inside a frame.
    Truncated {
        /// Bytes of the frame received.
        got: usize,
        /// Bytes the frame needed.
        expected: usize,
    },
    /// The stream ended cleanly between frames.
    Closed,
    /// The frame does not start with [`FRAME_MAGIC`].
    BadMagic(u32),
    /// A length field is larger than allowed.
    TooLong {
        /// Which length (`"request input"`, `"output capacity"`, `"reply output"`).
        what: &'static str,
        /// Its value.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A read or write failed.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { got, expected } => write!(
                f,
                "connection closed after {got} of {expected} bytes of a frame"
            ),
            FrameError::Closed => f.write_str("connection closed"),
            FrameError::BadMagic(m) => {
                write!(
                    f,
                    "bad frame magic 0x{m:08x} (expected 0x{FRAME_MAGIC:08x})"
                )
            }
            FrameError::TooLong { what, len, max } => {
                write!(f, "{what} of {len} bytes exceeds the limit of {max}")
            }
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// [`FrameError::TooLong`] when `len` is above `max`.
fn check_len(what: &'static str, len: u64, max: u32) -> Result<(), FrameError> {
    if len > u64::from(max) {
        return Err(FrameError::TooLong {
            what,
            len,
            max: u64::from(max),
        });
    }
    Ok(())
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at.saturating_add(4)) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at.saturating_add(8)) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

/// Encodes a request header.
pub fn encode_request_header(h: &RequestHeader) -> [u8; REQUEST_HEADER_LEN] {
    let mut b = [0u8; REQUEST_HEADER_LEN];
    for (dst, v) in b
        .chunks_exact_mut(4)
        .zip([FRAME_MAGIC, h.code, h.input_len, h.output_capacity])
    {
        dst.copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// Decodes a request header and checks its magic and limits.
pub fn decode_request_header(b: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, FrameError> {
    let magic = le32(b, 0);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let h = RequestHeader {
        code: le32(b, 4),
        input_len: le32(b, 8),
        output_capacity: le32(b, 12),
    };
    check_len("request input", h.input_len.into(), MAX_INPUT)?;
    check_len("output capacity", h.output_capacity.into(), MAX_OUTPUT)?;
    Ok(h)
}

/// Encodes a reply header.
pub fn encode_reply_header(h: &ReplyHeader) -> [u8; REPLY_HEADER_LEN] {
    let mut b = [0u8; REPLY_HEADER_LEN];
    b[..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&h.status.to_le_bytes());
    b[8..16].copy_from_slice(&h.information.to_le_bytes());
    b[16..20].copy_from_slice(&h.output_len.to_le_bytes());
    b
}

/// Decodes a reply header and checks its magic and output length.
pub fn decode_reply_header(b: &[u8; REPLY_HEADER_LEN]) -> Result<ReplyHeader, FrameError> {
    let magic = le32(b, 0);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let h = ReplyHeader {
        status: le32(b, 4),
        information: le64(b, 8),
        output_len: le32(b, 16),
    };
    check_len("reply output", h.output_len.into(), MAX_OUTPUT)?;
    Ok(h)
}

/// A whole request frame.
pub fn encode_request(
    code: u32,
    input: &[u8],
    output_capacity: u32,
) -> Result<Vec<u8>, FrameError> {
    let input_len = u32::try_from(input.len()).unwrap_or(u32::MAX);
    check_len("request input", input_len.into(), MAX_INPUT)?;
    check_len("output capacity", output_capacity.into(), MAX_OUTPUT)?;
    let mut v = Vec::with_capacity(REQUEST_HEADER_LEN.saturating_add(input.len()));
    v.extend_from_slice(&encode_request_header(&RequestHeader {
        code,
        input_len,
        output_capacity,
    }));
    v.extend_from_slice(input);
    Ok(v)
}

/// A whole reply frame (`output` is sent only when `status` is 0, success).
pub fn encode_reply(status: u32, information: u64, output: &[u8]) -> Vec<u8> {
    let output = if status == 0 { output } else { &[] };
    let output_len = u32::try_from(output.len()).unwrap_or(0);
    let output = output.get(..output_len as usize).unwrap_or(&[]);
    let mut v = Vec::with_capacity(REPLY_HEADER_LEN.saturating_add(output.len()));
    v.extend_from_slice(&encode_reply_header(&ReplyHeader {
        status,
        information,
        output_len,
    }));
    v.extend_from_slice(output);
    v
}

/// Fills `buf` from `r`. `before` bytes of the frame (of `total`) were read already, for
/// the message; `clean_eof` allows an end of stream before the frame's first byte.
fn read_full(
    r: &mut impl Read,
    buf: &mut [u8],
    before: usize,
    total: usize,
    clean_eof: bool,
) -> Result<(), FrameError> {
    let mut got = 0usize;
    while let Some(rest) = buf.get_mut(got..).filter(|rest| !rest.is_empty()) {
        match r.read(rest) {
            Ok(0) if got == 0 && before == 0 && clean_eof => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got: before.saturating_add(got),
                    expected: total,
                })
            }
            Ok(n) => got = got.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Reads one request frame; [`FrameError::Closed`] when the peer hung up between frames.
pub fn read_request(r: &mut impl Read) -> Result<(RequestHeader, Vec<u8>), FrameError> {
    let mut h = [0u8; REQUEST_HEADER_LEN];
    read_full(r, &mut h, 0, REQUEST_HEADER_LEN, true)?;
    let header = decode_request_header(&h)?;
    let len = header.input_len as usize;
    let mut input = std::vec![0u8; len];
    read_full(
        r,
        &mut input,
        REQUEST_HEADER_LEN,
        REQUEST_HEADER_LEN.saturating_add(len),
        false,
    )?;
    Ok((header, input))
}

/// Reads one reply frame whose output may be at most `max_output` bytes (the capacity
/// the request named).
pub fn read_reply(
    r: &mut impl Read,
    max_output: usize,
) -> Result<(ReplyHeader, Vec<u8>), FrameError> {
    let mut h = [0u8; REPLY_HEADER_LEN];
    read_full(r, &mut h, 0, REPLY_HEADER_LEN, false)?;
    let header = decode_reply_header(&h)?;
    let len = header.output_len as usize;
    if len > max_output {
        return Err(FrameError::TooLong {
            what: "reply output",
            len: len as u64,
            max: max_output as u64,
        });
    }
    let mut out = std::vec![0u8; len];
    read_full(
        r,
        &mut out,
        REPLY_HEADER_LEN,
        REPLY_HEADER_LEN.saturating_add(len),
        false,
    )?;
    Ok((header, out))
}

/// Writes a whole frame and flushes it.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame)?;
    w.flush()?;
    Ok(())
}

/// Writes one request frame.
pub fn write_request(
    w: &mut impl Write,
    code: u32,
    input: &[u8],
    output_capacity: u32,
) -> Result<(), FrameError> {
    write_frame(w, &encode_request(code, input, output_capacity)?)
}

/// One control call over a connected stream: sends `code` and `input` with the capacity
/// of `output`, copies the reply's bytes into `output`, and returns the reply header.
pub fn call(
    stream: &mut (impl Read + Write),
    code: u32,
    input: &[u8],
    output: &mut [u8],
) -> Result<ReplyHeader, FrameError> {
    let cap = u32::try_from(output.len())
        .unwrap_or(u32::MAX)
        .min(MAX_OUTPUT);
    write_request(stream, code, input, cap)?;
    let (h, bytes) = read_reply(stream, MAX_OUTPUT as usize)?;
    let n = bytes.len().min(output.len());
    if let (Some(dst), Some(src)) = (output.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let f = encode_request(0x8A55_2000, &[1, 2, 3], 4096).unwrap();
        assert_eq!(f.len(), REQUEST_HEADER_LEN + 3);
        assert_eq!(&f[..4], &[0x49, 0x4F, 0x53, 0x56]); // "IOSV"
        let (h, input) = read_request(&mut &f[..]).unwrap();
        assert_eq!(
            h,
            RequestHeader {
                code: 0x8A55_2000,
                input_len: 3,
                output_capacity: 4096
            }
        );
        assert_eq!(input, [1, 2, 3]);
    }

    #[test]
    fn reply_round_trips() {
        let f = encode_reply(0, 1234, &[9; 7]);
        let (h, out) = read_reply(&mut &f[..], 100).unwrap();
        assert_eq!(
            h,
            ReplyHeader {
                status: 0,
                information: 1234,
                output_len: 7
            }
        );
        assert_eq!(out, [9; 7]);
    }

    #[test]
    fn a_failed_reply_carries_no_output() {
        let f = encode_reply(0xC000_0023, 1234, &[9; 7]);
        let (h, out) = read_reply(&mut &f[..], 100).unwrap();
        assert_eq!(
            (h.status, h.information, h.output_len),
            (0xC000_0023, 1234, 0)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn truncated_reply_is_an_error_not_a_panic() {
        let f = encode_reply(0, 8, &[1; 8]);
        for cut in 0..f.len() {
            let e = read_reply(&mut &f[..cut], 100).unwrap_err();
            assert!(
                matches!(e, FrameError::Truncated { got, expected } if got == cut && expected >= REPLY_HEADER_LEN),
                "{cut}: {e}"
            );
        }
    }

    #[test]
    fn bad_magic_and_oversized_output_are_refused() {
        let mut f = encode_reply(0, 0, &[]);
        f[0] ^= 0xFF;
        assert!(matches!(
            read_reply(&mut &f[..], 10),
            Err(FrameError::BadMagic(_))
        ));
        let f = encode_reply(0, 0, &[0; 11]);
        assert!(matches!(
            read_reply(&mut &f[..], 10),
            Err(FrameError::TooLong { .. })
        ));
        assert!(matches!(
            encode_request(1, &[], MAX_OUTPUT + 1),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn clean_close_between_requests_is_distinguished() {
        assert!(matches!(
            read_request(&mut &[][..]),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_request(&mut &[0x49][..]),
            Err(FrameError::Truncated { got: 1, .. })
        ));
    }
}
