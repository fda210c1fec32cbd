//! The Chrome-trace JSON that PyTorch's profiler exports with `profile_memory=True`.
//!
//! Its `[memory]` instant events carry `Addr`, `Bytes` (negative for a free) and the
//! device (`Device Type`, `Device Id`). Events are taken in timestamp order, and a free
//! is paired with the latest allocation at its address on its device; the other
//! events of the trace (operators, kernels) are skipped.

use super::{malformed, Format, Location, Pairing, Trace};
use crate::error::Result;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct File {
    #[serde(rename = "traceEvents")]
    trace_events: Vec<Value>,
}

/// A memory event, by its place in `traceEvents`.
struct MemoryEvent {
    index: usize,
    ts: f64,
    device: (i64, i64),
    addr: u64,
    bytes: i64,
}

/// Parses a whole Chrome-trace JSON document.
pub(crate) fn parse(bytes: &[u8]) -> Result<Trace> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| match e.line() {
        0 => malformed(Location::File, e.to_string()),
        line => malformed(Location::Line(line), e.to_string()),
    })?;
    let mut events = Vec::new();
    for (index, event) in file.trace_events.iter().enumerate() {
        if event.get("name").and_then(Value::as_str) != Some("[memory]") {
            continue;
        }
        let bad = |why: &str| malformed(Location::Event(index), format!("a [memory] event {why}"));
        let args = event.get("args").ok_or_else(|| bad("has no args"))?;
        let int = |key: &str| -> Result<Option<i64>> {
            match args.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| bad(&format!("has a `{key}` that is not an integer: {v}"))),
            }
        };
        let bytes = int("Bytes")?.ok_or_else(|| bad("has no `Bytes`"))?;
        let addr = int("Addr")?.ok_or_else(|| bad("has no `Addr`"))?;
        let addr =
            u64::try_from(addr).map_err(|_| bad(&format!("has a negative `Addr`: {addr}")))?;
        let ts = match event.get("ts") {
            None => 0.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(&format!("has a `ts` that is not a number: {v}")))?,
        };
        let device = (
            int("Device Type")?.unwrap_or(0),
            int("Device Id")?.unwrap_or(-1),
        );
        events.push(MemoryEvent {
            index,
            ts,
            device,
            addr,
            bytes,
        });
    }
    events.sort_by(|a, b| a.ts.total_cmp(&b.ts));
    let mut pairing = Pairing::default();
    for e in events {
        let key = (e.device, e.addr);
        // `ts` is in microseconds.
        let time = (e.ts.max(0.0) * 1e3) as u64;
        match e.bytes {
            0 => {}
            b if b > 0 => pairing.alloc(key, b as u64, time, Location::Event(e.index))?,
            _ => pairing.free(key, time),
        }
    }
    Ok(pairing.finish(Format::ChromeJson))
}

#[cfg(test)]
mod tests {
    use super::super::tests::reason;
    use super::super::{Event, Trace};
    use super::*;

    fn memory(ts: f64, addr: i64, bytes: i64) -> String {
        format!(
            r#"{{"ph": "i", "name": "[memory]", "ts": {ts}, "args": {{"Addr": {addr}, "Bytes": {bytes}, "Device Type": 0, "Device Id": -1}}}}"#
        )
    }

    #[test]
    fn memory_events_are_paired_in_time_order() {
        let doc = format!(
            r#"{{"traceEvents": [{}, {{"ph": "X", "name": "aten::linear", "ts": 1}}, {}, {}, {}]}}"#,
            memory(3.0, 4096, -64),
            memory(1.0, 4096, 64),
            memory(2.0, 8192, 128),
            memory(4.0, 12288, -8)
        );
        let t = Trace::parse(doc.as_bytes()).unwrap();
        assert_eq!(t.format, Format::ChromeJson);
        assert_eq!(
            t.events,
            vec![
                Event::Alloc { id: 0, size: 64 },
                Event::Alloc { id: 1, size: 128 },
                Event::Free { id: 0 }
            ]
        );
        assert_eq!((t.unmatched_frees, t.leaked_blocks), (1, 1));
    }

    #[test]
    fn bad_events_are_named_by_index() {
        let cases = [
            (r#"{"traceEvents": [{"name": "[memory]"}]}"#, "no args"),
            (
                r#"{"traceEvents": [{"name": "x"}, {"name": "[memory]", "args": {"Addr": 1}}]}"#,
                "no `Bytes`",
            ),
            (
                r#"{"traceEvents": [{"name": "[memory]", "args": {"Bytes": 1}}]}"#,
                "no `Addr`",
            ),
            (
                r#"{"traceEvents": [{"name": "[memory]", "args": {"Bytes": "a", "Addr": 1}}]}"#,
                "not an integer",
            ),
            (
                r#"{"traceEvents": [{"name": "[memory]", "args": {"Bytes": 8, "Addr": -1}}]}"#,
                "negative",
            ),
            (
                r#"{"traceEvents": [{"name": "[memory]", "ts": "x", "args": {"Bytes": 8, "Addr": 1}}]}"#,
                "ts",
            ),
        ];
        for (doc, needle) in cases {
            let (at, why) = reason(Trace::parse(doc.as_bytes()));
            assert!(matches!(at, Location::Event(_)), "{doc}: {at}");
            assert!(why.contains(needle), "`{needle}` not in `{why}`");
        }
        let (at, _) = reason(Trace::parse(b"{\n\"traceEvents\": [\n}"));
        assert_eq!(at, Location::Line(3));
        let (_, why) = reason(Trace::parse(b"{\"events\": []}"));
        assert!(why.contains("traceEvents"), "{why}");
    }
}
