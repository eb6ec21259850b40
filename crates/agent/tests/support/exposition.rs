//! A small reader of the Prometheus text format, for checking what
//! `/metrics` serves: families (name, type, help), series (name, labels),
//! and duplicates.

use std::collections::{BTreeMap, BTreeSet};

/// One metric family as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// `counter` or `gauge`.
    pub kind: String,
    /// The `# HELP` text.
    pub help: String,
    /// Label names over every series.
    pub labels: BTreeSet<String>,
}

/// The families by series name (a counter's with `_total`), and every
/// series (`name{sorted labels}`) that appears more than once.
pub fn parse(text: &str) -> (BTreeMap<String, Family>, Vec<String>) {
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut duplicates = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_owned(), text.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            kinds.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            let (name, label_text) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let pairs = split_labels(label_text);
            let names = labels.entry(name.to_owned()).or_default();
            names.extend(pairs.iter().map(|(k, _)| k.clone()));
            let mut sorted = pairs.clone();
            sorted.sort();
            let key = format!("{name}{sorted:?}");
            if !seen.insert(key.clone()) {
                duplicates.push(key);
            }
        }
    }
    let mut families = BTreeMap::new();
    for (name, kind) in kinds {
        let series = if kind == "counter" && !name.ends_with("_total") {
            format!("{name}_total")
        } else {
            name.clone()
        };
        families.insert(
            series.clone(),
            Family {
                kind,
                help: help.get(&name).cloned().unwrap_or_default(),
                labels: labels.get(&series).cloned().unwrap_or_default(),
            },
        );
    }
    (families, duplicates)
}

/// `a="x",b="y\"z"` → [(a, x), (b, y"z)].
fn split_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_owned(), value));
        rest = after.get(end..).unwrap_or("");
    }
    out
}

/// The families `docs/metrics.md` lists: rows `| `name` | type | labels | help |`.
pub fn documented(markdown: &str) -> BTreeMap<String, Family> {
    let mut out = BTreeMap::new();
    for line in markdown.lines() {
        let Some(row) = line.strip_prefix("| `cplb_") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let [name, kind, labels, help, ..] = cells.as_slice() else {
            continue;
        };
        out.insert(
            format!("cplb_{}", name.trim_end_matches('`')),
            Family {
                kind: (*kind).to_owned(),
                help: (*help).to_owned(),
                labels: labels
                    .split(',')
                    .map(|l| l.trim().trim_matches('`').to_owned())
                    .filter(|l| !l.is_empty())
                    .collect(),
            },
        );
    }
    out
}
