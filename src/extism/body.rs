//! Bodies in Otoroshi's JSON: `*_body_bytes` as arrays of signed bytes (Play writes a JVM
//! `Array[Byte]`), `body_base64`, `body_json`, `body_str`/`body`, and which one wins.

use base64::Engine as _;
use serde_json::Value;

/// A body as Otoroshi writes it into a context: a JSON array of signed bytes (`-128..=127`).
#[must_use]
pub fn signed_bytes(bytes: &[u8]) -> Value {
    Value::Array(bytes.iter().map(|&b| Value::from(b as i8)).collect())
}

/// Reads Play's `Reads[Array[Byte]]`: an array whose every element is a whole number in
/// `-128..=127` (`1.0` counts as 1); anything else is no value at all.
#[must_use]
pub fn read_signed_bytes(value: &Value) -> Option<Vec<u8>> {
    value.as_array()?.iter().map(|v| whole(v).filter(|n| (-128..=127).contains(n)).map(|n| n as i8 as u8)).collect()
}

/// A JSON number with no fractional part, as an `i64`.
pub(crate) fn whole(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f <= i64::MAX as f64).then_some(f as i64)
}

/// Akka's `ByteString.decodeBase64` (an RFC 2045 decoder): characters outside the base64
/// alphabet are skipped, padding is optional.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let kept: String = text.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/')).collect();
    LENIENT.decode(kept.as_bytes()).map_err(|e| format!("not valid base64: {e}"))
}

#[must_use]
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `body_json` exactly as the plugin wrote it, without insignificant whitespace: the client gets
/// the plugin's key order (Otoroshi's `stringify` keeps it; a parsed `serde_json::Value` would
/// sort keys).
#[must_use]
pub fn raw_body_json(output: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow, default)]
        body_json: Option<&'a serde_json::value::RawValue>,
    }
    let raw: Raw<'_> = serde_json::from_slice(output).ok()?;
    raw.body_json.map(|r| minify(r.get()))
}

/// Removes whitespace outside strings from valid JSON text.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !c.is_ascii_whitespace() {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

/// Where an output's body came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySource {
    Str,
    Json,
    Base64,
    Bytes,
}

/// Otoroshi's `BodyHelper.extractBodyFromOpt` over a step's output: `body_str` (or `body` when
/// `body_str` is not a string) unless blank, else `body_json` unless null, else `body_base64`
/// unless blank, else `body_bytes` unless empty. `raw_output` is the output's text, for
/// `body_json`'s key order. `Err` for a `body_base64` that cannot be decoded.
pub fn extract_body(doc: &Value, raw_output: &[u8]) -> Result<Option<(Vec<u8>, BodySource)>, String> {
    let text = doc.get("body_str").and_then(Value::as_str).or_else(|| doc.get("body").and_then(Value::as_str));
    if let Some(s) = text {
        if !s.trim().is_empty() {
            return Ok(Some((s.as_bytes().to_vec(), BodySource::Str)));
        }
    }
    if let Some(json) = doc.get("body_json").filter(|v| !v.is_null()) {
        let text = raw_body_json(raw_output).unwrap_or_else(|| json.to_string());
        return Ok(Some((text.into_bytes(), BodySource::Json)));
    }
    if let Some(s) = doc.get("body_base64").and_then(Value::as_str) {
        if !s.trim().is_empty() {
            return Ok(Some((decode_base64(s).map_err(|e| format!("body_base64: {e}"))?, BodySource::Base64)));
        }
    }
    if let Some(bytes) = doc.get("body_bytes").and_then(read_signed_bytes) {
        if !bytes.is_empty() {
            return Ok(Some((bytes, BodySource::Bytes)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(doc: &str) -> Option<(Vec<u8>, BodySource)> {
        extract_body(&serde_json::from_str(doc).unwrap(), doc.as_bytes()).unwrap()
    }

    #[test]
    fn bytes_are_written_signed() {
        assert_eq!(signed_bytes(&[0, 127, 128, 255]), json!([0, 127, -128, -1]));
    }

    #[test]
    fn signed_bytes_are_read_back_and_anything_else_is_no_value() {
        assert_eq!(read_signed_bytes(&json!([104, -1, 1.0])), Some(vec![104, 255, 1]));
        assert_eq!(read_signed_bytes(&json!([200])), None);
        assert_eq!(read_signed_bytes(&json!([1.5])), None);
        assert_eq!(read_signed_bytes(&json!("abc")), None);
    }

    #[test]
    fn body_str_wins_over_everything() {
        let b = body(r#"{"body_str":"s","body":"b","body_json":{"a":1},"body_base64":"eA==","body_bytes":[1]}"#);
        assert_eq!(b, Some((b"s".to_vec(), BodySource::Str)));
    }

    #[test]
    fn body_is_the_alias_of_body_str() {
        assert_eq!(body(r#"{"body":"b","body_json":1}"#), Some((b"b".to_vec(), BodySource::Str)));
    }

    #[test]
    fn a_blank_body_str_gives_way_to_body_json() {
        assert_eq!(
            body(r#"{"body_str":"  ","body_json":{"b":1,"a":2}}"#),
            Some((br#"{"b":1,"a":2}"#.to_vec(), BodySource::Json))
        );
    }

    #[test]
    fn body_json_keeps_the_plugins_key_order_and_drops_whitespace() {
        assert_eq!(
            body("{\"body_json\": {\"z\": [1, 2], \"a\": \"x y\"}}"),
            Some((br#"{"z":[1,2],"a":"x y"}"#.to_vec(), BodySource::Json))
        );
    }

    #[test]
    fn a_null_body_json_gives_way_to_base64_then_bytes() {
        assert_eq!(body(r#"{"body_json":null,"body_base64":"aGk="}"#), Some((b"hi".to_vec(), BodySource::Base64)));
        assert_eq!(body(r#"{"body_base64":" ","body_bytes":[104,105]}"#), Some((b"hi".to_vec(), BodySource::Bytes)));
        assert_eq!(body(r#"{"body_bytes":[]}"#), None);
        assert_eq!(body(r#"{}"#), None);
    }

    #[test]
    fn base64_is_decoded_leniently() {
        assert_eq!(decode_base64("aG\nk").unwrap(), b"hi");
        assert_eq!(encode_base64(b"hi"), "aGk=");
    }
}
