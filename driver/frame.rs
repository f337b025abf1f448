//! The frame format of the host endpoint: how one control request and its reply travel
//! over a byte stream (a Unix domain socket). It carries exactly what `DeviceIoControl`
//! carries — code, input bytes, output capacity in; NTSTATUS, `Information`, output bytes
//! out — so the device and the host speak the same protocol and only the transport
//! differs. Shared by the host's server and `iosvctl`'s socket transport.
//!
//! All integers are little-endian; a connection carries any number of frames in turn.
//!
//! ```text
//! request : magic u32 = 0x5653_4F49, code u32, input_len u32, output_capacity u32, input
//! reply   : magic u32 = 0x5653_4F49, status u32, information u64, output_len u32, output
//! ```
//!
//! Decoders trust nothing: a bad magic or a length over the limits is an error.

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

/// What is wrong with a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The frame does not start with [`FRAME_MAGIC`].
    BadMagic(u32),
    /// `input_len` is above [`MAX_INPUT`].
    InputTooLarge(u32),
    /// `output_capacity` (or a reply's `output_len`) is above [`MAX_OUTPUT`].
    OutputTooLarge(u32),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadMagic(m) => write!(
                f,
                "frame magic is {m:#010x}, not {FRAME_MAGIC:#010x} (\"IOSV\")"
            ),
            FrameError::InputTooLarge(n) => {
                write!(f, "input of {n} bytes exceeds the {MAX_INPUT}-byte limit")
            }
            FrameError::OutputTooLarge(n) => {
                write!(f, "output of {n} bytes exceeds the {MAX_OUTPUT}-byte limit")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
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
    if h.input_len > MAX_INPUT {
        return Err(FrameError::InputTooLarge(h.input_len));
    }
    if h.output_capacity > MAX_OUTPUT {
        return Err(FrameError::OutputTooLarge(h.output_capacity));
    }
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
    if h.output_len > MAX_OUTPUT {
        return Err(FrameError::OutputTooLarge(h.output_len));
    }
    Ok(h)
}

/// A whole request frame.
pub fn encode_request(
    code: u32,
    input: &[u8],
    output_capacity: u32,
) -> Result<Vec<u8>, FrameError> {
    let input_len = u32::try_from(input.len()).unwrap_or(u32::MAX);
    if input_len > MAX_INPUT {
        return Err(FrameError::InputTooLarge(input_len));
    }
    if output_capacity > MAX_OUTPUT {
        return Err(FrameError::OutputTooLarge(output_capacity));
    }
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

/// Writes one request frame.
pub fn write_request(
    w: &mut impl Write,
    code: u32,
    input: &[u8],
    output_capacity: u32,
) -> io::Result<()> {
    w.write_all(&encode_request(code, input, output_capacity)?)?;
    w.flush()
}

/// Reads one reply frame.
pub fn read_reply(r: &mut impl Read) -> io::Result<(ReplyHeader, Vec<u8>)> {
    let mut hb = [0u8; REPLY_HEADER_LEN];
    r.read_exact(&mut hb)?;
    let h = decode_reply_header(&hb)?;
    let mut out = std::vec![0u8; h.output_len as usize];
    r.read_exact(&mut out)?;
    Ok((h, out))
}

/// One control call over a connected stream: sends `code` and `input` with the capacity
/// of `output`, copies the reply's bytes into `output`, and returns the reply header.
pub fn call(
    stream: &mut (impl Read + Write),
    code: u32,
    input: &[u8],
    output: &mut [u8],
) -> io::Result<ReplyHeader> {
    let cap = u32::try_from(output.len())
        .unwrap_or(u32::MAX)
        .min(MAX_OUTPUT);
    write_request(stream, code, input, cap)?;
    let (h, bytes) = read_reply(stream)?;
    let n = bytes.len().min(output.len());
    if let (Some(dst), Some(src)) = (output.get_mut(..n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
    Ok(h)
}
