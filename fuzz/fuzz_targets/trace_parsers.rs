//! Every parser of untrusted input on arbitrary bytes: trace files (RMM CSV,
//! MiniMalloc intervals, PyTorch Chrome JSON, each also gzip-compressed) and config
//! files (TOML, JSON). Errors are expected; a panic, a hang or a crash is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use tensorpool::trace::Trace;
use tensorpool::Config;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the rest is presented, so that every parser sees it
    // at the start of its input (the format is told by the start).
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let body: Vec<u8> = match how % 6 {
        0 => rest.to_vec(),
        1 => [b"Thread,Time,Action,Pointer,Size,Stream\n".as_slice(), rest].concat(),
        2 => [b"id,lower,upper,size\n".as_slice(), rest].concat(),
        3 => [b"{\"traceEvents\": [".as_slice(), rest].concat(),
        4 => {
            // Whatever it is, gzip-compressed (truncated when the byte says so).
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(rest).unwrap();
            let mut out = gz.finish().unwrap();
            if how & 0x80 != 0 {
                out.truncate(out.len() / 2);
            }
            out
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = Config::from_toml_str(text);
                let _ = Config::from_json_str(text);
            }
            return;
        }
    };
    if let Ok(trace) = Trace::parse(&body) {
        // What a parsed trace offers must not panic either.
        let _ = trace.peak_live_bytes();
        let _ = trace.lifetimes();
        let _ = trace.block_sizes();
    }
});
