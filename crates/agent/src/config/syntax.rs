//! YAML and type errors (the parser stops at the first), reworded for a k0s
//! user: where, which key, and what to write instead of serde's jargon
//! (`invalid i64`, `expected sequence start`).

use super::{Problem, position};

/// The parser's error as a [`Problem`] at its line and column, its path the
/// key on that line.
pub(super) fn problem(text: &str, error: &serde_saphyr::Error) -> Problem {
    let position = error.location().and_then(|l| position(&l));
    let rendered = error.without_snippet().to_string();
    let message = strip_prefixes(rendered.lines().next().unwrap_or_default());
    let (key, value) = position
        .filter(|_| !message.contains("tabs"))
        .and_then(|(line, column)| key_and_value(text, line, column))
        .unwrap_or_default();
    Problem::error(key.clone(), position, explain(message, &key, &value))
}

/// `error: line 3 column 5: msg` → `msg`.
fn strip_prefixes(message: &str) -> &str {
    let mut rest = message.trim();
    rest = rest.strip_prefix("error: ").unwrap_or(rest);
    if let Some(after) = rest.strip_prefix("line ")
        && let Some((_, tail)) = after.split_once(": ")
        && after.split_once(':').is_some_and(|(head, _)| {
            head.split_whitespace()
                .all(|w| w == "column" || w.chars().all(|c| c.is_ascii_digit()))
        })
    {
        rest = tail;
    }
    // `… at line 1 column 50`: the position is reported on its own.
    if let Some((head, tail)) = rest.rsplit_once(" at line ")
        && tail
            .split_whitespace()
            .all(|w| w == "column" || w.trim_end_matches(',').chars().all(|c| c.is_ascii_digit()))
    {
        rest = head;
    }
    rest
}

/// The key whose value is wrong, and that value as written: the key on
/// `line` (1-based) when the error is in its value, or the parent key when
/// the error is at the key itself (a section where a list was expected).
fn key_and_value(text: &str, line: u64, column: u64) -> Option<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let index = usize::try_from(line).ok()?.checked_sub(1)?;
    let (key, value, key_column, indent) = split_key(lines.get(index)?)?;
    if column > key_column {
        return Some((key, value));
    }
    // The value starting here belongs to the closest less-indented key.
    lines
        .get(..index)?
        .iter()
        .rev()
        .filter_map(|l| split_key(l))
        .find(|(_, _, _, parent_indent)| *parent_indent < indent)
        .map(|(parent, _, _, _)| (parent, "a section of `key: value` lines".to_owned()))
}

/// `  - key: value # c` → (key, value, key's 1-based column, indentation);
/// block style only (`{"a": 1}` has no one key).
fn split_key(line: &str) -> Option<(String, String, u64, usize)> {
    let indent = line.len() - line.trim_start().len();
    let written = line.trim_start();
    let (written, dash) = match written.strip_prefix("- ") {
        Some(rest) => (rest, 2),
        None => (written, 0),
    };
    let (key, value) = written.split_once(':')?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let value = value.split(" #").next().unwrap_or_default().trim();
    let column = u64::try_from(indent + dash + 1).ok()?;
    Some((key.to_owned(), value.to_owned(), column, indent + dash))
}

/// serde's wording → what to write.
fn explain(message: &str, key: &str, value: &str) -> String {
    let got = if value.is_empty() {
        String::new()
    } else {
        format!(". Got: {value}")
    };
    let integer = [
        "invalid i64",
        "invalid u64",
        "invalid i32",
        "invalid u32",
        "invalid u16",
        "invalid u8",
        "invalid integer",
    ];
    if integer.iter().any(|m| message.contains(m)) {
        let unit = if key.ends_with("Seconds") {
            " of seconds, without a unit"
        } else {
            ""
        };
        return format!("must be a whole number{unit}{got}");
    }
    if message.contains("expected sequence start")
        || message.contains("invalid type: string") && message.contains("sequence")
    {
        let dash = if value.starts_with("a section") {
            " (a `- ` before the first key of each entry makes it one)"
        } else {
            ""
        };
        return format!(
            "must be a list: [\"a\", \"b\"] on the same line, or one `- item` per line below the key{got}{dash}"
        );
    }
    if message.contains("expected mapping start")
        || message.contains("invalid type") && message.contains("map")
    {
        return format!("must be a section of `key: value` lines, indented below the key{got}");
    }
    if message.contains("tabs disallowed") {
        return format!("{message}: indent with spaces, not tabs");
    }
    if message.contains("invalid bool") || message.contains("invalid boolean") {
        return format!("must be true or false{got}");
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_cut() {
        assert_eq!(
            strip_prefixes("line 3 column 5: invalid i64"),
            "invalid i64"
        );
        assert_eq!(strip_prefixes("error: line 3 column 5: x: y"), "x: y");
        assert_eq!(strip_prefixes("unknown field `a`"), "unknown field `a`");
        assert_eq!(
            strip_prefixes("unknown field `a`, expected `b` at line 1, column 50"),
            "unknown field `a`, expected `b`"
        );
    }

    #[test]
    fn keys_are_read_from_the_line() {
        let text = "a:\n  - advertIntervalSeconds: 1s # comment\nlist:\n  key: x\n";
        assert_eq!(
            key_and_value(text, 2, 28),
            Some(("advertIntervalSeconds".to_owned(), "1s".to_owned()))
        );
        // At the key itself: the value of the parent is wrong.
        assert_eq!(
            key_and_value(text, 4, 3),
            Some((
                "list".to_owned(),
                "a section of `key: value` lines".to_owned()
            ))
        );
        assert_eq!(key_and_value(text, 9, 1), None);
    }
}
