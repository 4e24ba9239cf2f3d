//! JSON text exactly as Glance stores it (`jsonutils.dumps`): Python's
//! default separators `", "` and `": "`, and non-ASCII escaped as `\uXXXX`
//! (which also keeps 4-byte UTF-8 out of MySQL).

use std::io;

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{:04x}", u)?;
                }
            }
        }
        Ok(())
    }
}

/// Serialises `value` the way Python's `json.dumps` does by default.
pub fn dumps<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, PythonFormatter);
    // Serialising a serde_json::Value or plain data into memory cannot fail.
    if value.serialize(&mut ser).is_err() {
        return "null".to_string();
    }
    String::from_utf8(out).unwrap_or_else(|_| "null".to_string())
}

/// Parses stored JSON leniently: NULL or invalid text becomes `{}` for
/// metadata columns, as the daemons must never stop on one bad row.
pub fn loads_or_empty(s: Option<&str>) -> serde_json::Value {
    s.and_then(|s| serde_json::from_str(s).ok())
        .filter(|v: &serde_json::Value| v.is_object())
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_style() {
        assert_eq!(dumps(&json!({"store": "fast"})), r#"{"store": "fast"}"#);
        assert_eq!(
            dumps(&json!({"a": [1, 2], "b": null})),
            r#"{"a": [1, 2], "b": null}"#
        );
        assert_eq!(
            dumps(&json!({"n": "é😀"})),
            r#"{"n": "\u00e9\ud83d\ude00"}"#
        );
        assert_eq!(loads_or_empty(None), json!({}));
        assert_eq!(loads_or_empty(Some("not json")), json!({}));
        assert_eq!(
            loads_or_empty(Some(r#"{"store": "x"}"#)),
            json!({"store": "x"})
        );
    }
}
