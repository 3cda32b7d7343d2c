//! Finding where a TOML path is written, to give errors a line and column.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a TOML path: a key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A TOML path such as `stage[1].timeout_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TomlPath(pub Vec<Seg>);

impl TomlPath {
    pub(crate) fn key(&self, k: &str) -> TomlPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    pub(crate) fn index(&self, i: usize) -> TomlPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl std::fmt::Display for TomlPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The parsed document with spans, for looking up where paths are.
pub(crate) struct Locator<'i> {
    text: &'i str,
    root: Option<Spanned<DeTable<'i>>>,
}

impl<'i> Locator<'i> {
    pub(crate) fn new(text: &'i str) -> Self {
        Locator { text, root: DeTable::parse(text).ok() }
    }

    /// The byte range of the value at `path`, or of its closest existing parent.
    pub(crate) fn span(&self, path: &TomlPath) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        let mut best = None;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        for seg in &path.0 {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => {
                    t.iter().find(|(key, _)| key.get_ref().as_ref() == k.as_str()).map(|(key, v)| {
                        // Point at the key itself: that is where the reader looks.
                        best = Some(key.span());
                        v
                    })
                }
                (Seg::Index(i), _, Some(v)) => match v.get_ref() {
                    DeValue::Array(a) => a.get(*i),
                    // A single `[sink]` or `[stage]` table stands for the first.
                    DeValue::Table(_) if *i == 0 => Some(v),
                    _ => None,
                },
                _ => None,
            };
            let Some(v) = next else { break };
            if matches!(seg, Seg::Index(_)) {
                best = Some(v.span());
            }
            table = match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
            value = Some(v);
        }
        best
    }

    /// 1-based line and column of byte `offset`.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
        (line, col)
    }
}

impl Locator<'_> {
    /// The path of the key that `offset` falls under: at each level, the last
    /// key (or array item) that starts at or before it.
    pub(crate) fn path_at(&self, offset: usize) -> TomlPath {
        fn walk(table: &DeTable<'_>, offset: usize, path: &mut TomlPath) {
            let best =
                table.iter().filter(|(k, _)| k.span().start <= offset).max_by_key(|(k, v)| k.span().start.max(v.span().start.min(offset)));
            if let Some((k, v)) = best {
                path.0.push(Seg::Key(k.get_ref().to_string()));
                descend(v, offset, path);
            }
        }
        fn descend(v: &Spanned<DeValue<'_>>, offset: usize, path: &mut TomlPath) {
            match v.get_ref() {
                DeValue::Table(t) => walk(t, offset, path),
                DeValue::Array(a) => {
                    if let Some((i, item)) = a.iter().enumerate().rev().find(|(_, item)| item.span().start <= offset) {
                        path.0.push(Seg::Index(i));
                        descend(item, offset, path);
                    }
                }
                _ => {}
            }
        }
        // An error at a table header (`[sink]`, `[[sink]]`) belongs to the
        // table it opens, whose key starts after the brackets.
        let offset = offset + self.text.get(offset..).map_or(0, |rest| rest.len() - rest.trim_start_matches('[').len());
        let mut path = TomlPath::default();
        if let Some(root) = &self.root {
            walk(root.get_ref(), offset, &mut path);
        }
        path
    }

    /// Where `key = ...` is written as a line within `span`, if it is.
    /// The search runs from the start of `span` to the next table header.
    pub(crate) fn find_key_line(&self, span: Range<usize>, key: &str) -> Option<usize> {
        let rest = self.text.get(span.end..)?;
        let end = rest.find("\n[").map_or(self.text.len(), |i| span.end + i);
        let region = self.text.get(span.start..end)?;
        let mut at = 0;
        for line in region.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return Some(span.start + at + (line.len() - trimmed.len()));
            }
            at += line.len();
        }
        None
    }
}
