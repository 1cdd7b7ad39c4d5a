//! `{{name}}` placeholders: finding them (to check a catalogue) and filling them (to apply a
//! trial's parameters).

use std::collections::BTreeMap;

/// Placeholders the runner fills itself, whatever the catalogue: where the trial's files live,
/// the rendered config file, the address the shadow must listen on and the origin's address.
pub const BUILTIN_PLACEHOLDERS: &[&str] = &["dir", "config", "listen", "origin"];

/// The names of every `{{name}}` in `text`, in order (names are trimmed: `{{ a }}` is `a`).
/// An opening `{{` with no closing `}}` is returned as `Err` with the text after it.
pub fn placeholders(text: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(after.chars().take(20).collect());
        };
        names.push(after[..end].trim().to_owned());
        rest = &after[end + 2..];
    }
    Ok(names)
}

/// Replaces every `{{name}}` with its value. Names with no value are left as they are (a
/// validated catalogue has none).
pub fn render(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        match values.get(name) {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_fills_placeholders() {
        let t = "a {{x}} b {{ y }} c {{x}}";
        assert_eq!(placeholders(t).expect("closed"), ["x", "y", "x"]);
        let mut v = BTreeMap::new();
        v.insert("x".to_owned(), "1".to_owned());
        v.insert("y".to_owned(), "two".to_owned());
        assert_eq!(render(t, &v), "a 1 b two c 1");
        assert!(placeholders("a {{x").is_err());
    }
}
