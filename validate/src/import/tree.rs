//! Envoy YAML or JSON read into a tree whose every node and key keeps its `line:column`, with
//! the config crate's own parser (serde-saphyr and its spans, within the loader's limits), and
//! [`Obj`]: a mapping read field by field that reports each field nobody read.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use tern_config::{Limits, Pos};

/// One YAML node and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it is.
    pub kind: Kind,
}

/// The kinds of YAML nodes (JSON is read as the YAML it is).
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i128),
    /// A number with a fraction.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    Seq(Vec<Node>),
    /// A mapping, in file order; each key with its own position.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key.
    pub name: String,
    /// Where it was written.
    pub pos: Pos,
}

fn pos_of(l: serde_saphyr::Location) -> Pos {
    Pos {
        line: l.line() as u32,
        column: l.column() as u32,
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<Kind>::deserialize(d)?;
        Ok(Node {
            pos: pos_of(s.referenced),
            kind: s.value,
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        Ok(i128::try_from(v).map_or(Kind::Float(v as f64), Kind::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
        let mut v = Vec::new();
        while let Some(n) = a.next_element::<Node>()? {
            v.push(n);
        }
        Ok(Kind::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
        let mut v = Vec::new();
        while let Some(k) = a.next_key::<serde_saphyr::Spanned<KeyText>>()? {
            let node = a.next_value::<Node>()?;
            v.push((
                Key {
                    name: k.value.0,
                    pos: pos_of(k.referenced),
                },
                node,
            ));
        }
        Ok(Kind::Map(v))
    }
}

/// A mapping key as text: Envoy keys are names, but a number or `true` as a key is read too.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let k = Kind::deserialize(d)?;
        Ok(KeyText(match k {
            Kind::Str(s) => s,
            Kind::Int(i) => i.to_string(),
            Kind::Float(f) => f.to_string(),
            Kind::Bool(b) => b.to_string(),
            Kind::Null => "null".into(),
            Kind::Seq(_) | Kind::Map(_) => {
                return Err(de::Error::custom("a mapping key must be a scalar"))
            }
        }))
    }
}

/// Parses one Envoy file (YAML, or JSON, which is YAML) within the loader's node budget.
pub fn parse(text: &str, limits: &Limits) -> Result<Node, (Pos, String)> {
    serde_saphyr::from_str_with_options::<Node>(text, tern_config::check::yaml_options(limits))
        .map_err(|e| {
            let pos = e.location().map(pos_of).unwrap_or_default();
            let full = e.without_snippet().to_string();
            let msg = match full.rfind(" at line ") {
                Some(i) => full[..i].to_string(),
                None => full,
            };
            (pos, msg.strip_prefix("error: ").unwrap_or(&msg).to_string())
        })
}

impl Node {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An enum value, upper-cased: Envoy's loader takes `strict_dns` for `STRICT_DNS`.
    pub fn as_enum(&self) -> Option<String> {
        self.as_str().map(str::to_ascii_uppercase)
    }

    /// A whole number; proto3 JSON writes 64-bit numbers as strings, so `"8080"` counts.
    pub fn as_int(&self) -> Option<i128> {
        match &self.kind {
            Kind::Int(i) => Some(*i),
            Kind::Str(s) => s.trim().parse().ok(),
            Kind::Float(f) if f.fract() == 0.0 && f.is_finite() => Some(*f as i128),
            _ => None,
        }
    }

    /// A number.
    pub fn as_f64(&self) -> Option<f64> {
        match &self.kind {
            Kind::Int(i) => Some(*i as f64),
            Kind::Float(f) => Some(*f),
            Kind::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A boolean (`"true"` too, as proto3 JSON allows).
    pub fn as_bool(&self) -> Option<bool> {
        match &self.kind {
            Kind::Bool(b) => Some(*b),
            Kind::Str(s) if s == "true" => Some(true),
            Kind::Str(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    /// The items of a list; a single value where a list belongs is a list of one (Envoy's
    /// loader takes that too), null is empty.
    pub fn items(&self) -> &[Node] {
        match &self.kind {
            Kind::Seq(v) => v,
            Kind::Null => &[],
            _ => std::slice::from_ref(self),
        }
    }

    /// The value at `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// True for an empty mapping, list or null.
    pub fn is_empty(&self) -> bool {
        match &self.kind {
            Kind::Null => true,
            Kind::Map(m) => m.is_empty(),
            Kind::Seq(s) => s.is_empty(),
            _ => false,
        }
    }
}

/// True when `a` and `b` hold the same values, wherever they were written.
pub fn same(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (Kind::Seq(x), Kind::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Kind::Map(x), Kind::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k, v), (l, w))| k.name == l.name && same(v, w))
        }
        (x, y) => x == y,
    }
}

/// Where a diagnostic points: the file and a position in it.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    /// The Envoy file.
    pub file: &'a Path,
    /// The position.
    pub pos: Pos,
}

/// A mapping read field by field: [`Obj::take`] marks a field as mapped, and [`Obj::rest`] gives
/// every field that was not, so that the caller reports each one instead of dropping it.
pub struct Obj<'a> {
    entries: &'a [(Key, Node)],
    used: Vec<bool>,
    /// Where the mapping is.
    pub pos: Pos,
}

impl<'a> Obj<'a> {
    /// The mapping `n` (an empty one for null; `None` for a scalar or a list).
    pub fn new(n: &'a Node) -> Option<Obj<'a>> {
        let entries: &[(Key, Node)] = match &n.kind {
            Kind::Map(m) => m,
            Kind::Null => &[],
            _ => return None,
        };
        Some(Obj {
            entries,
            used: vec![false; entries.len()],
            pos: n.pos,
        })
    }

    /// The value of `key`, now counted as mapped.
    pub fn take(&mut self, key: &str) -> Option<&'a Node> {
        let i = self.entries.iter().position(|(k, _)| k.name == key)?;
        self.used[i] = true;
        Some(&self.entries[i].1)
    }

    /// The key and value of `key`, now counted as mapped.
    pub fn take_kv(&mut self, key: &str) -> Option<(&'a Key, &'a Node)> {
        let i = self.entries.iter().position(|(k, _)| k.name == key)?;
        self.used[i] = true;
        Some((&self.entries[i].0, &self.entries[i].1))
    }

    /// The value of `key`, not marked (to decide before taking).
    pub fn peek(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// The fields nobody took, in file order.
    pub fn rest(&self) -> impl Iterator<Item = (&'a Key, &'a Node)> + '_ {
        self.entries
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !**u)
            .map(|((k, v), _)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_keep_their_positions() {
        let n = parse("a:\n  b: 8080\n  c: [x, {d: 1.5}]\n", &Limits::default()).unwrap();
        let Kind::Map(m) = &n.kind else { panic!() };
        assert_eq!(m[0].0.name, "a");
        assert_eq!(m[0].0.pos, Pos { line: 1, column: 1 });
        let b = n.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.as_int(), Some(8080));
        assert_eq!(b.pos, Pos { line: 2, column: 6 });
        let Kind::Map(inner) = &n.get("a").unwrap().kind else {
            panic!()
        };
        assert_eq!(inner[1].0.pos, Pos { line: 3, column: 3 });
        let d = n.get("a").unwrap().get("c").unwrap().items()[1]
            .get("d")
            .unwrap();
        assert_eq!(d.as_f64(), Some(1.5));
    }

    #[test]
    fn json_is_read_with_positions() {
        let n = parse(
            "{\n  \"port_value\": \"443\",\n  \"on\": true\n}\n",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(n.get("port_value").unwrap().as_int(), Some(443));
        assert_eq!(n.get("on").unwrap().as_bool(), Some(true));
        assert_eq!(n.get("port_value").unwrap().pos.line, 2);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for text in [
            "a: [",
            "{",
            "a: *x",
            "- &a [*a]",
            "a:\n\tb: 1",
            "\"\\u{D800}\"",
        ] {
            let _ = parse(text, &Limits::default());
        }
        let limits = Limits {
            max_yaml_nodes: 10,
            ..Default::default()
        };
        let many = (0..100).map(|i| format!("k{i}: {i}\n")).collect::<String>();
        assert!(parse(&many, &limits).is_err());
    }

    #[test]
    fn obj_reports_what_was_not_taken() {
        let n = parse("a: 1\nb: 2\nc: 3\n", &Limits::default()).unwrap();
        let mut o = Obj::new(&n).unwrap();
        assert!(o.take("b").is_some());
        let rest: Vec<_> = o.rest().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(rest, ["a", "c"]);
    }
}
