//! Reading and writing host-endpoint frames on the client side. The frame format itself —
//! header layout, magic, limits, encoders and decoders — is [`iosv::frame`], shared with
//! the host's server; this module adds stream reading that tells a clean close between
//! frames from a truncated frame, and errors that say which.

use std::io::{self, Read, Write};

pub use iosv::frame::{
    decode_reply_header, decode_request_header, encode_reply, ReplyHeader, RequestHeader,
    FRAME_MAGIC, REPLY_HEADER_LEN, REQUEST_HEADER_LEN,
};

/// Largest request input the client sends (the biggest request struct is far smaller).
pub const MAX_INPUT: usize = iosv::frame::MAX_INPUT as usize;
/// Largest output capacity the client asks for.
pub const MAX_OUTPUT: usize = iosv::frame::MAX_OUTPUT as usize;

/// Why a frame could not be read or written.
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

impl From<iosv::frame::FrameError> for FrameError {
    fn from(e: iosv::frame::FrameError) -> Self {
        match e {
            iosv::frame::FrameError::BadMagic(m) => FrameError::BadMagic(m),
            iosv::frame::FrameError::InputTooLarge(n) => FrameError::TooLong {
                what: "request input",
                len: u64::from(n),
                max: MAX_INPUT as u64,
            },
            iosv::frame::FrameError::OutputTooLarge(n) => FrameError::TooLong {
                what: "output",
                len: u64::from(n),
                max: MAX_OUTPUT as u64,
            },
        }
    }
}

/// Encodes a request frame.
pub fn encode_request(
    code: u32,
    input: &[u8],
    output_capacity: usize,
) -> Result<Vec<u8>, FrameError> {
    if input.len() > MAX_INPUT {
        return Err(FrameError::TooLong {
            what: "request input",
            len: input.len() as u64,
            max: MAX_INPUT as u64,
        });
    }
    if output_capacity > MAX_OUTPUT {
        return Err(FrameError::TooLong {
            what: "output capacity",
            len: output_capacity as u64,
            max: MAX_OUTPUT as u64,
        });
    }
    let cap = u32::try_from(output_capacity).unwrap_or(u32::MAX);
    Ok(iosv::frame::encode_request(code, input, cap)?)
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
