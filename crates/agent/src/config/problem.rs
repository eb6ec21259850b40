//! What is wrong with a configuration, and where: [`Problem`] with its
//! [`Severity`], the positions of what was written, and the collapsing of a
//! problem repeated along a list.

use std::collections::BTreeMap;
use std::fmt;

use serde_saphyr::Location;

use super::CPLB_PATH;

/// Line and column of each path of the document that was written.
///
/// Not part of the configuration's meaning: two configurations that say the
/// same thing are equal wherever they were written.
#[derive(Debug, Clone, Default)]
pub struct Positions(pub(super) BTreeMap<String, (u64, u64)>);

impl PartialEq for Positions {
    fn eq(&self, _: &Positions) -> bool {
        true
    }
}

impl Eq for Positions {}

impl Positions {
    /// Where `path` was written; for a key that was not written (a default
    /// or a missing key), where its closest written parent was.
    pub fn get(&self, path: &str) -> Option<(u64, u64)> {
        let mut path = path;
        loop {
            if let Some(at) = self.0.get(path) {
                return Some(*at);
            }
            let cut = path.rfind(['.', '['])?;
            path = path.get(..cut)?;
        }
    }

    pub(super) fn insert(&mut self, path: String, at: &Location) {
        if let Some(at) = position(at) {
            self.0.entry(path).or_insert(at);
        }
    }
}

/// How bad a [`Problem`] is, and whether it depends on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The file itself is wrong: refused on every host.
    Error,
    /// Wrong on the host it was checked against (a VIP that is already one
    /// of the host's own addresses): refused there.
    HostError,
    /// Not ready on the host it was checked against (an interface that does
    /// not exist, no address to send adverts from yet): refused there today
    /// (exit 78); may become something to wait for.
    HostNotReady,
    /// Worth knowing, never refused (a known key in the wrong place).
    Warning,
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document, e.g.
    /// `spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].authPass`.
    pub path: String,
    /// Line and column in the file, when known.
    pub position: Option<(u64, u64)>,
    /// What is wrong; k0s's own wording where k0s has the rule.
    pub message: String,
    /// Error, host-dependent error, or warning.
    pub severity: Severity,
}

impl Problem {
    /// An error (refused on every host).
    pub fn error(
        path: impl Into<String>,
        position: Option<(u64, u64)>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            path: path.into(),
            position,
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// The same problem with another severity.
    #[must_use]
    pub fn with_severity(mut self, severity: Severity) -> Problem {
        self.severity = severity;
        self
    }

    /// Whether `cplb run` refuses to start because of it.
    pub fn is_error(&self) -> bool {
        self.severity != Severity::Warning
    }

    /// Whether it depends on the host checked against.
    pub fn is_host_dependent(&self) -> bool {
        matches!(self.severity, Severity::HostError | Severity::HostNotReady)
    }
}

/// `line:column: path: message`, the shape compilers print (the caller
/// puts the file name in front); `warning: ` before the path of a warning.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.position {
            write!(f, "{line}:{column}: ")?;
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML of the expected shape (the first such problem: the parser
    /// stops there).
    #[error("{0}")]
    Syntax(Problem),
    /// One or more rules broken; all of them are listed.
    #[error("{} problem(s):\n{}", .0.len(), DisplayProblems(.0))]
    Invalid(Vec<Problem>),
}

struct DisplayProblems<'a>(&'a [Problem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

/// One line for a problem repeated along a list: 300 instances past the
/// automatic VRIDs give one message naming the first and the last, not 95.
pub(super) fn collapse(problems: Vec<Problem>) -> Vec<Problem> {
    /// `a.b[3].c[4]` → `a.b[].c[]`.
    fn shape(path: &str) -> String {
        let mut out = String::new();
        let mut in_index = false;
        for c in path.chars() {
            match c {
                '[' => {
                    in_index = true;
                    out.push('[');
                }
                ']' => {
                    in_index = false;
                    out.push(']');
                }
                _ if in_index => {}
                c => out.push(c),
            }
        }
        out
    }
    const AT_LEAST: usize = 3;
    let mut groups: BTreeMap<(String, String, Severity), Vec<usize>> = BTreeMap::new();
    for (i, p) in problems.iter().enumerate() {
        groups
            .entry((shape(&p.path), p.message.clone(), p.severity))
            .or_default()
            .push(i);
    }
    let mut keep = vec![true; problems.len()];
    let mut extra: BTreeMap<usize, String> = BTreeMap::new();
    for members in groups.values().filter(|m| m.len() >= AT_LEAST) {
        let (Some(&first), Some(&last)) = (members.first(), members.last()) else {
            continue;
        };
        for &i in members.iter().skip(1) {
            keep[i] = false;
        }
        let last_path = problems.get(last).map_or("", |p| p.path.as_str());
        let last_path = last_path
            .strip_prefix(&format!("{CPLB_PATH}.keepalived."))
            .unwrap_or(last_path);
        extra.insert(
            first,
            format!(
                " (and {} more like it, up to {last_path})",
                members.len() - 1
            ),
        );
    }
    problems
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.get(*i).copied().unwrap_or(true))
        .map(|(i, mut p)| {
            if let Some(more) = extra.get(&i) {
                p.message.push_str(more);
            }
            p
        })
        .collect()
}

pub(super) fn position(location: &Location) -> Option<(u64, u64)> {
    (location.line() > 0).then(|| (location.line(), location.column()))
}
