//! Writing NDJSON that every reader splits the same way.

use serde::Serialize;

/// Serialises a record for an NDJSON body with U+2028, U+2029 and U+0085 escaped as `\uXXXX`,
/// so that no reader that also splits on Unicode line separators breaks a record apart. Those
/// characters can only occur inside JSON strings, where the escape means the same character.
pub fn line<T: Serialize + ?Sized>(record: &T) -> serde_json::Result<Vec<u8>> {
    let raw = serde_json::to_vec(record)?;
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i..] {
            [0xE2, 0x80, 0xA8, ..] => {
                out.extend_from_slice(br"\u2028");
                i += 3;
            }
            [0xE2, 0x80, 0xA9, ..] => {
                out.extend_from_slice(br"\u2029");
                i += 3;
            }
            [0xC2, 0x85, ..] => {
                out.extend_from_slice(br"\u0085");
                i += 2;
            }
            _ => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn lines_escape_unicode_separators() {
        let record = json!({"s": "a\u{2028}b\u{2029}c\u{85}d"});
        let line = line(&record).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert_eq!(text, r#"{"s":"a\u2028b\u2029c\u0085d"}"#);
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed, record);
    }
}
