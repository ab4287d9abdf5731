//! An HTTP message as the request path carries it: the head's fields in the order they arrived
//! ([`Fields`]), and the [`Request`] / [`Response`] that hold them.
//!
//! Why not `http::HeaderMap` (issue 17): a proxy reads a few fields of each head and forwards the
//! rest. A hash map hashes every name on the way in, allocates an index table beside its entries
//! and regroups repeated names, and each of its values is a `HeaderValue` (a reference count on
//! the read buffer, and a second check of bytes the parser already accepted): work that a
//! forwarded head never uses, about a fifth of a proxied request's instructions. `Fields` keeps a
//! parsed head's bytes once and its fields as a list in arrival order, each value an offset into
//! those bytes; a lookup is a short scan comparing names (a known name is one byte), Tern's edits
//! change the list in place, and the head goes out in the order it came in. Values set on the
//! request path are `HeaderValue`s. hyper's HTTP/2 and the `http` crate's types stay at the
//! edges: [`Fields`] converts from and into a `HeaderMap` there. Trailers stay `HeaderMap`s:
//! rare, and `http_body` frames carry them.
//!
//! The methods mirror `HeaderMap`'s (`get`, `get_all`, `insert`, `append`, `remove`, ...), with
//! the same meanings, so the request path reads as it did; values are lent as [`Value`]s (bytes,
//! text, or an owned `HeaderValue` on demand), and [`Fields::iter`] yields fields in arrival
//! order (repeated names are not regrouped), as the wire does.

use std::fmt;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Extensions, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

/// A field name to look up: a `HeaderName` (compared as one), or a `&str` in any case.
pub(crate) trait Key {
    fn matches(&self, name: &HeaderName) -> bool;
}

impl Key for HeaderName {
    #[inline]
    fn matches(&self, name: &HeaderName) -> bool {
        self == name
    }
}

impl Key for &HeaderName {
    #[inline]
    fn matches(&self, name: &HeaderName) -> bool {
        *self == name
    }
}

impl Key for &str {
    #[inline]
    fn matches(&self, name: &HeaderName) -> bool {
        // Names are kept lowercase; a `&str` key may not be.
        name.as_str().eq_ignore_ascii_case(self)
    }
}

/// A field name to add: a `HeaderName`, or a `&'static str` (lowercase; as `HeaderMap` takes).
pub(crate) trait IntoName {
    fn into_name(self) -> HeaderName;
}

impl IntoName for HeaderName {
    #[inline]
    fn into_name(self) -> HeaderName {
        self
    }
}

impl IntoName for &HeaderName {
    #[inline]
    fn into_name(self) -> HeaderName {
        self.clone()
    }
}

impl IntoName for &'static str {
    #[inline]
    fn into_name(self) -> HeaderName {
        HeaderName::from_static(self)
    }
}

/// Reads the first value of a name from a head's [`Fields`] or a trailers' `HeaderMap`, for the
/// few readers (gRPC status) that look at both.
pub(crate) trait Lookup {
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;
}

impl Lookup for HeaderMap {
    #[inline]
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
}

impl Lookup for Fields {
    #[inline]
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(Value::as_bytes)
    }
}

/// Where a field's value is.
#[derive(Clone, Debug)]
enum Val {
    /// `block[at..at + len]` of the head it was parsed from: no copy, no reference count of its
    /// own, no second validation (the parser accepted only field-value bytes).
    Raw { at: u32, len: u32 },
    /// A value the request path set.
    Owned(HeaderValue),
}

/// A message head's fields, in order. See the module documentation.
#[derive(Clone, Default)]
pub(crate) struct Fields {
    /// The parsed head the raw values are in (empty when none is).
    block: Bytes,
    list: Vec<(HeaderName, Val)>,
}

/// A field's value as [`Fields`] lends it: its bytes, and a `HeaderValue` when one is needed.
#[derive(Clone, Copy)]
pub(crate) struct Value<'a> {
    block: &'a Bytes,
    val: &'a Val,
}

/// A value that is not visible ASCII ([`Value::to_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotText;

impl<'a> Value<'a> {
    #[inline]
    pub(crate) fn as_bytes(self) -> &'a [u8] {
        match self.val {
            Val::Raw { at, len } => &self.block[*at as usize..(*at + *len) as usize],
            Val::Owned(v) => v.as_bytes(),
        }
    }

    /// The value as text when it is visible ASCII (and tabs), as `HeaderValue::to_str`.
    pub(crate) fn to_str(self) -> Result<&'a str, NotText> {
        let b = match self.val {
            Val::Owned(v) => return v.to_str().map_err(|_| NotText),
            Val::Raw { .. } => self.as_bytes(),
        };
        if b.iter().all(|&c| c == b'\t' || (b' '..=b'~').contains(&c)) {
            std::str::from_utf8(b).map_err(|_| NotText)
        } else {
            Err(NotText)
        }
    }

    #[inline]
    pub(crate) fn len(self) -> usize {
        self.as_bytes().len()
    }

    #[inline]
    pub(crate) fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// An owned `HeaderValue` of it (a raw one shares the head's bytes).
    pub(crate) fn to_owned(self) -> HeaderValue {
        match self.val {
            Val::Owned(v) => v.clone(),
            Val::Raw { at, len } => {
                let bytes = self.block.slice(*at as usize..(*at + *len) as usize);
                // The parser accepted only field-value bytes, which `HeaderValue` accepts too:
                // the fallback is never taken.
                HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static(""))
            }
        }
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Value<'_>) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<str> for Value<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Value<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<HeaderValue> for Value<'_> {
    fn eq(&self, other: &HeaderValue) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Fields {
    pub(crate) fn new() -> Fields {
        Fields::default()
    }

    pub(crate) fn with_capacity(n: usize) -> Fields {
        Fields {
            block: Bytes::new(),
            list: Vec::with_capacity(n),
        }
    }

    /// Adds a line whose value is `[at..at + len]` of `block` (the head given to
    /// [`Self::set_block`]) as an owned `HeaderValue` sharing its bytes: for a value the request
    /// path reads as text or keeps (Host), which a raw value would validate each time.
    pub(crate) fn push_shared(
        &mut self,
        name: HeaderName,
        block: &Bytes,
        at: usize,
        len: usize,
    ) -> Result<(), http::header::InvalidHeaderValue> {
        let v = HeaderValue::from_maybe_shared(block.slice(at..at + len))?;
        self.list.push((name, Val::Owned(v)));
        Ok(())
    }

    /// Adds a line whose value is `[at..at + len]` of the head given to [`Self::set_block`]
    /// (a parser's: it accepts only field-value bytes).
    #[inline]
    pub(crate) fn push_raw(&mut self, name: HeaderName, at: usize, len: usize) {
        let (at, len) = (at as u32, len as u32);
        self.list.push((name, Val::Raw { at, len }));
    }

    /// The parsed head the values of [`Self::push_raw`] are in; every one of them lies in it.
    pub(crate) fn set_block(&mut self, block: Bytes) {
        debug_assert!(self.list.iter().all(|(_, v)| match v {
            Val::Raw { at, len } => (*at + *len) as usize <= block.len(),
            Val::Owned(_) => true,
        }));
        self.block = block;
    }

    #[inline]
    fn value<'a>(&'a self, v: &'a Val) -> Value<'a> {
        Value {
            block: &self.block,
            val: v,
        }
    }

    /// Fields (lines), repeated names counted each time, as `HeaderMap::len`.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The first value of `key`.
    #[inline]
    pub(crate) fn get<K: Key>(&self, key: K) -> Option<Value<'_>> {
        self.list
            .iter()
            .find(|(n, _)| key.matches(n))
            .map(|(_, v)| self.value(v))
    }

    /// Every value of `key`, in order.
    #[inline]
    pub(crate) fn get_all<K: Key>(&self, key: K) -> GetAll<'_, K> {
        GetAll {
            block: &self.block,
            lines: self.list.iter(),
            key,
        }
    }

    #[inline]
    pub(crate) fn contains_key<K: Key>(&self, key: K) -> bool {
        self.list.iter().any(|(n, _)| key.matches(n))
    }

    /// Sets `name` to `value` alone: the first line of that name takes the value where it stands,
    /// the others go; a new name goes at the end. Returns whether the name was there.
    pub(crate) fn insert(&mut self, name: impl IntoName, value: HeaderValue) -> bool {
        let name = name.into_name();
        let Some(i) = self.list.iter().position(|(n, _)| *n == name) else {
            self.list.push((name, Val::Owned(value)));
            return false;
        };
        self.list[i].1 = Val::Owned(value);
        if self.list[i + 1..].iter().any(|(n, _)| *n == name) {
            let mut j = 0;
            self.list.retain(|(n, _)| {
                j += 1;
                j <= i + 1 || *n != name
            });
        }
        true
    }

    /// Adds a line at the end. Returns whether the name was there before, as `HeaderMap::append`.
    pub(crate) fn append(&mut self, name: impl IntoName, value: HeaderValue) -> bool {
        let name = name.into_name();
        let had = self.contains_key(&name);
        self.list.push((name, Val::Owned(value)));
        had
    }

    /// Adds a line at the end without looking for the name first.
    #[inline]
    pub(crate) fn push(&mut self, name: HeaderName, value: HeaderValue) {
        self.list.push((name, Val::Owned(value)));
    }

    /// Removes every line of `key`; returns whether there was one.
    pub(crate) fn remove<K: Key>(&mut self, key: K) -> bool {
        let Some(i) = self.list.iter().position(|(n, _)| key.matches(n)) else {
            return false;
        };
        self.list.remove(i);
        if self.list[i..].iter().any(|(n, _)| key.matches(n)) {
            self.list.retain(|(n, _)| !key.matches(n));
        }
        true
    }

    /// Every line, in order.
    #[inline]
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            block: &self.block,
            lines: self.list.iter(),
        }
    }

    /// Every line's name, in order (a repeated name once per line, unlike `HeaderMap::keys`).
    #[inline]
    pub(crate) fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.list.iter().map(|(n, _)| n)
    }

    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }

    /// A `HeaderMap` of the same lines, for the `http` crate's users at the edges (hyper).
    pub(crate) fn into_header_map(self) -> HeaderMap {
        let mut m = HeaderMap::with_capacity(self.list.len());
        for (n, v) in self.list {
            // Owned values move; raw ones become `HeaderValue`s sharing the head.
            let v = match v {
                Val::Owned(v) => v,
                raw => Value {
                    block: &self.block,
                    val: &raw,
                }
                .to_owned(),
            };
            m.append(n, v);
        }
        m
    }
}

impl PartialEq for Fields {
    /// The same lines in the same order, values compared as bytes.
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for Fields {}

impl From<HeaderMap> for Fields {
    fn from(m: HeaderMap) -> Fields {
        let mut f = Fields::with_capacity(m.len());
        let mut last: Option<HeaderName> = None;
        for (n, v) in m {
            // `HeaderMap`'s owning iterator names only the first value of each name.
            if let Some(n) = n {
                last = Some(n);
            }
            if let Some(n) = &last {
                f.push(n.clone(), v);
            }
        }
        f
    }
}

impl From<&HeaderMap> for Fields {
    fn from(m: &HeaderMap) -> Fields {
        let mut f = Fields::with_capacity(m.len());
        for (n, v) in m {
            f.push(n.clone(), v.clone());
        }
        f
    }
}

#[cfg(test)]
impl FromIterator<(HeaderName, HeaderValue)> for Fields {
    fn from_iter<I: IntoIterator<Item = (HeaderName, HeaderValue)>>(it: I) -> Fields {
        let mut f = Fields::new();
        f.extend(it);
        f
    }
}

#[cfg(test)]
impl Extend<(HeaderName, HeaderValue)> for Fields {
    fn extend<I: IntoIterator<Item = (HeaderName, HeaderValue)>>(&mut self, it: I) {
        self.list
            .extend(it.into_iter().map(|(n, v)| (n, Val::Owned(v))));
    }
}

impl<'a> IntoIterator for &'a Fields {
    type Item = (&'a HeaderName, Value<'a>);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The lines of [`Fields`], in order.
pub(crate) struct Iter<'a> {
    block: &'a Bytes,
    lines: std::slice::Iter<'a, (HeaderName, Val)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a HeaderName, Value<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let block = self.block;
        self.lines.next().map(|(n, v)| (n, Value { block, val: v }))
    }
}

impl DoubleEndedIterator for Iter<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        let block = self.block;
        self.lines
            .next_back()
            .map(|(n, v)| (n, Value { block, val: v }))
    }
}

/// The values of one name, in order ([`Fields::get_all`]); an iterator itself.
pub(crate) struct GetAll<'a, K> {
    block: &'a Bytes,
    lines: std::slice::Iter<'a, (HeaderName, Val)>,
    key: K,
}

impl<K: Key> GetAll<'_, K> {
    /// These values (as `HeaderMap`'s `GetAll::iter`).
    #[inline]
    pub(crate) fn iter(self) -> Self {
        self
    }
}

impl<'a, K: Key> Iterator for GetAll<'a, K> {
    type Item = Value<'a>;

    #[inline]
    fn next(&mut self) -> Option<Value<'a>> {
        let (key, block) = (&self.key, self.block);
        self.lines
            .find(|(n, _)| key.matches(n))
            .map(|(_, v)| Value { block, val: v })
    }
}

impl<K: Key> DoubleEndedIterator for GetAll<'_, K> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        let (key, block) = (&self.key, self.block);
        self.lines
            .rfind(|(n, _)| key.matches(n))
            .map(|(_, v)| Value { block, val: v })
    }
}

/// A request head: `http::request::Parts` with [`Fields`] (same field names, so code reads alike).
#[derive(Debug, Default)]
pub(crate) struct RequestParts {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: Fields,
    pub(crate) extensions: Extensions,
}

/// A response head: `http::response::Parts` with [`Fields`].
#[derive(Debug, Default)]
pub(crate) struct ResponseParts {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: Fields,
    pub(crate) extensions: Extensions,
}

/// A request on the request path: `http::Request` with [`Fields`]. The head is boxed: the
/// request is moved through every phase (server, route, forward, pool, client), and a box moves
/// as one word, taken from and given back to malloc's per-thread cache, hot in the CPU's. (Each
/// move of a 184-byte head wrote it to another part of the connection's future, cold at a few
/// hundred connections.)
#[derive(Debug, Default)]
pub(crate) struct Request<B> {
    head: Box<RequestParts>,
    body: B,
}

/// A response on the request path: `http::Response` with [`Fields`]; the head boxed, as the
/// request's.
#[derive(Debug, Default)]
pub(crate) struct Response<B> {
    head: Box<ResponseParts>,
    body: B,
}

/// What [`Request`] and [`Response`] share, as `http`'s types have it.
macro_rules! message {
    ($message:ident, $parts:ty) => {
        impl<B> $message<B> {
            pub(crate) fn new(body: B) -> $message<B> {
                $message {
                    head: Default::default(),
                    body,
                }
            }

            #[inline]
            pub(crate) fn from_parts(head: Box<$parts>, body: B) -> $message<B> {
                $message { head, body }
            }

            #[inline]
            pub(crate) fn into_parts(self) -> (Box<$parts>, B) {
                (self.head, self.body)
            }

            pub(crate) fn version_mut(&mut self) -> &mut Version {
                &mut self.head.version
            }

            #[inline]
            pub(crate) fn headers(&self) -> &Fields {
                &self.head.headers
            }

            #[inline]
            pub(crate) fn headers_mut(&mut self) -> &mut Fields {
                &mut self.head.headers
            }

            #[inline]
            pub(crate) fn body(&self) -> &B {
                &self.body
            }

            #[cfg(test)]
            pub(crate) fn into_body(self) -> B {
                self.body
            }

            pub(crate) fn map<C>(self, f: impl FnOnce(B) -> C) -> $message<C> {
                $message {
                    head: self.head,
                    body: f(self.body),
                }
            }
        }
    };
}

message!(Request, RequestParts);
message!(Response, ResponseParts);

impl<B> Request<B> {
    #[inline]
    pub(crate) fn method(&self) -> &Method {
        &self.head.method
    }

    pub(crate) fn method_mut(&mut self) -> &mut Method {
        &mut self.head.method
    }

    #[inline]
    pub(crate) fn uri(&self) -> &Uri {
        &self.head.uri
    }

    pub(crate) fn uri_mut(&mut self) -> &mut Uri {
        &mut self.head.uri
    }

    #[inline]
    pub(crate) fn version(&self) -> Version {
        self.head.version
    }

    pub(crate) fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.head.extensions
    }
}

impl<B> Response<B> {
    #[inline]
    pub(crate) fn status(&self) -> StatusCode {
        self.head.status
    }

    pub(crate) fn status_mut(&mut self) -> &mut StatusCode {
        &mut self.head.status
    }

    #[inline]
    pub(crate) fn body_mut(&mut self) -> &mut B {
        &mut self.body
    }
}

impl<B> From<http::Request<B>> for Request<B> {
    fn from(r: http::Request<B>) -> Request<B> {
        let (p, body) = r.into_parts();
        Request {
            head: Box::new(RequestParts {
                method: p.method,
                uri: p.uri,
                version: p.version,
                headers: Fields::from(p.headers),
                extensions: p.extensions,
            }),
            body,
        }
    }
}

impl<B> From<Request<B>> for http::Request<B> {
    fn from(r: Request<B>) -> http::Request<B> {
        let mut out = http::Request::new(r.body);
        let h = *r.head;
        *out.method_mut() = h.method;
        *out.uri_mut() = h.uri;
        *out.version_mut() = h.version;
        *out.headers_mut() = h.headers.into_header_map();
        *out.extensions_mut() = h.extensions;
        out
    }
}

impl<B> From<http::Response<B>> for Response<B> {
    fn from(r: http::Response<B>) -> Response<B> {
        let (p, body) = r.into_parts();
        Response {
            head: Box::new(ResponseParts {
                status: p.status,
                version: p.version,
                headers: Fields::from(p.headers),
                extensions: p.extensions,
            }),
            body,
        }
    }
}

impl<B> From<Response<B>> for http::Response<B> {
    fn from(r: Response<B>) -> http::Response<B> {
        let mut out = http::Response::new(r.body);
        let h = *r.head;
        *out.status_mut() = h.status;
        *out.version_mut() = h.version;
        *out.headers_mut() = h.headers.into_header_map();
        *out.extensions_mut() = h.extensions;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_LENGTH, HOST, SET_COOKIE};

    fn v(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    fn lines(f: &Fields) -> Vec<String> {
        f.iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    /// `host: a`, `set-cookie: 1`, `x-custom: x`, `set-cookie: 2`, the values raw in a block as
    /// a parser leaves them.
    fn parsed() -> Fields {
        let block = Bytes::from_static(b"a1x2");
        let mut f = Fields::with_capacity(4);
        f.push_raw(HOST, 0, 1);
        f.push_raw(SET_COOKIE, 1, 1);
        f.push_raw(HeaderName::from_static("x-custom"), 2, 1);
        f.push_raw(SET_COOKIE, 3, 1);
        f.set_block(block);
        f
    }

    #[test]
    fn lookups_are_case_blind_and_see_every_line_in_order() {
        let f = parsed();
        assert_eq!(f.get(HOST).unwrap(), "a");
        assert_eq!(f.get("Host").unwrap(), "a");
        assert_eq!(f.get("X-CUSTOM").unwrap(), v("x"));
        assert!(f.get("absent").is_none());
        let cookies: Vec<_> = f.get_all(SET_COOKIE).iter().map(Value::as_bytes).collect();
        assert_eq!(cookies, [b"1", b"2"]);
        let last: Vec<_> = f.get_all("set-cookie").rev().map(Value::as_bytes).collect();
        assert_eq!(last, [b"2", b"1"]);
        assert_eq!(f.len(), 4);
        // Arrival order, not regrouped.
        assert_eq!(
            lines(&f),
            ["host: a", "set-cookie: 1", "x-custom: x", "set-cookie: 2"]
        );
    }

    #[test]
    fn raw_and_owned_values_read_alike() {
        let f = parsed();
        let raw = f.get(HOST).unwrap();
        assert_eq!(raw.to_owned(), v("a"));
        assert_eq!(raw.len(), 1);
        let mut g = Fields::new();
        g.push(HOST, v("a"));
        assert_eq!(g.get(HOST).unwrap(), raw);
        // `to_str` takes what `HeaderValue::to_str` takes: visible ASCII and tabs.
        let mut h = Fields::new();
        h.push(HOST, HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        h.push(SET_COOKIE, v("a\tb ~"));
        assert_eq!(h.get(HOST).unwrap().to_str(), Err(NotText));
        assert_eq!(h.get(SET_COOKIE).unwrap().to_str(), Ok("a\tb ~"));
    }

    #[test]
    fn insert_replaces_in_place_and_drops_the_other_lines() {
        let mut f: Fields = [
            (SET_COOKIE, v("1")),
            (HOST, v("h")),
            (SET_COOKIE, v("2")),
            (CONTENT_LENGTH, v("3")),
        ]
        .into_iter()
        .collect();
        assert!(f.insert(SET_COOKIE, v("new")));
        assert_eq!(
            lines(&f),
            ["set-cookie: new", "host: h", "content-length: 3"]
        );
        assert!(!f.insert(HeaderName::from_static("x-new"), v("n")));
        assert_eq!(lines(&f).last().unwrap(), "x-new: n");
        // A raw line is replaced the same way.
        let mut p = parsed();
        assert!(p.insert(SET_COOKIE, v("3")));
        assert_eq!(lines(&p), ["host: a", "set-cookie: 3", "x-custom: x"]);
    }

    #[test]
    fn remove_drops_every_line_of_the_name() {
        let mut f = parsed();
        assert!(f.remove("Set-Cookie"));
        assert_eq!(lines(&f), ["host: a", "x-custom: x"]);
        assert!(!f.remove(SET_COOKIE));
        assert!(!f.append(SET_COOKIE, v("3")));
        assert!(f.append(SET_COOKIE, v("4")));
        assert_eq!(
            lines(&f),
            ["host: a", "x-custom: x", "set-cookie: 3", "set-cookie: 4"]
        );
    }

    #[test]
    fn header_maps_convert_both_ways_with_every_value() {
        let mut m = HeaderMap::new();
        m.append(SET_COOKIE, v("1"));
        m.append(HOST, v("a"));
        m.append(SET_COOKIE, v("2"));
        let f = Fields::from(m.clone());
        assert_eq!(f.len(), 3);
        assert_eq!(Fields::from(&m), f);
        assert_eq!(f.into_header_map(), m);
        // Raw values too.
        let back = parsed().into_header_map();
        assert_eq!(back.get_all(SET_COOKIE).iter().count(), 2);
        assert_eq!(back["x-custom"], "x");

        let req: Request<()> = http::Request::builder()
            .method("POST")
            .uri("/p?q")
            .header(HOST, "h")
            .body(())
            .unwrap()
            .into();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/p");
        let back: http::Request<()> = req.into();
        assert_eq!(back.headers()[HOST], "h");
        assert_eq!(back.method(), Method::POST);
    }
}
