//! Spare connection buffers, one stack per thread. A downstream connection holds a read or a
//! write buffer only while it has bytes in it: between requests it gives them back here, and
//! the next connection to need one takes the one given last, whose first lines are still in the
//! CPU's cache. nginx frees an idle keep-alive connection's buffers the same way.
//!
//! Why: a buffer of its own per connection is memory the connection holds while idle, and, with
//! a few hundred busy connections, memory each request finds cold: each wrote its head into a
//! different 8 KB. At most [`SPARE`] buffers wait per thread; the rest are freed.

use std::cell::RefCell;

use bytes::BytesMut;

/// The size of a buffer: bytes read at once, and a response head written at once.
pub(crate) const SIZE: usize = 8 * 1024;

/// Buffers kept per thread for the next connection (256 KB).
const SPARE: usize = 32;

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Gives `buf` a buffer of [`SIZE`] when it has none (a spare one if there is one).
#[inline]
pub(crate) fn take(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        // `try_with`: a poll during the thread's teardown allocates instead of panicking.
        *buf = SPARES
            .try_with(|s| s.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| BytesMut::with_capacity(SIZE));
    }
}

/// Takes `buf`'s buffer back when it is empty and rewound to a spare's size, leaving `buf`
/// without one; else `buf` keeps it. One that grew (a large head, a body buffered whole) is
/// freed rather than kept.
#[inline]
pub(crate) fn give(buf: &mut BytesMut) {
    // `try_reclaim` moves an empty view back to the start of its allocation when no other view
    // points into it (the head a request still holds, a body chunk not yet written). It also
    // answers true, without that check, when the view has `SIZE` bytes free already: views are
    // disjoint ranges, so such a buffer is safe to hand on, only not rewound.
    if buf.is_empty() && buf.capacity() != 0 && buf.try_reclaim(SIZE) {
        let b = std::mem::take(buf);
        // A spare is `SIZE` exactly; a view with more room sits in a grown allocation.
        if b.capacity() == SIZE {
            let _ = SPARES.try_with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARE {
                    s.push(b);
                }
            });
        }
    }
}

/// How many buffers wait on this thread; empties the stack first when `clear`.
#[cfg(test)]
pub(crate) fn spares(clear: bool) -> usize {
    SPARES.with(|s| {
        let mut s = s.borrow_mut();
        if clear {
            s.clear();
        }
        s.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_the_next_taken_and_rewound() {
        spares(true);
        let mut a = BytesMut::new();
        take(&mut a);
        assert!(a.capacity() >= SIZE);
        a.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = a.split().freeze();
        let at = a.as_ptr() as usize;
        drop(head);
        give(&mut a);
        assert_eq!(a.capacity(), 0, "given away");
        let mut b = BytesMut::new();
        take(&mut b);
        // The same allocation, from its start again.
        assert_eq!(b.as_ptr() as usize, at - 18);
        assert!(b.capacity() >= SIZE);
    }

    #[test]
    fn a_buffer_still_pointed_into_or_not_empty_is_not_kept() {
        spares(true);
        let mut a = BytesMut::new();
        take(&mut a);
        a.extend_from_slice(b"abc");
        give(&mut a);
        assert_eq!(a.len(), 3, "not empty: kept by its connection");
        let held = a.split().freeze();
        give(&mut a);
        assert!(
            a.capacity() > 0,
            "`held` points into it: kept by its connection"
        );
        assert_eq!(spares(false), 0);
        assert_eq!(&held[..], b"abc");
        drop(held);
        give(&mut a);
        assert_eq!(a.capacity(), 0);
        assert_eq!(spares(false), 1);
    }

    #[test]
    fn a_grown_buffer_is_freed_not_kept() {
        spares(true);
        let mut a = BytesMut::new();
        take(&mut a);
        a.extend_from_slice(&[b'x'; 5 * SIZE]);
        a.clear();
        give(&mut a);
        assert_eq!(a.capacity(), 0, "not held by its connection either");
        assert_eq!(spares(false), 0);
    }

    #[test]
    fn spares_are_bounded() {
        spares(true);
        let mut bufs: Vec<BytesMut> = (0..SPARE + 5)
            .map(|_| {
                let mut b = BytesMut::new();
                take(&mut b);
                b
            })
            .collect();
        for b in &mut bufs {
            give(b);
        }
        assert_eq!(spares(false), SPARE);
    }
}
