//! The JSON that `inspect --json` and `ls --json` print, for harnesses: one schema, with a
//! version, documented field by field under JSON OUTPUT in `man/rimgfs.1` (a test checks
//! that the output has exactly the fields the page lists, with their types).
//!
//! Rules the page states once for both: every listed field is always present (`null` when
//! the type allows it and there is no value), no other field appears, and a change that
//! removes or redefines a field raises [`SCHEMA_VERSION`]. Names and link targets are bytes
//! on Linux: a `*_bytes` field beside each holds them exactly when they are not UTF-8.
//! Dependencies: serde_json, error.

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::write_out;
use crate::error::{Context, Result};

/// Version of the schema; `schema_version` of every document.
pub const SCHEMA_VERSION: u64 = 1;

/// A document: `schema_version` and `source` (the image, as its messages name it), then
/// the fields of the object `fields`.
pub fn document(source: &Path, fields: Value) -> Value {
    let mut doc = Map::new();
    doc.insert("schema_version".into(), json!(SCHEMA_VERSION));
    doc.insert("source".into(), json!(source.display().to_string()));
    if let Value::Object(f) = fields {
        doc.extend(f);
    }
    Value::Object(doc)
}

/// `name` and `name_bytes` for a byte string: the text (exact when it is UTF-8, else with
/// U+FFFD for each invalid sequence), and the bytes as numbers when the text is not exact.
pub fn bytes_fields(doc: &mut Map<String, Value>, name: &str, b: Option<&[u8]>) {
    let (text, raw) = match b {
        None => (Value::Null, Value::Null),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => (json!(s), Value::Null),
            Err(_) => (json!(String::from_utf8_lossy(b)), json!(b)),
        },
    };
    doc.insert(name.into(), text);
    doc.insert(format!("{name}_bytes"), raw);
}

/// Writes a document, pretty-printed, with a final newline.
pub fn write(out: &mut dyn Write, doc: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(doc)
        .map_err(std::io::Error::from)
        .ctx("write", Path::new("stdout"))?;
    s.push('\n');
    write_out(out, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_fields_are_exact_or_carry_the_bytes() {
        let mut m = Map::new();
        bytes_fields(&mut m, "path", Some(b"/etc/hosts"));
        bytes_fields(&mut m, "target", None);
        bytes_fields(&mut m, "name", Some(b"caf\xe9"));
        assert_eq!(
            Value::Object(m),
            json!({
                "path": "/etc/hosts", "path_bytes": null,
                "target": null, "target_bytes": null,
                "name": "caf\u{fffd}", "name_bytes": [99, 97, 102, 233],
            })
        );
    }
}
