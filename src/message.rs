//! An HTTP message as the request path carries it: the head's fields in the order they arrived
//! ([`Fields`]), and the [`Request`] / [`Response`] that hold them.
//!
//! Why not `http::HeaderMap` (issue 17): a proxy reads a few fields of each head and forwards the
//! rest. A hash map hashes every name on the way in, allocates an index table beside its entries
//! and regroups repeated names, all work that a forwarded head never uses; it cost about a fifth of
//! a proxied request's instructions. `Fields` is a list: a parsed head's fields are pushed as they
//! come (their values still share the read buffer), a lookup is a short scan comparing names (a
//! known name is one byte), and a head goes out in the order it came in, with Tern's edits made in
//! place. hyper's HTTP/2 and the `http` crate's types stay at the edges: [`Fields`] converts from
//! and into a `HeaderMap` there. Trailers stay `HeaderMap`s: rare, and `http_body` frames carry them.
//!
//! The methods mirror `HeaderMap`'s (`get`, `get_all`, `insert`, `append`, `remove`, ...), with
//! the same meanings, so the request path reads as it did; two differ on purpose: [`Fields::iter`]
//! yields fields in arrival order (repeated names are not regrouped), and so does the wire.

use std::fmt;

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

impl Key for &String {
    #[inline]
    fn matches(&self, name: &HeaderName) -> bool {
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
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue>;
}

impl Lookup for HeaderMap {
    #[inline]
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.get(name)
    }
}

impl Lookup for Fields {
    #[inline]
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.get(name)
    }
}

/// A message head's fields, in order. See the module documentation.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Fields {
    list: Vec<(HeaderName, HeaderValue)>,
}

impl Fields {
    pub(crate) fn new() -> Fields {
        Fields { list: Vec::new() }
    }

    pub(crate) fn with_capacity(n: usize) -> Fields {
        Fields {
            list: Vec::with_capacity(n),
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
    pub(crate) fn get<K: Key>(&self, key: K) -> Option<&HeaderValue> {
        self.list
            .iter()
            .find(|(n, _)| key.matches(n))
            .map(|(_, v)| v)
    }

    /// Every value of `key`, in order.
    #[inline]
    pub(crate) fn get_all<K: Key>(&self, key: K) -> GetAll<'_, K> {
        GetAll {
            lines: self.list.iter(),
            key,
        }
    }

    #[inline]
    pub(crate) fn contains_key<K: Key>(&self, key: K) -> bool {
        self.list.iter().any(|(n, _)| key.matches(n))
    }

    /// Sets `name` to `value` alone: the first line of that name takes the value where it stands,
    /// the others go; a new name goes at the end. Returns the first old value.
    pub(crate) fn insert(
        &mut self,
        name: impl IntoName,
        value: HeaderValue,
    ) -> Option<HeaderValue> {
        let name = name.into_name();
        let Some(i) = self.list.iter().position(|(n, _)| *n == name) else {
            self.list.push((name, value));
            return None;
        };
        let old = std::mem::replace(&mut self.list[i].1, value);
        if self.list[i + 1..].iter().any(|(n, _)| *n == name) {
            let mut j = 0;
            self.list.retain(|(n, _)| {
                j += 1;
                j <= i + 1 || *n != name
            });
        }
        Some(old)
    }

    /// Adds a line at the end. Returns whether the name was there before, as `HeaderMap::append`.
    pub(crate) fn append(&mut self, name: impl IntoName, value: HeaderValue) -> bool {
        let name = name.into_name();
        let had = self.contains_key(&name);
        self.list.push((name, value));
        had
    }

    /// Adds a line at the end without looking for the name first.
    #[inline]
    pub(crate) fn push(&mut self, name: HeaderName, value: HeaderValue) {
        self.list.push((name, value));
    }

    /// Removes every line of `key`; returns the first value.
    pub(crate) fn remove<K: Key>(&mut self, key: K) -> Option<HeaderValue> {
        let i = self.list.iter().position(|(n, _)| key.matches(n))?;
        let (_, first) = self.list.remove(i);
        if self.list[i..].iter().any(|(n, _)| key.matches(n)) {
            self.list.retain(|(n, _)| !key.matches(n));
        }
        Some(first)
    }

    /// Removes every line of `key` and returns their values, in order.
    pub(crate) fn take_all<K: Key>(&mut self, key: K) -> Vec<HeaderValue> {
        let mut taken = Vec::new();
        self.list.retain(|(n, v)| {
            if key.matches(n) {
                taken.push(v.clone());
                false
            } else {
                true
            }
        });
        taken
    }

    /// Every line, in order.
    #[inline]
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&HeaderName, &HeaderValue)> {
        self.list.iter().map(|(n, v)| (n, v))
    }

    /// Every line's name, in order (a repeated name once per line, unlike `HeaderMap::keys`).
    #[inline]
    pub(crate) fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.list.iter().map(|(n, _)| n)
    }

    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }

    /// The same, consuming these fields.
    pub(crate) fn into_header_map(self) -> HeaderMap {
        let mut m = HeaderMap::with_capacity(self.list.len());
        for (n, v) in self.list {
            m.append(n, v);
        }
        m
    }
}

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
                f.list.push((n.clone(), v));
            }
        }
        f
    }
}

impl From<&HeaderMap> for Fields {
    fn from(m: &HeaderMap) -> Fields {
        let mut f = Fields::with_capacity(m.len());
        for (n, v) in m {
            f.list.push((n.clone(), v.clone()));
        }
        f
    }
}

impl FromIterator<(HeaderName, HeaderValue)> for Fields {
    fn from_iter<I: IntoIterator<Item = (HeaderName, HeaderValue)>>(it: I) -> Fields {
        Fields {
            list: it.into_iter().collect(),
        }
    }
}

impl Extend<(HeaderName, HeaderValue)> for Fields {
    fn extend<I: IntoIterator<Item = (HeaderName, HeaderValue)>>(&mut self, it: I) {
        self.list.extend(it);
    }
}

impl<'a> IntoIterator for &'a Fields {
    type Item = (&'a HeaderName, &'a HeaderValue);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (HeaderName, HeaderValue)>,
        fn(&'a (HeaderName, HeaderValue)) -> (&'a HeaderName, &'a HeaderValue),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter().map(|(n, v)| (n, v))
    }
}

impl<K: Key> std::ops::Index<K> for Fields {
    type Output = HeaderValue;

    /// The first value of `key`; panics when there is none, as `HeaderMap`'s index does.
    fn index(&self, key: K) -> &HeaderValue {
        self.get(key).expect("no field of that name")
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The values of one name, in order ([`Fields::get_all`]); an iterator itself.
pub(crate) struct GetAll<'a, K> {
    lines: std::slice::Iter<'a, (HeaderName, HeaderValue)>,
    key: K,
}

impl<'a, K: Key> GetAll<'a, K> {
    /// These values (as `HeaderMap`'s `GetAll::iter`).
    #[inline]
    pub(crate) fn iter(self) -> Self {
        self
    }
}

impl<'a, K: Key> Iterator for GetAll<'a, K> {
    type Item = &'a HeaderValue;

    #[inline]
    fn next(&mut self) -> Option<&'a HeaderValue> {
        let key = &self.key;
        self.lines.find(|(n, _)| key.matches(n)).map(|(_, v)| v)
    }
}

impl<K: Key> DoubleEndedIterator for GetAll<'_, K> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        let key = &self.key;
        self.lines.rfind(|(n, _)| key.matches(n)).map(|(_, v)| v)
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

/// A request on the request path: `http::Request` with [`Fields`].
#[derive(Debug, Default)]
pub(crate) struct Request<B> {
    head: RequestParts,
    body: B,
}

/// A response on the request path: `http::Response` with [`Fields`].
#[derive(Debug, Default)]
pub(crate) struct Response<B> {
    head: ResponseParts,
    body: B,
}

impl<B> Request<B> {
    pub(crate) fn new(body: B) -> Request<B> {
        Request {
            head: RequestParts::default(),
            body,
        }
    }

    #[inline]
    pub(crate) fn from_parts(head: RequestParts, body: B) -> Request<B> {
        Request { head, body }
    }

    #[inline]
    pub(crate) fn into_parts(self) -> (RequestParts, B) {
        (self.head, self.body)
    }

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

    pub(crate) fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.head.extensions
    }

    #[inline]
    pub(crate) fn body(&self) -> &B {
        &self.body
    }

    #[cfg(test)]
    pub(crate) fn into_body(self) -> B {
        self.body
    }

    pub(crate) fn map<C>(self, f: impl FnOnce(B) -> C) -> Request<C> {
        Request {
            head: self.head,
            body: f(self.body),
        }
    }
}

impl<B> Response<B> {
    pub(crate) fn new(body: B) -> Response<B> {
        Response {
            head: ResponseParts::default(),
            body,
        }
    }

    #[inline]
    pub(crate) fn from_parts(head: ResponseParts, body: B) -> Response<B> {
        Response { head, body }
    }

    #[inline]
    pub(crate) fn into_parts(self) -> (ResponseParts, B) {
        (self.head, self.body)
    }

    #[inline]
    pub(crate) fn status(&self) -> StatusCode {
        self.head.status
    }

    pub(crate) fn status_mut(&mut self) -> &mut StatusCode {
        &mut self.head.status
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

    #[inline]
    pub(crate) fn body_mut(&mut self) -> &mut B {
        &mut self.body
    }

    #[cfg(test)]
    pub(crate) fn into_body(self) -> B {
        self.body
    }

    pub(crate) fn map<C>(self, f: impl FnOnce(B) -> C) -> Response<C> {
        Response {
            head: self.head,
            body: f(self.body),
        }
    }
}

impl<B> From<http::Request<B>> for Request<B> {
    fn from(r: http::Request<B>) -> Request<B> {
        let (p, body) = r.into_parts();
        Request {
            head: RequestParts {
                method: p.method,
                uri: p.uri,
                version: p.version,
                headers: Fields::from(p.headers),
                extensions: p.extensions,
            },
            body,
        }
    }
}

impl<B> From<Request<B>> for http::Request<B> {
    fn from(r: Request<B>) -> http::Request<B> {
        let mut out = http::Request::new(r.body);
        let h = r.head;
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
            head: ResponseParts {
                status: p.status,
                version: p.version,
                headers: Fields::from(p.headers),
                extensions: p.extensions,
            },
            body,
        }
    }
}

impl<B> From<Response<B>> for http::Response<B> {
    fn from(r: Response<B>) -> http::Response<B> {
        let mut out = http::Response::new(r.body);
        let h = r.head;
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

    #[test]
    fn lookups_are_case_blind_and_see_every_line_in_order() {
        let mut f = Fields::new();
        f.push(HOST, v("a"));
        f.push(SET_COOKIE, v("1"));
        f.push(HeaderName::from_static("x-custom"), v("x"));
        f.push(SET_COOKIE, v("2"));
        assert_eq!(f.get(HOST), Some(&v("a")));
        assert_eq!(f.get("Host"), Some(&v("a")));
        assert_eq!(f.get("X-CUSTOM"), Some(&v("x")));
        assert!(f.get("absent").is_none());
        let cookies: Vec<_> = f.get_all(SET_COOKIE).iter().collect();
        assert_eq!(cookies, [&v("1"), &v("2")]);
        let last: Vec<_> = f.get_all("set-cookie").rev().collect();
        assert_eq!(last, [&v("2"), &v("1")]);
        assert_eq!(f.len(), 4);
        assert_eq!(f["x-custom"], v("x"));
        // Arrival order, not regrouped.
        assert_eq!(
            lines(&f),
            ["host: a", "set-cookie: 1", "x-custom: x", "set-cookie: 2"]
        );
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
        assert_eq!(f.insert(SET_COOKIE, v("new")), Some(v("1")));
        assert_eq!(
            lines(&f),
            ["set-cookie: new", "host: h", "content-length: 3"]
        );
        assert_eq!(f.insert(HeaderName::from_static("x-new"), v("n")), None);
        assert_eq!(lines(&f).last().unwrap(), "x-new: n");
    }

    #[test]
    fn remove_and_take_all_drop_every_line_of_the_name() {
        let mut f: Fields = [(SET_COOKIE, v("1")), (HOST, v("h")), (SET_COOKIE, v("2"))]
            .into_iter()
            .collect();
        let mut g = f.clone();
        assert_eq!(f.remove("Set-Cookie"), Some(v("1")));
        assert_eq!(lines(&f), ["host: h"]);
        assert_eq!(f.remove(SET_COOKIE), None);
        assert_eq!(g.take_all(SET_COOKIE), [v("1"), v("2")]);
        assert_eq!(lines(&g), ["host: h"]);
        assert!(!g.append(SET_COOKIE, v("3")));
        assert!(g.append(SET_COOKIE, v("4")));
        assert_eq!(lines(&g), ["host: h", "set-cookie: 3", "set-cookie: 4"]);
    }

    #[test]
    fn header_maps_convert_both_ways_with_every_value() {
        let mut m = HeaderMap::new();
        m.append(SET_COOKIE, v("1"));
        m.append(HOST, v("h"));
        m.append(SET_COOKIE, v("2"));
        let f = Fields::from(m.clone());
        assert_eq!(f.len(), 3);
        assert_eq!(Fields::from(&m), f);
        assert_eq!(f.into_header_map(), m);

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
