//! Label and field selectors, the subset of apimachinery's grammar that
//! clients (kubectl, kube-rs) send: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
//! `k in (a,b)`, `k notin (a,b)`; field selectors on `metadata.name` and
//! `metadata.namespace`.

use serde_json::Value;

/// One requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector(Vec<Requirement>);

/// A selector string the server cannot parse or does not support.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SelectorError(pub String);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(values: &str) -> Result<Vec<String>, SelectorError> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("expected a parenthesised set, got {values:?}")))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

impl Selector {
    /// Parses a label selector.
    pub(crate) fn parse_labels(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), parse_set(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), parse_set(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if part.contains([' ', '(', ')']) {
                return Err(SelectorError(format!(
                    "unable to parse requirement: {part:?}"
                )));
            } else {
                Requirement::Exists(part.into())
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Parses a field selector; only `metadata.name` and `metadata.namespace`
    /// are supported (a real apiserver answers 400 for unknown field labels too).
    pub(crate) fn parse_fields(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else {
                return Err(SelectorError(format!("invalid field selector: {part:?}")));
            };
            let key = match &req {
                Requirement::Equals(k, _) | Requirement::NotEquals(k, _) => k.as_str(),
                _ => "",
            };
            if key != "metadata.name" && key != "metadata.namespace" {
                return Err(SelectorError(format!("field label not supported: {key}")));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether the object's labels satisfy the selector.
    pub(crate) fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0
            .iter()
            .all(|req| Self::holds(req, |k| labels[k].as_str()))
    }

    /// Whether the object's metadata fields satisfy the selector.
    pub(crate) fn matches_fields(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        self.0.iter().all(|req| {
            Self::holds(req, |k| match k {
                "metadata.name" => meta["name"].as_str(),
                "metadata.namespace" => meta["namespace"].as_str(),
                _ => None,
            })
        })
    }

    fn holds<'a>(req: &Requirement, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        match req {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes", "tier": "cp"}}});
        let yes = [
            "kubernetes.io/service-name=kubernetes",
            "kubernetes.io/service-name==kubernetes,tier",
            "tier in (cp,x),!missing",
            "tier notin (x, y)",
            "",
        ];
        for s in yes {
            assert!(
                Selector::parse_labels(s).unwrap().matches_labels(&obj),
                "{s}"
            );
        }
        let no = [
            "tier!=cp",
            "missing",
            "!tier",
            "tier in (x)",
            "tier notin (cp)",
        ];
        for s in no {
            assert!(
                !Selector::parse_labels(s).unwrap().matches_labels(&obj),
                "{s}"
            );
        }
        assert!(Selector::parse_labels("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "kubernetes", "namespace": "default"}});
        let sel = Selector::parse_fields("metadata.name=kubernetes").unwrap();
        assert!(sel.matches_fields(&obj));
        let sel = Selector::parse_fields("metadata.name!=kubernetes").unwrap();
        assert!(!sel.matches_fields(&obj));
        assert!(Selector::parse_fields("spec.foo=bar").is_err());
    }
}
