//! Byte quantities: printing them for people and reading them from config files.
//!
//! Sizes in messages and tables print with binary units (`64.00 MiB`), and config
//! files may write a size either as a plain integer or as a string with a unit:
//!
//! ```
//! use tensorpool::bytes::{format_bytes, parse_bytes};
//!
//! assert_eq!(format_bytes(64 << 20), "64.00 MiB");
//! assert_eq!(format_bytes(512), "512 B");
//! assert_eq!(parse_bytes("2 MiB"), Ok(2 << 20));
//! assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
//! assert!(parse_bytes("12 parsecs").is_err());
//! ```

use serde::{de, Deserializer, Serializer};
use std::fmt;

const UNITS: [(&str, u64); 6] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("PiB", 1 << 50),
];

/// Formats a byte count with a binary unit: `512 B`, `1.50 KiB`, `64.00 MiB`.
pub fn format_bytes(bytes: usize) -> String {
    let b = bytes as u64;
    let (unit, scale) = UNITS
        .iter()
        .rev()
        .copied()
        .find(|&(_, scale)| b >= scale)
        .unwrap_or(UNITS[0]);
    if scale == 1 {
        format!("{b} B")
    } else {
        format!("{:.2} {unit}", b as f64 / scale as f64)
    }
}

/// Parses `"4096"`, `"64 KiB"`, `"1.5 GiB"`, `"2MB"` (decimal units are accepted too).
///
/// Returns a message naming what was wrong when the text is not a size.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a size: it must start with a number"
        ));
    }
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
            "`{text}` has an unknown unit `{unit}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
        ))
        }
    };
    let too_large = || format!("`{text}` is too large");
    // A whole number is exact in integers (a float loses the digits past 2^53).
    if let Ok(whole) = number.parse::<u128>() {
        return whole
            .checked_mul(u128::from(scale))
            .and_then(|bytes| usize::try_from(bytes).ok())
            .ok_or_else(too_large);
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: `{number}` is not a number"))?;
    let bytes = value * scale as f64;
    // `usize::MAX as f64` rounds up to 2^64, which is itself too large.
    if !bytes.is_finite() || bytes >= usize::MAX as f64 {
        return Err(too_large());
    }
    if bytes.fract() != 0.0 {
        return Err(format!("`{text}` is not a whole number of bytes"));
    }
    Ok(bytes as usize)
}

/// Serde helpers: a size field that reads an integer or a string with a unit and
/// writes a plain integer. Use with `#[serde(with = "tensorpool::bytes::serde_size")]`.
pub mod serde_size {
    use super::*;

    /// Writes the size as a plain integer.
    pub fn serialize<S: Serializer>(value: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*value as u64)
    }

    /// Reads an integer or a string such as `"64 MiB"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

/// The same as [`serde_size`] for an optional size (`None` when absent).
pub mod serde_opt_size {
    use super::*;

    /// Writes the size as a plain integer, or nothing.
    pub fn serialize<S: Serializer>(value: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_some(&(*v as u64)),
            None => s.serialize_none(),
        }
    }

    /// Reads an integer, a string such as `"64 MiB"`, or nothing.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        struct OptVisitor;
        impl<'de> de::Visitor<'de> for OptVisitor {
            type Value = Option<usize>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, a string such as \"64 MiB\", or nothing")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(SizeVisitor).map(Some)
            }
        }
        d.deserialize_option(OptVisitor)
    }
}

struct SizeVisitor;

impl de::Visitor<'_> for SizeVisitor {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a size in bytes (an integer) or a string such as \"64 MiB\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| E::custom(format!("{v} is too large for a size")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| E::custom(format!("a size cannot be negative, got {v}")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<usize, E> {
        if v >= 0.0 && v.fract() == 0.0 && v <= usize::MAX as f64 {
            Ok(v as usize)
        } else {
            Err(E::custom(format!(
                "a size must be a whole, non-negative number of bytes, got {v}"
            )))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        parse_bytes(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_each_unit() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.00 KiB");
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
        assert_eq!(format_bytes(1 << 40), "1.00 TiB");
    }

    #[test]
    fn parses_units_and_rejects_nonsense() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes(" 64 kib "), Ok(65536));
        assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("4 M"), Ok(4 << 20));
        assert!(parse_bytes("").unwrap_err().contains("start with a number"));
        assert!(parse_bytes("MiB")
            .unwrap_err()
            .contains("start with a number"));
        assert!(parse_bytes("1.2.3 KiB")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_bytes("3 furlongs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_bytes("0.3 B").unwrap_err().contains("whole number"));
        assert!(parse_bytes("1e400").is_err());
        assert!(parse_bytes("99999999999 PiB").is_err());
        // At the top of the range: exact, and 2^64 is refused (it read as usize::MAX).
        assert_eq!(parse_bytes("18446744073709551615"), Ok(usize::MAX));
        assert_eq!(parse_bytes("9007199254740993"), Ok(9_007_199_254_740_993));
        assert!(parse_bytes("18446744073709551616")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_bytes("16777216 TiB")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(parse_bytes("16777215 TiB"), Ok(16_777_215 << 40));
        assert!(parse_bytes("16777216.0 TiB").is_err());
    }

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct Sized {
        #[serde(with = "serde_size")]
        size: usize,
        #[serde(with = "serde_opt_size", default)]
        limit: Option<usize>,
    }

    #[test]
    fn serde_reads_numbers_and_strings() {
        let s: Sized = serde_json::from_str(r#"{"size": "1 KiB", "limit": 7}"#).unwrap();
        assert_eq!(
            s,
            Sized {
                size: 1024,
                limit: Some(7)
            }
        );
        let s: Sized = serde_json::from_str(r#"{"size": 5}"#).unwrap();
        assert_eq!(s.limit, None);
        let s: Sized = serde_json::from_str(r#"{"size": 5, "limit": null}"#).unwrap();
        assert_eq!(s.limit, None);
        let err = serde_json::from_str::<Sized>(r#"{"size": -5}"#).unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
        let err = serde_json::from_str::<Sized>(r#"{"size": "lots"}"#).unwrap_err();
        assert!(err.to_string().contains("not a size"), "{err}");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"size":5,"limit":null}"#
        );
    }
}
