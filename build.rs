//! Hands the release link of the `tern` binary its function order, `link/tern.order` (written by
//! `bench/orderfile.sh`): the code the proxy runs then sits together, so idle RSS is the few
//! hundred KB of code it uses rather than most of `.text`. Names the order has that the build
//! does not are skipped, so a stale order costs nothing but the gain.
//!
//! Only where the linker is known to read it: release builds for x86_64 Linux (glibc) with
//! rustc's default linker there, rust-lld. A linker chosen in the config (`RUSTC_LINKER`, or
//! `-C linker` flags) may be GNU ld, which has no such option, so those builds go without.

use std::env::var;

fn main() {
    println!("cargo:rerun-if-changed=link/tern.order");
    // For tests/link_order.rs: the order's names are only good for the toolchain that made them.
    let rustc = var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=TERN_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let is = |key: &str, want: &str| var(key).is_ok_and(|v| v == want);
    let default_linker = var("RUSTC_LINKER").is_err()
        && !var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"));
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR").unwrap()).join("link/tern.order");
    if is("PROFILE", "release")
        && is("CARGO_CFG_TARGET_ARCH", "x86_64")
        && is("CARGO_CFG_TARGET_OS", "linux")
        && is("CARGO_CFG_TARGET_ENV", "gnu")
        && default_linker
        && order.exists()
    {
        let arg = "cargo:rustc-link-arg-bin=tern=-Wl";
        println!("{arg},--symbol-ordering-file={}", order.display());
        println!("{arg},--no-warn-symbol-ordering");
    }
}
