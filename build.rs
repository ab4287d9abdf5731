//! Hands the release link of the `tern` binary its function order, `link/tern.order` (written by
//! `bench/orderfile.sh`): the code the proxy runs then sits together, so idle RSS is the few MB
//! of code it uses rather than most of `.text`. Names the order has that the build does not are
//! skipped, so a stale order costs nothing but the gain.
//!
//! Only for release builds for x86_64 Linux (glibc), where the order was made, and only when the
//! linker takes the option: rustc's default there is rust-lld, but a distribution's rustc or a
//! configured linker may be GNU ld, which has none. A probe link of an empty program with the
//! same linker settings decides.

use std::env::var;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let order = Path::new(&var("CARGO_MANIFEST_DIR").unwrap()).join("link/tern.order");
    // A rerun-if-changed path that does not exist would rerun this (and rebuild) every time.
    if !order.exists() {
        return;
    }
    println!("cargo:rerun-if-changed=link/tern.order");
    let is = |key: &str, want: &str| var(key).is_ok_and(|v| v == want);
    if !(is("PROFILE", "release")
        && is("CARGO_CFG_TARGET_ARCH", "x86_64")
        && is("CARGO_CFG_TARGET_OS", "linux")
        && is("CARGO_CFG_TARGET_ENV", "gnu"))
    {
        return;
    }
    // Two arguments through -Xlinker, so that a comma in the path stays in it.
    let args = [
        "--symbol-ordering-file".to_string(),
        order.display().to_string(),
        "--no-warn-symbol-ordering".to_string(),
    ];
    let rustc = var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if links_with(&rustc, &args) {
        for a in args {
            println!("cargo:rustc-link-arg-bin=tern=-Xlinker");
            println!("cargo:rustc-link-arg-bin=tern={a}");
        }
    } else {
        println!("cargo:warning=the linker does not take --symbol-ordering-file: tern is linked without link/tern.order (idle RSS is higher)");
    }
}

/// Links an empty program for the build's target with its linker settings and `args`.
fn links_with(rustc: &str, args: &[String]) -> bool {
    let out = Path::new(&var("OUT_DIR").unwrap()).join("order-probe");
    let src = out.with_extension("rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let mut cmd = Command::new(rustc);
    cmd.arg("--target").arg(var("TARGET").unwrap_or_default());
    cmd.arg("-o").arg(&out).arg(&src);
    if let Ok(linker) = var("RUSTC_LINKER") {
        cmd.arg("-C").arg(format!("linker={linker}"));
    }
    if let Ok(flags) = var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    for a in args {
        cmd.arg("-C")
            .arg("link-arg=-Xlinker")
            .arg("-C")
            .arg(format!("link-arg={a}"));
    }
    cmd.output().is_ok_and(|o| o.status.success())
}
