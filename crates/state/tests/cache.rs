//! A store's page cache is bounded: a service holds one store per partition it owns, and
//! redb's default cache (1 GiB per database) let its memory follow its stores' size.
//! Its own test binary, so that nothing else moves the process's resident memory.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;

use tributary_state::{Checkpoint, Store};

/// The process's resident memory, MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

fn key(i: usize) -> String {
    format!("{i:08}")
}

#[test]
fn writing_and_reading_a_store_far_larger_than_its_cache_keeps_memory_near_the_cache() {
    const CACHE_MIB: usize = 16;
    const ENTRIES: usize = 4_096;
    const VALUE: usize = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_cache(&dir.path().join("p0.redb"), CACHE_MIB << 20).unwrap();
    let before = rss_mib();
    // 256 MiB of entries, in commits of 4 MiB.
    let value = vec![7u8; VALUE];
    for batch in 0..ENTRIES / 64 {
        let changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = (batch * 64..(batch + 1) * 64)
            .map(|i| {
                (
                    [b"t\0".as_slice(), key(i).as_bytes()].concat(),
                    Some(value.clone()),
                )
            })
            .collect();
        store.commit(&changes, &Checkpoint::default()).unwrap();
    }
    // Every entry read back, twice: an unbounded cache would now hold them all.
    for _ in 0..2 {
        for i in 0..ENTRIES {
            assert_eq!(
                store.get("t", &key(i)).unwrap().map(|v| v.len()),
                Some(VALUE)
            );
        }
    }
    let grown = rss_mib().saturating_sub(before);
    assert!(
        grown < 96,
        "256 MiB written and read through a {CACHE_MIB} MiB cache grew the process by {grown} MiB"
    );
}
