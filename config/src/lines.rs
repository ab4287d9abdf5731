//! Line and column lookups in a source text, indexed once per file: reporting n problems in a
//! file then costs n lookups, not n scans of the text (which is quadratic for files with
//! thousands of problems, or thousands of items on one long line).

use std::cell::RefCell;
use std::collections::HashMap;

/// The lines of one text.
pub struct Lines<'a> {
    text: &'a str,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
    /// Char-to-byte tables of the lines looked up so far, by 0-based line (`None`: ASCII).
    chars: RefCell<HashMap<usize, Option<Vec<usize>>>>,
}

impl<'a> Lines<'a> {
    /// Indexes `text`.
    pub fn new(text: &'a str) -> Lines<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines {
            text,
            starts,
            chars: RefCell::new(HashMap::new()),
        }
    }

    /// The text of 1-based `line`, without its line break; `None` past the end (or for line 0).
    pub fn get(&self, line: u32) -> Option<&'a str> {
        let i = (line as usize).checked_sub(1)?;
        let start = *self.starts.get(i)?;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.text.len(), |&next| next - 1);
        let l = &self.text[start..end];
        Some(l.strip_suffix('\r').unwrap_or(l))
    }

    /// Byte offset within 1-based `line` of 1-based character `column` (the line's length when
    /// the column is past its end, 0 for column 0).
    pub fn byte_of(&self, line: u32, column: u32) -> usize {
        let Some(text) = self.get(line) else {
            return 0;
        };
        let col = (column as usize).saturating_sub(1);
        let mut cache = self.chars.borrow_mut();
        let table = cache.entry(line as usize - 1).or_insert_with(|| {
            (!text.is_ascii()).then(|| text.char_indices().map(|(i, _)| i).collect())
        });
        match table {
            None => col.min(text.len()),
            Some(t) => t.get(col).copied().unwrap_or(text.len()),
        }
    }
}

/// `text` with every lone carriage return (a line break in YAML, as in classic Mac files) made a
/// line feed, so that lines counted by `\n` are the parser's lines. Same length, same offsets.
pub fn normalize_line_breaks(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    let mut bytes = text.into_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
            bytes[i] = b'\n';
        }
    }
    String::from_utf8(bytes).expect("one ASCII byte replaced by another keeps UTF-8 valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_carriage_returns_are_line_breaks() {
        assert_eq!(normalize_line_breaks("a\rb\r\nc\r".into()), "a\nb\r\nc\n");
        assert_eq!(normalize_line_breaks("plain\n".into()), "plain\n");
    }

    #[test]
    fn lines_and_columns() {
        let l = Lines::new("a: 1\r\nbé: x\n\nlast");
        assert_eq!(l.get(1), Some("a: 1"));
        assert_eq!(l.get(2), Some("bé: x"));
        assert_eq!(l.get(3), Some(""));
        assert_eq!(l.get(4), Some("last"));
        assert_eq!((l.get(0), l.get(5)), (None, None));
        assert_eq!(l.byte_of(1, 4), 3);
        // `x` is the 5th character of line 2 and its 6th byte.
        assert_eq!(l.byte_of(2, 5), 5);
        assert_eq!(l.byte_of(2, 99), 6);
        assert_eq!(l.byte_of(9, 1), 0);
    }
}
