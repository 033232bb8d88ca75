//! Property paths: segments joined by NUL, with or without a trailing NUL
//! (the Rust SDK sends none, the C++ SDK sends one).

/// Splits a raw path into its segments. An empty path has no segments.
pub fn split(raw: &[u8]) -> Vec<&[u8]> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0).collect()
}

/// Joins segments with '.', the way operators write property names
/// (`request.headers.x-foo`), for lookups and messages.
pub fn dotted(raw: &[u8]) -> String {
    split(raw).iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_path_forms_are_equal() {
        assert_eq!(split(b"request\0path"), vec![&b"request"[..], b"path"]);
        assert_eq!(split(b"request\0path\0"), vec![&b"request"[..], b"path"]);
        assert_eq!(dotted(b"plugin_name\0"), "plugin_name");
        assert!(split(b"").is_empty());
    }
}
