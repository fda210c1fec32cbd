//! A process-wide allocator whose config is invalid: it is reported, and the
//! process defaults (`tensorpool::global::process_defaults`: malloc's 16-byte
//! classes) stand for it, not `Config::default()` (64-byte blocks), which took a
//! program of small boxes three times the memory (found by a user hunt).

use tensorpool::{global::process_defaults, Config, GlobalManager};

#[global_allocator]
static GLOBAL: GlobalManager = GlobalManager::with_config(|| Config {
    alignment: 3, // not a power of two: refused
    ..process_defaults()
});

#[test]
fn an_invalid_config_falls_back_to_the_process_defaults() {
    let before = GLOBAL.stats().expect("the manager runs").allocated_bytes;
    let boxes: Vec<Box<u8>> = (0..10_000).map(|i| Box::new(i as u8)).collect();
    let after = GLOBAL.stats().unwrap().allocated_bytes;
    // 16 bytes a box (plus the vector's 80 KB), not 64.
    assert!(after - before < 10_000 * 32 + 100_000, "{}", after - before);
    assert!(boxes.iter().enumerate().all(|(i, b)| **b == i as u8));
}
