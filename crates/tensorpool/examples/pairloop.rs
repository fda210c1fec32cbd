use allocator_api2::alloc::Allocator;
fn main() {
    let mm = tensorpool::MemoryManager::default();
    let layout = std::alloc::Layout::from_size_align(64, 64).unwrap();
    let t = std::time::Instant::now();
    let n = 50_000_000u64;
    for _ in 0..n {
        let p = mm.allocate(std::hint::black_box(layout)).unwrap();
        unsafe { mm.deallocate(std::hint::black_box(p.cast()), layout) };
    }
    println!("{:.1} ns/pair", t.elapsed().as_nanos() as f64 / n as f64);
}
