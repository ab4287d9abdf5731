//! Value types of the configuration: source-located values, durations, regexes.
//!
//! Parsing happens here, at load time, so that a bad value is reported at its own `line:column`
//! and the request path only ever sees typed values.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position in a YAML file (1-based line and column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// A value with the position of the YAML node it came from.
///
/// Serializes (and appears in the JSON schema) as the bare value.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub pos: Pos,
}

impl<T> Spanned<T> {
    /// A value that was not read from a file (defaults, tests).
    pub fn unplaced(value: T) -> Self {
        Self {
            value,
            pos: Pos::default(),
        }
    }
}

impl<T> Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    // Positions do not take part in equality: moving a definition within a file changes nothing.
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Spanned<T> {}

// By value like equality, so a `Spanned` can key a map (header names) and keep its position.
impl<T: PartialOrd> PartialOrd for Spanned<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.value.partial_cmp(&other.value)
    }
}

impl<T: Ord> Ord for Spanned<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}

/// Where a piece of a file parsed on its own sits in the file (see `check::recover`): its first
/// line is `first` (columns on it moved right by `first.column`), every later line moves down by
/// `lines`. Parsing the piece alone, instead of padded with blank lines up to its place, keeps
/// recovering n items of a file linear in its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shift {
    /// Line (and extra columns) of the piece's first line.
    pub first: Pos,
    /// Lines added to the piece's other lines.
    pub lines: u32,
}

impl Shift {
    /// The position in the file of `p`, a position in the piece (identity for the default).
    pub fn apply(self, p: Pos) -> Pos {
        if self == Shift::default() {
            p
        } else if p.line <= 1 {
            Pos {
                line: self.first.line,
                column: p.column + self.first.column,
            }
        } else {
            Pos {
                line: p.line + self.lines,
                column: p.column,
            }
        }
    }

    /// Runs `f` (a parse of the piece) with positions of [`Spanned`] values shifted.
    pub fn during<R>(self, f: impl FnOnce() -> R) -> R {
        let before = SHIFT.replace(self);
        let r = f();
        SHIFT.set(before);
        r
    }
}

thread_local! {
    // A parse runs on one thread and `Deserialize` takes no context: the shift of the piece
    // being parsed is set around the parse.
    static SHIFT: Cell<Shift> = const { Cell::new(Shift { first: Pos { line: 0, column: 0 }, lines: 0 }) };
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        let pos = Pos {
            line: s.referenced.line() as u32,
            column: s.referenced.column() as u32,
        };
        Ok(Spanned {
            value: s.value,
            pos: SHIFT.get().apply(pos),
        })
    }
}

impl<T: Serialize> Serialize for Spanned<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A duration written as `250ms`, `3s`, `1m`, `1h30m` (or `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Parses the configuration's duration syntax.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        humantime::parse_duration(t)
            .map(Dur)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. 250ms, 3s, 1m"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration such as 250ms, 3s, 1m or 0",
            "pattern": "^\\s*(0|([0-9]+\\s*[a-zµ]+\\s*)+)\\s*$"
        })
    }
}

/// A regular expression, compiled when the configuration is loaded.
///
/// Matching is anchored at both ends (the whole path or value must match), as in Envoy.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// Compiles `source` as a fully anchored regex.
    pub fn new(source: &str) -> Result<Pattern, String> {
        let anchored = format!("^(?:{source})$");
        regex::Regex::new(&anchored)
            .map(|regex| Pattern {
                source: source.to_string(),
                regex,
            })
            .map_err(|e| {
                let detail = e.to_string();
                let last = detail.lines().last().unwrap_or("").trim().to_string();
                format!("regex {source:?} does not compile: {last}")
            })
    }

    /// True when the whole of `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }

    /// The regex as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl JsonSchema for Pattern {
    fn schema_name() -> Cow<'static, str> {
        "Regex".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "regex",
            "description": "A regular expression (Rust regex syntax) that must match the whole value"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("1m").unwrap().0, Duration::from_secs(60));
        assert_eq!(Dur::parse("0").unwrap().0, Duration::ZERO);
        assert!(Dur::parse("5").unwrap_err().contains("invalid duration"));
        assert!(Dur::parse("soon").is_err());
        assert_eq!(Dur::parse("3s").unwrap().to_string(), "3s");
    }

    #[test]
    fn patterns_are_anchored() {
        let p = Pattern::new("/api/v[0-9]+").unwrap();
        assert!(p.is_match("/api/v2"));
        assert!(!p.is_match("/api/v2/users"));
        assert!(Pattern::new("(").unwrap_err().contains("does not compile"));
    }
}
