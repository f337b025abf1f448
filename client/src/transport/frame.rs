//! The host endpoint's frame format: how one control request and its reply travel over a
//! byte stream (a Unix domain socket). It carries exactly what `DeviceIoControl` carries —
//! code, input bytes, output capacity in; NTSTATUS, `Information`, output bytes out — so
//! the device and the host speak the same protocol and only the transport differs.
//!
//! All integers are little-endian; a connection carries any number of frames in turn.
//!
//! ```text
//! request : magic u32 = 0x5653_4F49, code u32, input_len u32, output_capacity u32, input
//! reply   : magic u32 = 0x5653_4F49, status u32, information u64, output_len u32, output
//! ```
//!
//! Readers trust nothing: a bad magic, an output longer than was asked for or a stream
//! that ends inside a frame is an error, never a panic.

use std::io::{self, Read, Write};

/// First four bytes of every frame, both directions ("IOSV" read as little-endian bytes).
pub const FRAME_MAGIC: u32 = 0x5653_4F49;
/// Bytes in a request header.
pub const REQUEST_HEADER_LEN: usize = 16;
/// Bytes in a reply header.
pub const REPLY_HEADER_LEN: usize = 20;
/// Largest request input the client sends (the biggest request struct is far smaller).
pub const MAX_INPUT: usize = 64 * 1024;
/// Largest output capacity the client asks for.
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;

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
    /// NTSTATUS of the request.
    pub status: u32,
    /// `IoStatus.Information`: bytes written, or required for STATUS_BUFFER_TOO_SMALL.
    pub information: u64,
    /// Output bytes that follow.
    pub output_len: u32,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside a frame.
    #[error("connection closed after {got} of {expected} bytes of a frame")]
    Truncated {
        /// Bytes of the frame received.
        got: usize,
        /// Bytes the frame needed.
        expected: usize,
    },
    /// The stream ended cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The frame does not start with [`FRAME_MAGIC`].
    #[error("bad frame magic 0x{0:08x} (expected 0x{FRAME_MAGIC:08x})")]
    BadMagic(u32),
    /// A length field is larger than allowed.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Which length.
        what: &'static str,
        /// Its value.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A read or write failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

fn len_u32(what: &'static str, len: usize, max: usize) -> Result<u32, FrameError> {
    if len > max {
        return Err(FrameError::TooLong {
            what,
            len: len as u64,
            max: max as u64,
        });
    }
    u32::try_from(len).map_err(|_| FrameError::TooLong {
        what,
        len: len as u64,
        max: u64::from(u32::MAX),
    })
}

/// Encodes a request frame.
pub fn encode_request(
    code: u32,
    input: &[u8],
    output_capacity: usize,
) -> Result<Vec<u8>, FrameError> {
    let input_len = len_u32("request input", input.len(), MAX_INPUT)?;
    let cap = len_u32("output capacity", output_capacity, MAX_OUTPUT)?;
    let mut f = Vec::with_capacity(REQUEST_HEADER_LEN + input.len());
    f.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    f.extend_from_slice(&code.to_le_bytes());
    f.extend_from_slice(&input_len.to_le_bytes());
    f.extend_from_slice(&cap.to_le_bytes());
    f.extend_from_slice(input);
    Ok(f)
}

/// Encodes a reply frame (used by test servers; the real server is the host's).
pub fn encode_reply(status: u32, information: u64, output: &[u8]) -> Vec<u8> {
    let len = u32::try_from(output.len()).unwrap_or(u32::MAX);
    let mut f = Vec::with_capacity(REPLY_HEADER_LEN + output.len());
    f.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    f.extend_from_slice(&status.to_le_bytes());
    f.extend_from_slice(&information.to_le_bytes());
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(output.get(..len as usize).unwrap_or(output));
    f
}

/// Decodes a request header.
pub fn decode_request_header(b: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, FrameError> {
    let magic = u32_at(b, 0);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    Ok(RequestHeader {
        code: u32_at(b, 4),
        input_len: u32_at(b, 8),
        output_capacity: u32_at(b, 12),
    })
}

/// Decodes a reply header.
pub fn decode_reply_header(b: &[u8; REPLY_HEADER_LEN]) -> Result<ReplyHeader, FrameError> {
    let magic = u32_at(b, 0);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    Ok(ReplyHeader {
        status: u32_at(b, 4),
        information: u64_at(b, 8),
        output_len: u32_at(b, 16),
    })
}

/// Fills `buf` from `r`. `before` bytes of the frame were read already (for the message);
/// `clean_eof` allows an end of stream before the first byte.
fn read_full(
    r: &mut impl Read,
    buf: &mut [u8],
    before: usize,
    total: usize,
    clean_eof: bool,
) -> Result<(), FrameError> {
    let mut got = 0usize;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match r.read(rest) {
            Ok(0) if got == 0 && before == 0 && clean_eof => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got: before + got,
                    expected: total,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Reads one reply frame whose output may be at most `max_output` bytes.
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
    let mut out = vec![0u8; len];
    read_full(r, &mut out, REPLY_HEADER_LEN, REPLY_HEADER_LEN + len, false)?;
    Ok((header, out))
}

/// Reads one request frame; [`FrameError::Closed`] when the peer hung up between frames.
pub fn read_request(r: &mut impl Read) -> Result<(RequestHeader, Vec<u8>), FrameError> {
    let mut h = [0u8; REQUEST_HEADER_LEN];
    read_full(r, &mut h, 0, REQUEST_HEADER_LEN, true)?;
    let header = decode_request_header(&h)?;
    let len = header.input_len as usize;
    if len > MAX_INPUT {
        return Err(FrameError::TooLong {
            what: "request input",
            len: len as u64,
            max: MAX_INPUT as u64,
        });
    }
    let mut input = vec![0u8; len];
    read_full(
        r,
        &mut input,
        REQUEST_HEADER_LEN,
        REQUEST_HEADER_LEN + len,
        false,
    )?;
    Ok((header, input))
}

/// Writes a whole frame.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame)?;
    w.flush()?;
    Ok(())
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
        let f = encode_reply(0xC000_0023, 1234, &[9; 7]);
        let (h, out) = read_reply(&mut &f[..], 100).unwrap();
        assert_eq!(
            h,
            ReplyHeader {
                status: 0xC000_0023,
                information: 1234,
                output_len: 7
            }
        );
        assert_eq!(out, [9; 7]);
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
