//! `link/tern.order` (written by `bench/orderfile.sh`, read by the release link through build.rs)
//! names functions by their mangled names. Those change with the toolchain and with the version of
//! any dependency, and an order made for other ones quietly orders nothing: idle RSS goes back up
//! by megabytes and no other test notices. So this one fails until the order is made again for
//! the lockfile and for the toolchain the release image is built with (the Dockerfile's).

use sha2::{Digest, Sha256};

fn header<'a>(order: &'a str, key: &str) -> Option<&'a str> {
    order
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

#[test]
fn link_order_was_made_for_the_release_toolchain_and_this_lockfile() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |f: &str| std::fs::read_to_string(root.join(f)).expect(f);
    let order = read("link/tern.order");
    let again = "run bench/orderfile.sh to make link/tern.order again";
    let dockerfile = read("Dockerfile");
    let release = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("the Dockerfile's RUST_VERSION");
    let made_with = header(&order, "# rustc ").and_then(|v| v.split(' ').next());
    assert_eq!(
        made_with,
        Some(release),
        "the order was made with another toolchain than the Dockerfile's: {again}"
    );
    // Line ends as checked in, whatever the checkout did to them.
    let lock = read("Cargo.lock").replace('\r', "");
    assert_eq!(
        header(&order, "# Cargo.lock sha256 "),
        Some(hex::encode(Sha256::digest(lock.as_bytes())).as_str()),
        "Cargo.lock changed since the order was made: {again}"
    );
    let names = order.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        names > 500,
        "{names} names: the order is cut short; {again}"
    );
}
