//! One upstream HTTP/1.1 connection, driven by the task of the request that uses it: no
//! connection task, no channel. [`send`] serializes the request head from its `http` parts
//! straight into the connection's write buffer, sends the body with the [`Encoder`] (data is
//! written vectored, never copied) while it reads the response head, and returns the response
//! with a [`ResponseBody`] that reads from the connection with the [`Decoder`]. An answer that
//! comes before the request body went up (an early response) is returned at once; the body then
//! keeps going up as the response body is read, and what is left of it can be finished
//! elsewhere ([`ResponseBody::take_upload`]). Interim 1xx answers other than 101 are skipped, as
//! hyper's client does. The connection can be reused only when the response was read to its
//! end, the request went up whole, and no byte followed the response
//! ([`ResponseBody::take_reusable`]); an idle connection is checked for a close or stray bytes
//! before reuse ([`Conn::is_idle_ok`]).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Method;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::decode::Decoder;
use super::encode::Encoder;
use super::response::{self, HeadError};
use super::FramingError;
use crate::message::{Fields, Request, RequestParts, Response};

/// How much room a read asks for: one read takes what a typical response sends at once.
const READ_SIZE: usize = 16 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One upstream connection: the stream, its read and write buffers (kept across requests), and
/// `guard`, whatever must live exactly as long as the connection (its count in the stats).
pub(crate) struct Conn<S, G> {
    io: S,
    rbuf: BytesMut,
    /// Bytes to write before the current data (a head, a chunk-size line).
    wbuf: BytesMut,
    /// Bytes to write after the current data (a chunk's CRLF, the last chunk).
    wtail: BytesMut,
    /// Bytes of the current request written so far.
    written: u64,
    guard: G,
}

impl<S: AsyncRead + AsyncWrite + Unpin, G> Conn<S, G> {
    /// A connection on `io`; `guard` is dropped with it.
    pub(crate) fn new(io: S, guard: G) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            wtail: BytesMut::new(),
            written: 0,
            guard,
        }
    }

    /// Whether an idle connection can carry a request: the peer has not closed it and sent
    /// nothing unasked (a stray byte would be read as the next response's start).
    pub(crate) fn is_idle_ok(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        self.rbuf.reserve(READ_SIZE);
        matches!(
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.rbuf),
            Poll::Pending
        )
    }

    /// The stream, what was read past the response head, and the guard (an upgrade's tunnel).
    pub(crate) fn into_parts(self) -> (S, Bytes, G) {
        (self.io, self.rbuf.freeze(), self.guard)
    }

    /// Writes the write buffers and `data` (vectored), then flushes.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        while !(self.wbuf.is_empty() && data.is_empty() && self.wtail.is_empty()) {
            let bufs = [
                IoSlice::new(&self.wbuf),
                IoSlice::new(data),
                IoSlice::new(&self.wtail),
            ];
            let mut n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n as u64;
            let a = n.min(self.wbuf.len());
            self.wbuf.advance(a);
            n -= a;
            let b = n.min(data.len());
            data.advance(b);
            self.wtail.advance(n - b);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Reads more into the read buffer; `Ok(0)`: the peer closed.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 4 {
            self.rbuf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

/// Why an exchange failed before its response head.
#[derive(Debug)]
pub(crate) enum SendError<B> {
    /// Not a byte of the request was written: it can go on another connection as it is.
    Unsent(Request<B>),
    /// The connection failed (reset, or an I/O error).
    Io(io::Error),
    /// The upstream closed before a response head.
    Closed,
    /// The response head was refused (malformed, or framing that cannot be trusted).
    Head(HeadError),
    /// The request body failed (the client's side).
    Body(BoxError),
    /// The request body does not match its framing (a length that lies).
    Framing(FramingError),
}

impl<B> std::fmt::Display for SendError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unsent(_) => f.write_str("connection closed before the request was sent"),
            SendError::Io(e) => write!(f, "upstream connection: {e}"),
            SendError::Closed => f.write_str("upstream closed before a response"),
            SendError::Head(e) => write!(f, "{e}"),
            SendError::Body(e) => write!(f, "request body: {e}"),
            SendError::Framing(e) => write!(f, "request body: {e}"),
        }
    }
}

/// Why a response body ended early.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The connection failed.
    Io(io::Error),
    /// The body's framing is broken, or it was cut short ([`FramingError::Incomplete`]).
    Framing(FramingError),
    /// The request body, still going up, failed (the client's side).
    Upload(BoxError),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Io(e) => write!(f, "upstream connection: {e}"),
            BodyError::Framing(e) => write!(f, "upstream response body: {e}"),
            BodyError::Upload(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Io(e) => Some(e),
            BodyError::Framing(e) => Some(e),
            BodyError::Upload(e) => Some(e.as_ref()),
        }
    }
}

/// A request body on its way up: the body, its framing, the data being written.
pub(crate) struct Upload<B> {
    body: B,
    enc: Encoder,
    data: Bytes,
    ended: bool,
}

/// Why an upload stopped.
enum UploadError {
    Io(io::Error),
    Body(BoxError),
    Framing(FramingError),
}

impl<B> Upload<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes what is buffered, then the body's frames as they come, until the body's end is
    /// written and flushed.
    fn poll<S: AsyncRead + AsyncWrite + Unpin, G>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn<S, G>,
    ) -> Poll<Result<(), UploadError>> {
        loop {
            ready!(conn.poll_write_out(cx, &mut self.data)).map_err(UploadError::Io)?;
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            if self.body.is_end_stream() {
                self.end(None, conn)?;
                continue;
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.end(None, conn)?,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(UploadError::Body(e.into()))),
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => {
                        self.enc
                            .data(d.len(), &mut conn.wbuf)
                            .map_err(UploadError::Framing)?;
                        conn.wtail.put_slice(self.enc.tail());
                        self.data = d;
                        // The end goes out in the same write as the last data.
                        if self.body.is_end_stream() {
                            self.end(None, conn)?;
                        }
                    }
                    Err(f) => {
                        let trailers = f.into_trailers().ok();
                        self.end(trailers.as_ref(), conn)?;
                    }
                },
            }
        }
    }

    fn end<S, G>(
        &mut self,
        trailers: Option<&http::HeaderMap>,
        conn: &mut Conn<S, G>,
    ) -> Result<(), UploadError> {
        let out = match self.data.is_empty() {
            true => &mut conn.wbuf,
            false => &mut conn.wtail,
        };
        self.enc.end(trailers, out).map_err(UploadError::Framing)?;
        self.ended = true;
        Ok(())
    }
}

/// How the request body is framed, as hyper's client decides: the framing headers the request
/// has, else none for a body that is empty, else its exact length, else chunked. The second
/// value is a `content-length` to add to the head.
fn request_framing<B: Body>(h: &Fields, body: &B) -> (Encoder, Option<u64>) {
    if h.contains_key(TRANSFER_ENCODING) {
        return (Encoder::chunked(), None);
    }
    if let Some(v) = h.get(CONTENT_LENGTH) {
        let n = std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        // Checked by the server side already; an unreadable one cannot frame a body.
        return (n.map_or(Encoder::empty(), Encoder::length), None);
    }
    if body.is_end_stream() {
        return (Encoder::empty(), None);
    }
    match body.size_hint().exact() {
        Some(n) => (Encoder::length(n), Some(n)),
        None => (Encoder::chunked(), None),
    }
}

/// Serializes the request head into `out`: request line (origin-form, or the authority of a
/// CONNECT), the fields as they are, and the `content-length` framing adds.
fn write_head(parts: &RequestParts, length: Option<u64>, chunked: bool, out: &mut BytesMut) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    if parts.method == Method::CONNECT {
        if let Some(a) = parts.uri.authority() {
            out.put_slice(a.as_str().as_bytes());
        }
    } else {
        match parts.uri.path_and_query() {
            Some(pq) if !pq.as_str().is_empty() => out.put_slice(pq.as_str().as_bytes()),
            _ => out.put_u8(b'/'),
        }
    }
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if let Some(n) = length {
        out.put_slice(b"content-length: ");
        out.put_slice(super::server::itoa_u64(n, &mut [0u8; 20]));
        out.put_slice(b"\r\n");
    }
    if chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Sends `req` on `conn` and reads the response head (skipping interim 1xx answers other than
/// 101). The connection is the future's until it returns: dropped before, it closes.
///
/// The head is serialized before the future is made, and the future holds only what the
/// exchange needs (the connection, the body going up, the head for a retry elsewhere): an
/// `async fn` would hold its request twice (argument and local), and this future is part of
/// every proxied request's.
pub(crate) fn send<S, G, B>(
    mut conn: Box<Conn<S, G>>,
    req: Request<B>,
) -> impl std::future::Future<Output = Result<Response<ResponseBody<S, G, B>>, SendError<B>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let head_request = req.method() == Method::HEAD;
    let (parts, body) = req.into_parts();
    let (enc, length) = request_framing(&parts.headers, &body);
    // hyper adds `transfer-encoding: chunked` to a streamed body without length; forward.rs
    // already does for the bodies it streams.
    let add_chunked =
        matches!(enc, Encoder::Chunked(_)) && !parts.headers.contains_key(TRANSFER_ENCODING);
    conn.wbuf.clear();
    conn.wtail.clear();
    conn.written = 0;
    write_head(&parts, length, add_chunked, &mut conn.wbuf);
    let mut upload = Upload {
        body,
        enc,
        data: Bytes::new(),
        ended: false,
    };
    // Kept until a byte went out: the request can then go on another connection as it is.
    let mut parts = Some(parts);
    // Captured variables are used in place (a rebinding would copy them into the future).
    async move {
        // Set while the body still goes up.
        let mut uploading = true;
        // Set when writing failed: the upstream may still have answered (an early response).
        let mut write_error: Option<io::Error> = None;
        let head = std::future::poll_fn(|cx| loop {
            if uploading {
                match upload.poll(cx, &mut conn) {
                    Poll::Ready(Ok(())) => uploading = false,
                    Poll::Ready(Err(UploadError::Io(e))) => {
                        uploading = false;
                        if conn.written == 0 {
                            return Poll::Ready(Err(Err(e)));
                        }
                        write_error = Some(e);
                    }
                    Poll::Ready(Err(UploadError::Body(e))) => {
                        return Poll::Ready(Err(Ok(SendError::Body(e))))
                    }
                    Poll::Ready(Err(UploadError::Framing(e))) => {
                        return Poll::Ready(Err(Ok(SendError::Framing(e))))
                    }
                    Poll::Pending => {}
                }
                if conn.written > 0 {
                    parts = None;
                }
            }
            match response::parse(&mut conn.rbuf, head_request) {
                Ok(Some(h)) if h.parts.status.is_informational() && h.parts.status != 101 => {
                    continue
                }
                Ok(Some(h)) => return Poll::Ready(Ok(h)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(Ok(SendError::Head(e)))),
            }
            match conn.poll_read_more(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Ok(match write_error.take() {
                        Some(e) => SendError::Io(e),
                        None => SendError::Closed,
                    })))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Ok(SendError::Io(e)))),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        let head = match head {
            Ok(h) => h,
            Err(Ok(e)) => return Err(e),
            // The first write failed: nothing went out, the request can go elsewhere.
            Err(Err(e)) => {
                return Err(match parts.take() {
                    Some(p) if upload.data.is_empty() => {
                        SendError::Unsent(Request::from_parts(p, upload.body))
                    }
                    _ => SendError::Io(e),
                })
            }
        };
        // Boxed when still going up (an early answer, a large body): rare, and the response,
        // moved through every phase, stays small. (Not `then(|| ..)`: the closure would take a
        // copy of the upload on every request.)
        let upload = if uploading {
            Some(Box::new(upload))
        } else {
            drop(upload);
            None
        };
        let body = ResponseBody {
            conn: Some(conn),
            decoder: head.body,
            upload,
            reusable: head.reusable && write_error.is_none(),
            failed: false,
        };
        Ok(Response::from_parts(head.parts, body))
    }
}

/// A connection whose response was read whole, and the request body still to send on it.
pub(crate) type Unfinished<S, G, B> = (Box<Conn<S, G>>, Upload<B>);

/// A response body read from its connection; it also keeps an unfinished request body going up.
pub(crate) struct ResponseBody<S, G, B> {
    conn: Option<Box<Conn<S, G>>>,
    decoder: Decoder,
    upload: Option<Box<Upload<B>>>,
    reusable: bool,
    failed: bool,
}

impl<S, G, B> ResponseBody<S, G, B>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// The connection, if it can carry another request: the response read to its end, nothing
    /// after it, the request body sent whole, and the head allowing it.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<Conn<S, G>>> {
        let clean = self.decoder.is_done()
            && self.reusable
            && !self.failed
            && self.upload.is_none()
            && self.conn.as_ref().is_some_and(|c| c.rbuf.is_empty());
        if clean {
            self.conn.take()
        } else {
            None
        }
    }

    /// The connection and the rest of the request body, when the response was read whole
    /// before the body went up (it can be finished, then the connection closed).
    pub(crate) fn take_upload(&mut self) -> Option<Unfinished<S, G, B>> {
        let up = self.upload.take()?;
        Some((self.conn.take()?, *up))
    }

    /// The connection, after a `101 Switching Protocols`: the stream and what was read past the
    /// head belong to the tunnel.
    pub(crate) fn into_upgraded(mut self) -> Option<Conn<S, G>> {
        self.conn.take().map(|c| *c)
    }
}

impl<B> Upload<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Sends the rest of the body on `conn` (whose response was read whole); `false` if it
    /// failed.
    pub(crate) async fn finish<S: AsyncRead + AsyncWrite + Unpin, G>(
        mut self,
        conn: &mut Conn<S, G>,
    ) -> bool {
        std::future::poll_fn(|cx| self.poll(cx, conn)).await.is_ok()
    }
}

impl<S, G, B> Body for ResponseBody<S, G, B>
where
    S: AsyncRead + AsyncWrite + Unpin,
    G: Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if this.failed {
            return Poll::Ready(None);
        }
        if let Some(up) = this.upload.as_mut() {
            match up.poll(cx, conn) {
                Poll::Ready(Ok(())) => this.upload = None,
                // The upstream stopped reading the body: it may still answer in full; the
                // connection is not reused.
                Poll::Ready(Err(UploadError::Io(_) | UploadError::Framing(_))) => {
                    this.upload = None;
                    this.reusable = false;
                }
                Poll::Ready(Err(UploadError::Body(e))) => {
                    this.upload = None;
                    this.failed = true;
                    return Poll::Ready(Some(Err(BodyError::Upload(e))));
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.decoder.decode(&mut conn.rbuf) {
                Ok(Some(f)) => return Poll::Ready(Some(Ok(f))),
                Ok(None) if this.decoder.is_done() => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(BodyError::Framing(e))));
                }
            }
            match ready!(conn.poll_read_more(cx)) {
                Ok(0) => {
                    this.reusable = false;
                    if let Err(e) = this.decoder.at_eof() {
                        this.failed = true;
                        return Poll::Ready(Some(Err(BodyError::Framing(e))));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair on 127.0.0.1: the client side as a [`Conn`], the server side raw.
    async fn pair() -> (Box<Conn<TcpStream, ()>>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (Box::new(Conn::new(c, ())), s)
    }

    /// Reads from `s` until `buf` ends with `end`.
    async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        while !buf.ends_with(end) {
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&tmp[..n]);
        }
        buf
    }

    fn post(body: &'static str) -> Request<Full<Bytes>> {
        http::Request::post("/p")
            .header("host", "x")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
            .into()
    }

    #[tokio::test]
    async fn an_exchange_skips_100_continue_and_the_connection_serves_again() {
        let (conn, mut s) = pair().await;
        let server = tokio::spawn(async move {
            let got = read_until(&mut s, b"hello").await;
            assert_eq!(
                got,
                b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
            );
            s.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            )
            .await
            .unwrap();
            let got = read_until(&mut s, b"\r\n\r\n").await;
            assert!(got.starts_with(b"GET /p HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            s
        });
        let resp = send(conn, post("hello")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let Some(Ok(f)) = body.frame().await else {
            panic!("a data frame")
        };
        assert_eq!(f.into_data().unwrap(), "ok");
        assert!(body.is_end_stream());
        let mut conn = body.take_reusable().expect("a clean connection");
        assert!(conn.is_idle_ok());
        let get = http::Request::get("/p")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send(conn, get.into()).await.unwrap();
        assert_eq!(resp.status(), 204);
        assert!(resp.body().is_end_stream());
        let _s = server.await.unwrap();
    }

    #[tokio::test]
    async fn bytes_after_the_body_or_a_close_make_the_connection_unusable() {
        let (conn, mut s) = pair().await;
        tokio::spawn(async move {
            read_until(&mut s, b"\r\n\r\n").await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")
                .await
                .unwrap();
            let _ = s.read(&mut [0u8; 16]).await;
        });
        let get = http::Request::get("/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut body = send(conn, get.into()).await.unwrap().into_body();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ok"
        );
        assert!(body.take_reusable().is_none());

        let (conn, mut s) = pair().await;
        let server = tokio::spawn(async move {
            read_until(&mut s, b"\r\n\r\n").await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            // Closes once the answer is out.
        });
        let get = http::Request::get("/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut body = send(conn, get.into()).await.unwrap().into_body();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ok"
        );
        let mut conn = body.take_reusable().expect("clean when read");
        server.await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while conn.is_idle_ok() {
            assert!(std::time::Instant::now() < deadline, "the close is seen");
            tokio::task::yield_now().await;
        }
    }

    /// A request body fed by a channel: data as it is sent, the end when the sender drops.
    #[derive(Debug)]
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    #[tokio::test]
    async fn an_early_answer_returns_while_the_body_goes_up_and_the_rest_can_follow() {
        let (conn, mut s) = pair().await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let server = tokio::spawn(async move {
            read_until(&mut s, b"5\r\nfirst\r\n").await;
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            read_until(&mut s, b"4\r\nlast\r\n0\r\n\r\n").await;
        });
        let req = http::Request::post("/up").body(Fed(rx)).unwrap().into();
        let resp = send(conn, req).await.unwrap();
        assert_eq!(resp.status(), 413);
        let mut body = resp.into_body();
        assert!(body.is_end_stream());
        assert!(body.take_reusable().is_none(), "the body is still going up");
        let (mut conn, upload) = body.take_upload().expect("the rest of the upload");
        tx.send(Bytes::from_static(b"last")).await.unwrap();
        drop(tx);
        assert!(upload.finish(&mut conn).await);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_request_hands_it_back_unsent() {
        let (conn, s) = pair().await;
        // A reset (not a FIN): the first write fails.
        // Zero linger: the close is a reset and does not block.
        #[allow(deprecated)]
        s.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(s);
        let mut conn = conn;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while conn.is_idle_ok() {
            assert!(std::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        // Forced onto the reset connection anyway: nothing was written, the request is not lost.
        match send(conn, post("hello")).await {
            Err(SendError::Unsent(r)) => assert_eq!(r.uri(), "/p"),
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }
}
