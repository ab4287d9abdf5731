//! The HTTP/1.1 body decoder: a body framed by Content-Length, by chunked transfer coding (with
//! chunk extensions and trailers), or by the close of the connection (RFC 9112 §6.3, §7.1).
//!
//! It reads from a connection's read buffer, consuming from the front; data frames are split off
//! that buffer without a copy. Bytes past the end of the body are left in the buffer: whether
//! they are the next pipelined message or an upstream's extra bytes is the caller's decision.
//! The chunked grammar is RFC 9112's, strictly: 1–16 hex digits for the size (no sign, `0x` or
//! whitespace, so no u64 overflow), extensions `;name[=value]` with tokens or quoted strings
//! only, CRLF exactly where the grammar puts one (a bare LF or CR is an error, as is anything
//! else), trailers that `httparse` accepts with CRLF line ends. Every line and the trailer
//! section are bounded, so a peer cannot make the decoder buffer without end.

use bytes::{Buf, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use super::FramingError;

/// The longest chunk-size line with its extensions (and CRLF) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section accepted (Envoy's `max_request_headers_kb` default: 60 KiB).
pub(crate) const MAX_TRAILER_BYTES: usize = 60 * 1024;
/// The most trailer fields accepted (Envoy's `max_headers_count` default: 100).
pub(crate) const MAX_TRAILERS: usize = 100;

/// Where a chunked body is in its grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: the bytes still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataCrlf,
    /// After the last chunk: the trailer section and its final CRLF.
    Trailers,
    /// The whole body was read.
    Done,
}

/// The framing of one message body, and how far it has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// Content-Length: the bytes still to come.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked(ChunkState),
    /// Delimited by the close of the connection (a response without length); `true` once closed.
    Eof(bool),
}

impl Decoder {
    /// A body of exactly `n` bytes.
    pub(crate) fn length(n: u64) -> Decoder {
        Decoder::Length(n)
    }

    /// A chunked body.
    pub(crate) fn chunked() -> Decoder {
        Decoder::Chunked(ChunkState::Size)
    }

    /// A body that ends when the peer closes.
    pub(crate) fn eof() -> Decoder {
        Decoder::Eof(false)
    }

    /// Whether the whole body was read.
    pub(crate) fn is_done(&self) -> bool {
        matches!(
            self,
            Decoder::Length(0) | Decoder::Chunked(ChunkState::Done) | Decoder::Eof(true)
        )
    }

    /// Whether the body ends only when the connection closes (so the connection cannot be reused).
    pub(crate) fn is_eof(&self) -> bool {
        matches!(self, Decoder::Eof(_))
    }

    /// The bytes still to come, when the framing says (Content-Length).
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// Takes what it can from `buf` (a connection's read buffer, consumed from the front,
    /// zero-copy for data). `Ok(Some(frame))`: data (never empty) or trailers; `Ok(None)`: needs
    /// more bytes, unless [`Decoder::is_done`].
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<bytes::Bytes>>, FramingError> {
        match self {
            Decoder::Length(0) | Decoder::Eof(true) => Ok(None),
            Decoder::Length(rem) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*rem).min(buf.len() as u64) as usize;
                *rem -= n as u64;
                Ok(Some(Frame::data(buf.split_to(n).freeze())))
            }
            Decoder::Eof(false) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Frame::data(buf.split().freeze())))
            }
            Decoder::Chunked(state) => decode_chunked(state, buf),
        }
    }

    /// The peer closed: fine for [`Decoder::eof`] bodies (then done), and for a body already
    /// read whole; [`FramingError::Incomplete`] otherwise.
    pub(crate) fn at_eof(&mut self) -> Result<(), FramingError> {
        match self {
            Decoder::Eof(done) => {
                *done = true;
                Ok(())
            }
            _ if self.is_done() => Ok(()),
            _ => Err(FramingError::Incomplete),
        }
    }
}

fn decode_chunked(
    state: &mut ChunkState,
    buf: &mut BytesMut,
) -> Result<Option<Frame<bytes::Bytes>>, FramingError> {
    loop {
        match *state {
            ChunkState::Size => {
                let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                    if buf.len() >= MAX_CHUNK_LINE {
                        return Err(FramingError::TooLarge);
                    }
                    return Ok(None);
                };
                if lf == 0 || buf[lf - 1] != b'\r' {
                    return Err(FramingError::MissingCrlf);
                }
                let size = parse_size_line(&buf[..lf - 1])?;
                buf.advance(lf + 1);
                *state = if size == 0 {
                    ChunkState::Trailers
                } else {
                    ChunkState::Data(size)
                };
            }
            ChunkState::Data(rem) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = rem.min(buf.len() as u64) as usize;
                let left = rem - n as u64;
                *state = if left == 0 {
                    ChunkState::DataCrlf
                } else {
                    ChunkState::Data(left)
                };
                return Ok(Some(Frame::data(buf.split_to(n).freeze())));
            }
            ChunkState::DataCrlf => {
                match (buf.first(), buf.get(1)) {
                    (Some(b'\r'), Some(b'\n')) => buf.advance(2),
                    (None, _) | (Some(b'\r'), None) => return Ok(None),
                    _ => return Err(FramingError::MissingCrlf),
                }
                *state = ChunkState::Size;
            }
            ChunkState::Trailers => {
                match (buf.first(), buf.get(1)) {
                    (Some(b'\r'), Some(b'\n')) => {
                        buf.advance(2);
                        *state = ChunkState::Done;
                        return Ok(None);
                    }
                    (None, _) | (Some(b'\r'), None) => return Ok(None),
                    (Some(b'\r' | b'\n'), _) => return Err(FramingError::MissingCrlf),
                    _ => {}
                }
                let Some(trailers) = parse_trailers(buf)? else {
                    return Ok(None);
                };
                *state = ChunkState::Done;
                return Ok(Some(Frame::trailers(trailers)));
            }
            ChunkState::Done => return Ok(None),
        }
    }
}

/// `chunk-size [ chunk-ext ]` (the line without its CRLF) → the size.
fn parse_size_line(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(FramingError::BadChunkSize);
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        // At most 16 hex digits: the shifts cannot overflow.
        size = (size << 4) | u64::from((b as char).to_digit(16).unwrap_or(0));
    }
    let rest = &line[digits..];
    if rest.is_empty() {
        return Ok(size);
    }
    // Only an extension may follow the size, after optional whitespace (BWS).
    if skip_ws(rest).first() != Some(&b';') {
        return Err(FramingError::BadChunkSize);
    }
    check_extensions(rest)?;
    Ok(size)
}

/// `*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )` (RFC 9112 §7.1.1).
fn check_extensions(mut s: &[u8]) -> Result<(), FramingError> {
    const BAD: FramingError = FramingError::BadChunkExtension;
    while !s.is_empty() {
        s = skip_ws(s);
        s = s.strip_prefix(b";").ok_or(BAD)?;
        s = skip_ws(s);
        let name = token_len(s);
        if name == 0 {
            return Err(BAD);
        }
        s = &s[name..];
        let after = skip_ws(s);
        if let Some(v) = after.strip_prefix(b"=") {
            let v = skip_ws(v);
            let n = if v.first() == Some(&b'"') {
                quoted_len(v).ok_or(BAD)?
            } else {
                token_len(v)
            };
            if n == 0 {
                return Err(BAD);
            }
            s = &v[n..];
        }
    }
    Ok(())
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token_len(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| is_tchar(b)).count()
}

/// The length of the `quoted-string` at the start of `s` (RFC 9110 §5.6.4), if it is one.
fn quoted_len(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' => match s.get(i + 1) {
                Some(&c) if c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80 => {
                    i += 2
                }
                _ => return None,
            },
            c if c == b'\t'
                || c == b' '
                || c == 0x21
                || (0x23..=0x7e).contains(&c)
                || c >= 0x80 =>
            {
                i += 1
            }
            _ => return None,
        }
    }
    None
}

/// The trailer section (`*( field-line CRLF ) CRLF`) at the front of `buf`, consumed when
/// complete; `None` while more bytes are needed.
#[inline(never)]
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, FramingError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
            return Err(FramingError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::TooLarge),
        Err(_) => return Err(FramingError::BadTrailer),
    };
    if len > MAX_TRAILER_BYTES {
        return Err(FramingError::TooLarge);
    }
    // httparse accepts a bare LF as a line end; RFC 9112 framing does not.
    let section = &buf[..len];
    if section
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'))
    {
        return Err(FramingError::MissingCrlf);
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields.iter() {
        let name =
            HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| FramingError::BadTrailer)?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| FramingError::BadTrailer)?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, Bytes};

    /// What a decoder made of an input: the data, the trailers, how it ended, the bytes left.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        end: Result<bool, FramingError>,
        left: Vec<u8>,
    }

    /// Feeds `pieces` in order, decoding after each, then reports (done or not, or the error).
    fn run(mut d: Decoder, pieces: &[&[u8]]) -> Outcome {
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        for p in pieces {
            buf.put_slice(p);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(f)) => match f.into_data() {
                        Ok(b) => {
                            assert!(!b.is_empty(), "empty data frame");
                            data.extend_from_slice(&b)
                        }
                        Err(f) => {
                            assert!(trailers.is_none(), "two trailer frames");
                            trailers = Some(f.into_trailers().unwrap());
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        // What is left after an error depends on what had arrived: not compared.
                        return Outcome {
                            data,
                            trailers,
                            end: Err(e),
                            left: Vec::new(),
                        };
                    }
                }
            }
        }
        Outcome {
            data,
            trailers,
            end: Ok(d.is_done()),
            left: buf.to_vec(),
        }
    }

    fn whole(d: Decoder, input: &[u8]) -> Outcome {
        run(d, &[input])
    }

    /// The outcome of `input` is the same whatever the split points: every two-piece split and
    /// one byte at a time. The data may come in different frames; what is decoded may not differ.
    fn same_at_every_split(d: Decoder, input: &[u8]) -> Outcome {
        let expected = whole(d.clone(), input);
        for i in 0..=input.len() {
            let got = run(d.clone(), &[&input[..i], &input[i..]]);
            assert_eq!(
                got,
                expected,
                "split at {i} of {:?}",
                Bytes::copy_from_slice(input)
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(d, &bytes), expected, "byte by byte");
        expected
    }

    #[test]
    fn length_body_stops_at_its_length() {
        let o = same_at_every_split(Decoder::length(5), b"helloGET /");
        assert_eq!(o.data, b"hello");
        assert_eq!(o.end, Ok(true));
        assert_eq!(o.left, b"GET /");
        assert_eq!(whole(Decoder::length(0), b"x").end, Ok(true));
        let mut d = Decoder::length(3);
        assert_eq!(d.at_eof(), Err(FramingError::Incomplete));
        assert_eq!(Decoder::length(0).at_eof(), Ok(()));
    }

    #[test]
    fn eof_body_takes_everything_until_close() {
        let o = same_at_every_split(Decoder::eof(), b"all of it\r\n0\r\n\r\n");
        assert_eq!(o.data, b"all of it\r\n0\r\n\r\n");
        assert_eq!(o.end, Ok(false));
        let mut d = Decoder::eof();
        assert!(!d.is_done());
        assert_eq!(d.at_eof(), Ok(()));
        assert!(d.is_done());
    }

    #[test]
    fn chunked_bodies_decode_at_every_split() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT",
                b"hello world",
            ),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (
                b"000000000000000a\r\n0123456789\r\n0000\r\n\r\n",
                b"0123456789",
            ),
            (b"0\r\n\r\n", b""),
            (b"3;ext\r\nabc\r\n0;last\r\n\r\n", b"abc"),
            (b"3;a=b;c=\"d e\";f\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"3 ; a = b\t;c=\"q\\\"x\"\r\nabc\r\n0\r\n\r\n", b"abc"),
        ];
        for (input, data) in ok {
            let o = same_at_every_split(Decoder::chunked(), input);
            assert_eq!(o.end, Ok(true), "{:?}", Bytes::copy_from_slice(input));
            assert_eq!(&o.data, data);
            assert_eq!(o.trailers, None);
        }
        let o = same_at_every_split(Decoder::chunked(), b"5\r\nhello\r\n0\r\n\r\nNEXT");
        assert_eq!(
            o.left, b"NEXT",
            "bytes after the body are left for the caller"
        );
    }

    #[test]
    fn chunked_trailers_become_one_frame() {
        let o = same_at_every_split(
            Decoder::chunked(),
            b"2\r\nok\r\n0\r\ngrpc-status: 0\r\nx-a: 1\r\nx-a: 2\r\n\r\nrest",
        );
        assert_eq!(o.end, Ok(true));
        let t = o.trailers.unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t.get_all("x-a").iter().count(), 2);
        assert_eq!(o.left, b"rest");
    }

    #[test]
    fn every_malformed_chunk_form_is_an_error() {
        use FramingError::*;
        let bad: &[(&[u8], FramingError)] = &[
            // sizes
            (b"-5\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"+5\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"\t5\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"5 \r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"g\r\n", BadChunkSize),
            (b"5g\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"1_0\r\n", BadChunkSize),
            (b"00000000000000005\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"10000000000000000\r\n", BadChunkSize),
            (b"5,5\r\n", BadChunkSize),
            (b"5\x00\r\n", BadChunkSize),
            // extensions
            (b"5;\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;=v\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a=\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a b\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a=b c\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a=\"open\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a=\"x\x01\"\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a=\"x\\\x7f\"\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a=\"x\"y\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a\x00\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a@b\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a;\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            (b"5;a\rb\r\nhello\r\n0\r\n\r\n", BadChunkExtension),
            // line ends
            (b"5\nhello\r\n0\r\n\r\n", MissingCrlf),
            (b"5\r\r\nhello\r\n0\r\n\r\n", BadChunkSize),
            (b"5\rhello\r\n0\r\n\r\n", BadChunkSize),
            (b"\n", MissingCrlf),
            (b"5\r\nhelloX\r\n0\r\n\r\n", MissingCrlf),
            (b"5\r\nhello\n0\r\n\r\n", MissingCrlf),
            (b"5\r\nhello\r\r\n0\r\n\r\n", MissingCrlf),
            (b"5\r\nhello\r\n0\n\r\n", MissingCrlf),
            (b"5\r\nhello\r\n0\r\n\n", MissingCrlf),
            (b"5\r\nhello\r\n0\r\n\rX", MissingCrlf),
            (b"5\r\nhellohello\r\n0\r\n\r\n", MissingCrlf),
            // trailers
            (b"0\r\na: b\n\r\n", MissingCrlf),
            (b"0\r\na: b\r\n\n", MissingCrlf),
            (b"0\r\na: b\r\n c\r\n\r\n", BadTrailer),
            (b"0\r\na : b\r\n\r\n", BadTrailer),
            (b"0\r\na: b\x00c\r\n\r\n", BadTrailer),
            (b"0\r\na: b\x01c\r\n\r\n", BadTrailer),
            (b"0\r\na: b\rc\r\n\r\n", BadTrailer),
            (b"0\r\n: b\r\n\r\n", BadTrailer),
            (b"0\r\na b: c\r\n\r\n", BadTrailer),
            (b"0\r\nnocolon\r\n\r\n", BadTrailer),
        ];
        for (input, err) in bad {
            let o = same_at_every_split(Decoder::chunked(), input);
            assert_eq!(o.end, Err(*err), "{:?}", Bytes::copy_from_slice(input));
        }
    }

    #[test]
    fn lines_and_trailer_sections_are_bounded() {
        let mut long = b"5".to_vec();
        long.resize(MAX_CHUNK_LINE + 1, b';');
        assert_eq!(
            whole(Decoder::chunked(), &long).end,
            Err(FramingError::TooLarge)
        );
        let mut long_ext = b"5;a=".to_vec();
        long_ext.resize(MAX_CHUNK_LINE + 10, b'x');
        long_ext.extend_from_slice(b"\r\n");
        assert_eq!(
            whole(Decoder::chunked(), &long_ext).end,
            Err(FramingError::TooLarge)
        );

        let mut many = b"0\r\n".to_vec();
        for i in 0..=MAX_TRAILERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            whole(Decoder::chunked(), &many).end,
            Err(FramingError::TooLarge)
        );

        let mut big = b"0\r\nx-big: ".to_vec();
        big.resize(MAX_TRAILER_BYTES + 10, b'v');
        assert_eq!(
            whole(Decoder::chunked(), &big).end,
            Err(FramingError::TooLarge)
        );
    }

    #[test]
    fn a_cut_body_is_incomplete_at_eof() {
        for input in [
            &b"5\r\nhel"[..],
            b"5\r\nhello",
            b"5\r\nhello\r\n",
            b"0\r\n",
            b"0\r\na: b\r\n",
        ] {
            let mut d = Decoder::chunked();
            let mut buf = BytesMut::from(input);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
            assert!(!d.is_done());
            assert_eq!(d.at_eof(), Err(FramingError::Incomplete));
        }
    }

    #[test]
    fn a_large_chunk_size_is_read_as_it_comes() {
        let o = whole(Decoder::chunked(), b"ffffffffffffffff\r\nabc");
        assert_eq!(o.data, b"abc");
        assert_eq!(o.end, Ok(false));
    }
}
