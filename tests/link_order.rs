//! `link/tern.order` (written by `bench/orderfile.sh`, read by the release link through build.rs)
//! names functions by their mangled names. Those change with the toolchain and with the version of
//! any dependency, and an order made for other ones quietly orders nothing: idle RSS goes back up
//! by megabytes and no other test notices. So this one fails until the order is made again.

use sha2::{Digest, Sha256};

fn header<'a>(order: &'a str, key: &str) -> Option<&'a str> {
    order
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

#[test]
fn link_order_was_made_for_this_toolchain_and_lockfile() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let order = std::fs::read_to_string(root.join("link/tern.order")).expect("link/tern.order");
    let again = "run bench/orderfile.sh to make link/tern.order again";
    let rustc = env!("TERN_RUSTC_VERSION");
    assert_eq!(
        header(&order, "# rustc ").map(|v| format!("rustc {v}")),
        Some(rustc.to_string()),
        "the order was made with another toolchain: {again}"
    );
    let lock = std::fs::read(root.join("Cargo.lock")).expect("Cargo.lock");
    assert_eq!(
        header(&order, "# Cargo.lock sha256 "),
        Some(hex::encode(Sha256::digest(&lock)).as_str()),
        "Cargo.lock changed since the order was made: {again}"
    );
    let names = order.lines().filter(|l| !l.starts_with('#')).count();
    assert!(
        names > 500,
        "{names} names: the order is cut short; {again}"
    );
}
