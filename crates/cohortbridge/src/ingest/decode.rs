//! Turns the bytes of an ingestion request into JSON records, whatever encoding the client used.
//!
//! Mixpanel clients send a payload as a JSON body, an NDJSON body, or a form or query field
//! `data=` that contains raw or base64-encoded JSON, any of it optionally gzip-compressed. The
//! other form and query fields (`verbose`, `strict`, `ip`, ...) are returned as parameters.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;

use base64::Engine;
use flate2::read::GzDecoder;
use serde_json::value::RawValue;
use serde_json::Value;

/// The largest uncompressed payload accepted, as Mixpanel's `/import` documents (10 MB).
pub const MAX_UNCOMPRESSED_BYTES: usize = 10 * 1024 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("payload is larger than {limit} bytes uncompressed")]
    TooLarge { limit: usize },
    #[error("body is not valid gzip: {0}")]
    Gzip(String),
    #[error("field `data` is neither JSON nor base64-encoded JSON: {0}")]
    Base64(String),
    #[error("payload is not valid JSON: {0}")]
    Json(String),
    #[error("line {line} of the NDJSON body is not valid JSON: {message}")]
    NdjsonLine { line: usize, message: String },
    #[error("payload must be a JSON object or an array of objects, found {found}")]
    NotObjects { found: &'static str },
    #[error("payload is {found}, not an object or an array of records")]
    NotRecords { found: &'static str },
    #[error(
        "body is still gzip-compressed after decompressing it once, so it was compressed twice"
    )]
    DoubleGzip,
    #[error("request has no payload: send a JSON body or a `data` field")]
    Empty,
    #[error("Content-Encoding `{encoding}` is not supported: send the body uncompressed or gzip-compressed")]
    UnsupportedEncoding { encoding: String },
}

/// A decoded request: its records and its other parameters.
#[derive(Debug, Default)]
pub struct Decoded {
    pub records: Vec<Value>,
    pub params: HashMap<String, String>,
}

impl Decoded {
    /// Whether a flag parameter such as `verbose` or `strict` is set to `1` or `true`.
    pub fn flag(&self, name: &str) -> bool {
        flag(&self.params, name)
    }
}

/// Checks whether the flag parameter `name`, such as `verbose` or `strict`, is `1` or `true`.
pub fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    matches!(params.get(name).map(String::as_str), Some("1" | "true"))
}

/// Decodes a request. `query` is the raw query string; `content_type` and `content_encoding`
/// are the header values, if any.
pub fn decode(
    query: Option<&str>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
) -> Result<Decoded, DecodeError> {
    let Payload { json, params } = decode_payload(query, content_type, content_encoding, body)?;
    let records = parse_records(&json)?;
    Ok(Decoded { records, params })
}

/// A request's records as JSON text, not yet parsed, and its other parameters.
#[derive(Debug)]
pub struct Payload<'a> {
    /// A JSON object, a JSON array of objects, or NDJSON, as [`parse_records`] reads it.
    pub json: Cow<'a, [u8]>,
    pub params: HashMap<String, String>,
}

/// Decodes a request like [`decode`] up to the JSON text of its records.
pub fn decode_payload<'a>(
    query: Option<&str>,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &'a [u8],
) -> Result<Payload<'a>, DecodeError> {
    let mut params: HashMap<String, String> = query
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .collect();

    let encoding = content_encoding.map(str::trim).unwrap_or_default();
    let gzip_header = ["gzip", "x-gzip"]
        .iter()
        .any(|name| encoding.eq_ignore_ascii_case(name));
    if !gzip_header && !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
        return Err(DecodeError::UnsupportedEncoding {
            encoding: encoding.to_owned(),
        });
    }
    let body: Cow<'_, [u8]> = if gzip_header || body.starts_with(&GZIP_MAGIC) {
        Cow::Owned(gunzip(body)?)
    } else {
        check_size(body.len())?;
        Cow::Borrowed(body)
    };
    // Skipped before the body's form is judged, so that a mark before JSON sent with a form
    // content type, or before `data=`, does not hide what follows it.
    let body: Cow<'_, [u8]> = match body {
        Cow::Borrowed(bytes) => Cow::Borrowed(bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)),
        Cow::Owned(mut bytes) => {
            if bytes.starts_with(UTF8_BOM) {
                bytes.drain(..UTF8_BOM.len());
            }
            Cow::Owned(bytes)
        }
    };

    // curl and other tools label any `-d` body as a form, so a body that is JSON is JSON. A
    // scalar such as `42` is JSON too, and is rejected below as a payload with no records.
    let starts_like_json = matches!(body.trim_ascii_start().first(), Some(b'{' | b'['))
        || serde_json::from_slice::<Value>(&body).is_ok();
    let form_header = content_type.is_some_and(|ct| {
        ct.trim_start()
            .starts_with("application/x-www-form-urlencoded")
    });
    let is_form = (form_header && !starts_like_json) || looks_like_form(&body);
    let payload: Cow<'_, [u8]> = if is_form {
        // Standard form decoding turns an unescaped `+` into a space; `decode_data_field`
        // turns it back where the value is base64.
        let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
            .map_err(|e| DecodeError::Json(format!("form body is not URL-encoded: {e}")))?;
        params.extend(fields);
        match params.remove("data") {
            Some(data) => Cow::Owned(decode_data_field(&data)?),
            None => return Err(DecodeError::Empty),
        }
    } else if body.iter().all(u8::is_ascii_whitespace) {
        match params.remove("data") {
            Some(data) => Cow::Owned(decode_data_field(&data)?),
            None => return Err(DecodeError::Empty),
        }
    } else {
        body
    };
    Ok(Payload {
        json: payload,
        params,
    })
}

fn check_size(len: usize) -> Result<(), DecodeError> {
    if len > MAX_UNCOMPRESSED_BYTES {
        return Err(DecodeError::TooLarge {
            limit: MAX_UNCOMPRESSED_BYTES,
        });
    }
    Ok(())
}

/// Decompresses at most the size limit plus one byte, so a small gzip bomb is stopped early.
fn gunzip(body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    GzDecoder::new(body)
        .take(MAX_UNCOMPRESSED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
    check_size(out.len())?;
    if out.starts_with(&GZIP_MAGIC) {
        return Err(DecodeError::DoubleGzip);
    }
    Ok(out)
}

fn looks_like_form(body: &[u8]) -> bool {
    let trimmed = body.trim_ascii_start();
    trimmed.starts_with(b"data=") || (trimmed.contains(&b'=') && trimmed.starts_with(b"verbose="))
}

/// Decodes the value of a `data` field: raw JSON, or base64 (standard or URL-safe, padded or
/// not) of JSON or of gzip-compressed JSON.
fn decode_data_field(data: &str) -> Result<Vec<u8>, DecodeError> {
    let trimmed = data.trim();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        check_size(trimmed.len())?;
        return Ok(trimmed.as_bytes().to_vec());
    }
    // A form decoder upstream may have turned `+` into a space.
    let cleaned: String = trimmed
        .chars()
        .filter(|c| *c != '\n' && *c != '\r')
        .map(|c| if c == ' ' { '+' } else { c })
        .collect();
    let unpadded = cleaned.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(unpadded)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(unpadded))
        .map_err(|e| DecodeError::Base64(e.to_string()))?;
    if bytes.starts_with(&GZIP_MAGIC) {
        return gunzip(&bytes);
    }
    check_size(bytes.len())?;
    Ok(bytes)
}

/// The UTF-8 byte order mark. JSON forbids it, but files saved by some Windows tools start with
/// it, so a body or file that starts with it is read as if it did not.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses a JSON object, a JSON array of objects, or NDJSON. NDJSON is split on `\n` only
/// (a trailing `\r` is dropped), so U+2028, U+2029 and U+0085 inside strings never split a record.
pub fn parse_records(payload: &[u8]) -> Result<Vec<Value>, DecodeError> {
    let payload = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    let trimmed = payload.trim_ascii();
    if trimmed.is_empty() {
        return Err(DecodeError::Empty);
    }
    match serde_json::from_slice::<Value>(trimmed) {
        Ok(Value::Array(items)) => {
            if let Some(bad) = items.iter().find(|v| !v.is_object()) {
                return Err(DecodeError::NotObjects {
                    found: json_type(bad),
                });
            }
            Ok(items)
        }
        Ok(value @ Value::Object(_)) => Ok(vec![value]),
        Ok(other) => Err(DecodeError::NotRecords {
            found: json_scalar_type(&other),
        }),
        Err(whole_error) => {
            if !trimmed.contains(&b'\n') {
                return Err(DecodeError::Json(whole_error.to_string()));
            }
            parse_ndjson(trimmed)
        }
    }
}

/// Splits a JSON array of objects, or a single JSON object, into the text of each record
/// without parsing the records. Returns `None` for every other payload, NDJSON and invalid
/// JSON included, which [`parse_records`] then reads or rejects with its own error.
pub fn record_texts(payload: &[u8]) -> Option<Vec<&RawValue>> {
    let payload = payload.strip_prefix(UTF8_BOM).unwrap_or(payload);
    let trimmed = payload.trim_ascii();
    let records: Vec<&RawValue> = match trimmed.first()? {
        b'[' => serde_json::from_slice(trimmed).ok()?,
        b'{' => vec![serde_json::from_slice(trimmed).ok()?],
        _ => return None,
    };
    records
        .iter()
        .all(|record| record.get().starts_with('{'))
        .then_some(records)
}

fn parse_ndjson(payload: &[u8]) -> Result<Vec<Value>, DecodeError> {
    let mut records = Vec::new();
    for (index, line) in payload.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_slice(line).map_err(|e| DecodeError::NdjsonLine {
            line: index + 1,
            message: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(DecodeError::NdjsonLine {
                line: index + 1,
                message: format!("expected a JSON object, found {}", json_type(&value)),
            });
        }
        records.push(value);
    }
    Ok(records)
}

/// Names the type of a JSON value that is not an object or an array, for error messages.
fn json_scalar_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "JSON null",
        Value::Bool(_) => "a JSON boolean",
        Value::Number(_) => "a JSON number",
        Value::String(_) => "a JSON string",
        Value::Array(_) | Value::Object(_) => json_type(value),
    }
}

pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use base64::Engine;
    use flate2::write::GzEncoder;
    use serde_json::json;

    use super::*;

    #[test]
    fn form_body_byte_order_mark_ignored() {
        let json = b"\xEF\xBB\xBF[{\"event\":\"e\"}]";
        let form = Some("application/x-www-form-urlencoded");
        let decoded = decode(None, form, None, json).unwrap();
        assert_eq!(decoded.records, vec![json!({"event": "e"})]);
        let field = b"\xEF\xBB\xBFdata=%5B%7B%22event%22%3A%22e%22%7D%5D";
        let decoded = decode(None, None, None, field).unwrap();
        assert_eq!(decoded.records, vec![json!({"event": "e"})]);
    }

    #[test]
    fn byte_order_mark_before_json_is_ignored() {
        let records = parse_records(b"\xEF\xBB\xBF[{\"event\":\"e\"}]").unwrap();
        assert_eq!(records, vec![json!({"event": "e"})]);
        let lines = parse_records(b"\xEF\xBB\xBF{\"a\":1}\n{\"a\":2}").unwrap();
        assert_eq!(lines.len(), 2);
    }

    const FORM: &str = "application/x-www-form-urlencoded";

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn escape(text: &str) -> String {
        serde_urlencoded::to_string([("data", text)]).unwrap()
    }

    /// One row per encoding a Mixpanel client may use. Each decodes to the same two records.
    #[test]
    fn every_encoding_decodes_same_records() {
        // The `<<??>>~` makes the base64 form contain `+` and `/`, and the length gives `=` padding.
        let json = r#"[{"event":"a","properties":{"k":"<<??>>~"}},{"event":"b","properties":{}}]"#;
        let ndjson = "{\"event\":\"a\",\"properties\":{\"k\":\"<<??>>~\"}}\r\n{\"event\":\"b\",\"properties\":{}}\n";
        let encoded = b64(json);
        assert!(encoded.contains('+'));
        assert!(encoded.contains('/'));
        assert!(encoded.ends_with('='));
        type Case<'a> = (
            &'a str,
            Option<String>,
            Option<&'a str>,
            Option<&'a str>,
            Vec<u8>,
        );
        let cases: Vec<Case> = vec![
            (
                "raw json body",
                None,
                Some("application/json"),
                None,
                json.into(),
            ),
            (
                "ndjson body",
                None,
                Some("application/x-ndjson"),
                None,
                ndjson.into(),
            ),
            ("form raw json", None, Some(FORM), None, escape(json).into()),
            (
                "form base64 escaped",
                None,
                Some(FORM),
                None,
                escape(&encoded).into(),
            ),
            (
                "form base64 unescaped",
                None,
                Some(FORM),
                None,
                format!("data={encoded}").into(),
            ),
            (
                "form without header",
                None,
                None,
                None,
                format!("data={encoded}").into(),
            ),
            ("query raw json", Some(escape(json)), None, None, vec![]),
            ("query base64", Some(escape(&encoded)), None, None, vec![]),
            (
                "gzip json with header",
                None,
                Some("application/json"),
                Some("gzip"),
                gzip(json.as_bytes()),
            ),
            (
                "gzip json without header",
                None,
                None,
                None,
                gzip(json.as_bytes()),
            ),
            (
                "gzip form",
                None,
                Some(FORM),
                Some("gzip"),
                gzip(escape(&encoded).as_bytes()),
            ),
            (
                "base64 of gzip",
                None,
                Some(FORM),
                None,
                escape(&base64::engine::general_purpose::STANDARD.encode(gzip(json.as_bytes())))
                    .into(),
            ),
        ];
        for (name, query, content_type, encoding, body) in cases {
            let decoded = decode(query.as_deref(), content_type, encoding, &body)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(decoded.records.len(), 2, "{name}");
            assert_eq!(decoded.records[0]["properties"]["k"], "<<??>>~", "{name}");
            assert_eq!(decoded.records[1]["event"], "b", "{name}");
        }
    }

    #[test]
    fn json_body_labelled_as_form_is_json() {
        let body = b"{\"event\":\"x\"}\n{\"event\":\"y\"}\n";
        let decoded = decode(None, Some(FORM), None, body).unwrap();
        assert_eq!(decoded.records.len(), 2);
    }

    #[test]
    fn single_object_is_one_record() {
        let decoded = decode(None, None, None, br#"{"event":"x","properties":{}}"#).unwrap();
        assert_eq!(decoded.records, vec![json!({"event":"x","properties":{}})]);
    }

    #[test]
    fn form_params_are_kept() {
        let body = format!("{}&verbose=1&ip=0", escape("{\"event\":\"x\"}"));
        let decoded = decode(Some("strict=1"), Some(FORM), None, body.as_bytes()).unwrap();
        assert!(decoded.flag("verbose"));
        assert!(decoded.flag("strict"));
        assert_eq!(decoded.params.get("ip").map(String::as_str), Some("0"));
    }

    #[test]
    fn ndjson_splits_on_newline_only() {
        let body = "{\"s\":\"a\u{2028}b\u{2029}c\u{85}d\"}\n{\"s\":\"e\"}";
        let records = parse_records(body.as_bytes()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["s"], "a\u{2028}b\u{2029}c\u{85}d");
    }

    #[test]
    fn bad_ndjson_line_is_named() {
        let err = parse_records(b"{\"a\":1}\n{oops}\n").unwrap_err();
        assert!(
            matches!(err, DecodeError::NdjsonLine { line: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn scalar_payload_is_rejected() {
        assert_eq!(
            parse_records(b"42").unwrap_err(),
            DecodeError::NotRecords {
                found: "a JSON number"
            }
        );
        for content_type in [None, Some(FORM), Some("application/json")] {
            assert_eq!(
                decode(None, content_type, None, b"42").unwrap_err(),
                DecodeError::NotRecords {
                    found: "a JSON number"
                },
                "{content_type:?}"
            );
        }
        assert_eq!(
            decode(None, Some(FORM), None, b"\"text\"").unwrap_err(),
            DecodeError::NotRecords {
                found: "a JSON string"
            }
        );
        assert_eq!(
            parse_records(b"[{}, 3]").unwrap_err(),
            DecodeError::NotObjects { found: "a number" }
        );
    }

    #[test]
    fn empty_body_is_rejected() {
        assert_eq!(
            decode(None, None, None, b"  ").unwrap_err(),
            DecodeError::Empty
        );
    }

    #[test]
    fn unsupported_content_encoding_is_named() {
        let body = br#"[{"event":"e","properties":{"token":"t"}}]"#;
        let error = decode(None, None, Some("br"), body).unwrap_err();
        assert_eq!(
            error,
            DecodeError::UnsupportedEncoding {
                encoding: "br".into()
            }
        );
        assert!(error.to_string().contains("`br`"), "{error}");
        for accepted in ["identity", " gzip ", "X-GZIP"] {
            let body = if accepted == "identity" {
                body.to_vec()
            } else {
                gzip(body)
            };
            let decoded = decode(None, None, Some(accepted), &body).unwrap();
            assert_eq!(decoded.records.len(), 1, "{accepted}");
        }
    }

    #[test]
    fn gzip_bomb_stops_at_limit() {
        let huge = vec![b' '; MAX_UNCOMPRESSED_BYTES + 10];
        let compressed = gzip(&huge);
        assert!(compressed.len() < 64 * 1024);
        assert_eq!(
            decode(None, None, Some("gzip"), &compressed).unwrap_err(),
            DecodeError::TooLarge {
                limit: MAX_UNCOMPRESSED_BYTES
            }
        );
    }

    #[test]
    fn double_gzip_is_named() {
        let twice = gzip(&gzip(br#"{"event":"x"}"#));
        for (content_type, encoding) in [
            (None, Some("gzip")),
            (Some(FORM), Some("gzip")),
            (None, None),
        ] {
            assert_eq!(
                decode(None, content_type, encoding, &twice).unwrap_err(),
                DecodeError::DoubleGzip,
                "{content_type:?} {encoding:?}"
            );
        }
        let data = base64::engine::general_purpose::STANDARD.encode(&twice);
        assert_eq!(
            decode(None, Some(FORM), None, escape(&data).as_bytes()).unwrap_err(),
            DecodeError::DoubleGzip
        );
    }

    #[test]
    fn invalid_base64_is_reported() {
        let err = decode(None, Some(FORM), None, b"data=%%%notbase64!!").unwrap_err();
        assert!(matches!(err, DecodeError::Base64(_)), "{err:?}");
    }
}
