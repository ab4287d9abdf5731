//! The HTTP/1.1 body encoder: frames a body for the wire as Content-Length, chunked (with
//! trailers) or close-delimited, without copying the data: it writes the framing bytes (a
//! chunk-size line, the last chunk and trailers) into a buffer the caller sends around the data,
//! vectored. A Content-Length body that gets more or fewer bytes than declared is an error, so a
//! message never goes out with a length that lies.

use bytes::{BufMut, BytesMut};
use http::HeaderMap;

use super::FramingError;

/// How one message body is framed on the wire, and how far it has been sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Encoder {
    /// Content-Length: the bytes still to send.
    Length(u64),
    /// Transfer-Encoding: chunked; `true` while the last [`Encoder::data`] opened a chunk (its
    /// CRLF is the [`Encoder::tail`]).
    Chunked(bool),
    /// Delimited by closing the connection (HTTP/1.0 peers, a response without length).
    Eof,
    /// No body may be sent (HEAD, 204, 304, a GET without body and framing headers).
    Empty,
}

impl Encoder {
    /// A body of exactly `n` bytes.
    pub(crate) fn length(n: u64) -> Encoder {
        Encoder::Length(n)
    }

    /// A chunked body.
    pub(crate) fn chunked() -> Encoder {
        Encoder::Chunked(false)
    }

    /// A body that ends when the connection closes.
    pub(crate) fn eof() -> Encoder {
        Encoder::Eof
    }

    /// No body.
    pub(crate) fn empty() -> Encoder {
        Encoder::Empty
    }

    /// Whether the body is chunked (only then can trailers go out).
    pub(crate) fn is_chunked(&self) -> bool {
        matches!(self, Encoder::Chunked(_))
    }

    /// Frames `data` for the wire: writes any prefix (chunk-size line) into `head`; the caller
    /// writes `head` then `data` then [`Encoder::tail`] (vectored). Errors if a Length body gets
    /// more bytes than declared, or an empty one any.
    pub(crate) fn data(&mut self, len: usize, head: &mut BytesMut) -> Result<(), FramingError> {
        match self {
            Encoder::Length(rem) => {
                *rem = rem.checked_sub(len as u64).ok_or(FramingError::TooLong)?;
            }
            Encoder::Chunked(open) => {
                // An empty chunk would be the last chunk: nothing is sent for empty data.
                *open = len > 0;
                if len > 0 {
                    put_hex(head, len as u64);
                    head.put_slice(b"\r\n");
                }
            }
            Encoder::Eof => {}
            Encoder::Empty if len == 0 => {}
            Encoder::Empty => return Err(FramingError::TooLong),
        }
        Ok(())
    }

    /// What follows the data of the last [`Encoder::data`] call on the wire (a chunk's CRLF).
    pub(crate) fn tail(&self) -> &'static [u8] {
        match self {
            Encoder::Chunked(true) => b"\r\n",
            _ => b"",
        }
    }

    /// The end of the body: the last chunk with trailers (chunked), or checks a Length body got
    /// every byte. Trailers of a body that is not chunked cannot be sent and are dropped (as
    /// HTTP/1.1 peers do).
    pub(crate) fn end(
        &mut self,
        trailers: Option<&HeaderMap>,
        out: &mut BytesMut,
    ) -> Result<(), FramingError> {
        match self {
            Encoder::Length(0) | Encoder::Eof | Encoder::Empty => Ok(()),
            Encoder::Length(_) => Err(FramingError::Incomplete),
            Encoder::Chunked(_) => {
                out.put_slice(b"0\r\n");
                for (name, value) in trailers.into_iter().flatten() {
                    out.put_slice(name.as_str().as_bytes());
                    out.put_slice(b": ");
                    out.put_slice(value.as_bytes());
                    out.put_slice(b"\r\n");
                }
                out.put_slice(b"\r\n");
                // Ended once: a second `end` writes nothing.
                *self = Encoder::Length(0);
                Ok(())
            }
        }
    }
}

/// `n` in lower-case hex, without leading zeros.
fn put_hex(out: &mut BytesMut, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::super::decode::Decoder;
    use super::*;

    /// Encodes `chunks` then `trailers` as one wire image.
    fn wire(mut e: Encoder, chunks: &[&[u8]], trailers: Option<&HeaderMap>) -> Vec<u8> {
        let mut out = BytesMut::new();
        for c in chunks {
            e.data(c.len(), &mut out).unwrap();
            out.put_slice(c);
            out.put_slice(e.tail());
        }
        e.end(trailers, &mut out).unwrap();
        out.to_vec()
    }

    #[test]
    fn chunked_frames_each_piece_and_ends_with_trailers() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let w = wire(Encoder::chunked(), &[b"hello", b"", &[b'x'; 26]], Some(&t));
        let mut expected = b"5\r\nhello\r\n1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n0\r\ngrpc-status: 0\r\n\r\n");
        assert_eq!(w, expected);
        assert_eq!(wire(Encoder::chunked(), &[], None), b"0\r\n\r\n");
    }

    #[test]
    fn what_the_encoder_writes_the_decoder_reads_back() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "abc".parse().unwrap());
        let w = wire(Encoder::chunked(), &[b"a", &[7u8; 70000], b"end"], Some(&t));
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::from(&w[..]);
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(f) = d.decode(&mut buf).unwrap() {
            match f.into_data() {
                Ok(b) => data.extend_from_slice(&b),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert!(d.is_done() && buf.is_empty());
        assert_eq!(data.len(), 1 + 70000 + 3);
        assert_eq!(trailers.unwrap()["x-sum"], "abc");
    }

    #[test]
    fn a_length_body_must_get_exactly_its_length() {
        assert_eq!(wire(Encoder::length(5), &[b"he", b"llo"], None), b"hello");
        let mut out = BytesMut::new();
        let mut e = Encoder::length(3);
        assert_eq!(e.data(4, &mut out), Err(FramingError::TooLong));
        let mut e = Encoder::length(3);
        e.data(2, &mut out).unwrap();
        assert_eq!(e.end(None, &mut out), Err(FramingError::Incomplete));
        assert!(out.is_empty(), "a length body has no framing bytes");
        let mut e = Encoder::empty();
        assert_eq!(e.data(1, &mut out), Err(FramingError::TooLong));
        assert_eq!(e.data(0, &mut out), Ok(()));
    }

    #[test]
    fn hex_sizes() {
        for (n, s) in [
            (1u64, "1"),
            (15, "f"),
            (16, "10"),
            (u64::MAX, "ffffffffffffffff"),
        ] {
            let mut out = BytesMut::new();
            put_hex(&mut out, n);
            assert_eq!(&out[..], s.as_bytes());
        }
    }
}
