//! The example binaries are linked with the functions a member runs first
//! and together, in the order of `layout/ha-node.order` (see
//! `examples/build.rs`): what keeps an idle ha-node's resident code small.
//! This checks that the linker did it: the file's functions that ha-node
//! has are packed into one stretch of its code, not spread over all of it.

use std::collections::HashMap;
use std::process::Command;

#[test]
fn ha_node_keeps_the_recorded_functions_together() {
    let skipped = env!("HA_CODE_LAYOUT_SKIPPED");
    if !skipped.is_empty() {
        eprintln!("code layout not applied to this build ({skipped}); nothing to check");
        return;
    }
    let order =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/layout/ha-node.order"))
            .expect("read layout/ha-node.order");
    let nm = Command::new("nm")
        .args(["--defined-only", "-S", env!("CARGO_BIN_EXE_ha-node")])
        .output()
        .expect("run nm (binutils)");
    assert!(nm.status.success(), "nm failed: {nm:?}");
    // Function name -> (address, size). A name may be defined several
    // times (same-named local symbols of different objects); the linker
    // places all of them at the name's position.
    let mut functions: HashMap<&str, (u64, u64)> = HashMap::new();
    let listing = String::from_utf8_lossy(&nm.stdout);
    for line in listing.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(address), Some(size), Some(kind), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "w" | "W") {
            continue;
        }
        let (Ok(address), Ok(size)) = (
            u64::from_str_radix(address, 16),
            u64::from_str_radix(size, 16),
        ) else {
            continue;
        };
        let entry = functions.entry(name).or_insert((address, size));
        if address < entry.0 {
            *entry = (address, size);
        }
    }
    let placed: Vec<(u64, u64)> = order
        .lines()
        .filter_map(|name| functions.get(name).copied())
        .collect();
    // RocksDB's C++ names never depend on Rust features: thousands match
    // in any build of ha-node.
    assert!(
        placed.len() >= 2000,
        "only {} of the file's {} functions are in ha-node",
        placed.len(),
        order.lines().count()
    );
    let bytes: u64 = placed.iter().map(|&(_, size)| size).sum();
    let start = placed.iter().map(|&(a, _)| a).min().unwrap_or(0);
    let end = placed.iter().map(|&(a, s)| a + s).max().unwrap_or(0);
    // Packed, the stretch is their size plus alignment padding and the
    // odd alias (2.7 MB for 2.3 MB here); in the default order they are
    // spread over the whole 16 MB of code.
    assert!(
        end - start <= bytes + bytes / 2,
        "{} functions of {} kB in all spread over {} kB of code",
        placed.len(),
        bytes / 1024,
        (end - start) / 1024
    );
}
