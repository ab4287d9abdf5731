//! Tern's own HTTP/1 engine: framing and connection drivers on any `AsyncRead + AsyncWrite`,
//! without proxy policy. [`request`] parses request heads with the framing rules that keep a
//! request from meaning two things; [`server`] drives one downstream connection.

#[allow(dead_code)]
pub(crate) mod request;
// Until the listener serves with it (next commit).
#[allow(dead_code)]
pub(crate) mod server;
