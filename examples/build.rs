//! Code layout for the example binaries (ha-node above all): the linker
//! places the functions a member runs — starting up, idling in a group,
//! serving puts and gets — first and together, in the order listed in
//! `layout/ha-node.order` (made by `scripts/code-layout`).
//!
//! Why: the kernel maps a program's code into memory 64 KiB at a time
//! around each page it runs. Left in the default order, the few functions
//! a member uses are spread over most of the 16 MB of code (RocksDB's
//! alone is 5.9 MB, with a static initialiser in nearly every file), so an
//! idle member kept about 11 MiB of code resident; packed together, about
//! 5 MiB. It changes no code, only where it sits.
//!
//! Only for linkers that take `--symbol-ordering-file` (LLD, which rustc
//! uses by default on x86_64-unknown-linux-gnu since 1.90, and mold).
//! Skipped when the target, the Rust version or a configured linker say
//! otherwise, or with `HA_CODE_LAYOUT=0`. Names in the file that the
//! build does not have (code changed since the file was made) are ignored.

use std::path::Path;
use std::process::Command;

fn main() {
    let order = Path::new("layout/ha-node.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=HA_CODE_LAYOUT");
    let path = Path::new(&env("CARGO_MANIFEST_DIR")).join(order);
    // The linker reads a copy in this build's own directory: cargo keeps
    // this script's output while the file is unchanged, and a build
    // directory shared by several checkouts (CI's) would otherwise point
    // at a checkout that may be gone.
    let copy = Path::new(&env("OUT_DIR")).join("ha-node.order");
    let off = env("HA_CODE_LAYOUT") == "0";
    let skipped = if off {
        Some("HA_CODE_LAYOUT=0".to_string())
    } else if !path.is_file() {
        Some(format!(
            "no {} (scripts/code-layout makes it)",
            order.display()
        ))
    } else {
        layout_skipped().or_else(|| {
            std::fs::copy(&path, &copy)
                .err()
                .map(|e| format!("copying {} failed: {e}", path.display()))
        })
    };
    // For tests/code_layout.rs: empty when applied, else why not.
    println!(
        "cargo:rustc-env=HA_CODE_LAYOUT_SKIPPED={}",
        skipped.as_deref().unwrap_or("")
    );
    match skipped {
        // Turned off on purpose: no warning.
        Some(_) if off => {}
        Some(why) => println!("cargo:warning=code layout not applied: {why}"),
        None => {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                copy.display()
            );
            // Functions the file names and this build lacks are expected.
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// Why the ordering cannot be passed to this build's linker, if it cannot.
fn layout_skipped() -> Option<String> {
    if env("TARGET") != "x86_64-unknown-linux-gnu" {
        return Some(format!("target {} may not link with LLD", env("TARGET")));
    }
    // A linker chosen by configuration or flags may be GNU ld, which has
    // no --symbol-ordering-file.
    if std::env::var_os("RUSTC_LINKER").is_some() {
        return Some("a linker is configured (RUSTC_LINKER)".into());
    }
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    if flags
        .split('\u{1f}')
        .any(|f| f.contains("linker") || f.contains("link-self-contained") || f.contains("fuse-ld"))
    {
        return Some("RUSTFLAGS choose the linker".into());
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let release = version
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .unwrap_or("");
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) >= (1, 90) => None,
        _ => Some(format!("rustc {release:?} links with the system linker")),
    }
}
