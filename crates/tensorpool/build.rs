//! Builds the C half of the `initial-exec-tls` feature (`csrc/thread_block.c`): Rust's
//! stable `thread_local!` cannot choose its TLS model, and a shared library's default
//! (general dynamic) may allocate on access. Nothing is built without the feature.

fn main() {
    println!("cargo:rerun-if-changed=csrc/thread_block.c");
    #[cfg(feature = "initial-exec-tls")]
    cc::Build::new()
        .file("csrc/thread_block.c")
        .flag_if_supported("-ftls-model=initial-exec")
        .compile("tensorpool_thread_block");
}
