//! Plain-text tables for the CLI: each column is as wide as its widest cell, so a long value
//! (a `completed` status, a large id) never shifts the columns after it.

use std::borrow::Cow;

/// Returns `text` with control characters, Unicode line and paragraph separators and text
/// direction controls shown as escapes such as `\n` and `\u{202e}`.
///
/// A value that contains one, such as a distinct id, then cannot break a line of output, move
/// the terminal's cursor or reorder what follows. Other characters are kept as they are.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Formats a count with its noun, adding `s` unless the count is 1: `1 record`, `2 records`.
pub fn counted(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Formats `headers` and `rows` as left-aligned columns separated by two spaces, one line per
/// row and a newline after each. The last column is not padded. Control characters in cells
/// are shown escaped.
pub fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| printable(cell).into_owned())
                .collect()
        })
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain é"), "plain é");
        assert_eq!(printable("a\nb\tc\u{1b}[2J"), "a\\nb\\tc\\u{1b}[2J");
        assert_eq!(printable("x\u{202e}y\u{2028}z"), "x\\u{202e}y\\u{2028}z");
        assert_eq!(printable("שלום ok"), "שלום ok");
        let table = format_table(&["id"], &[vec!["two\nlines".into()]]);
        assert_eq!(table, "id\ntwo\\nlines\n");
    }

    /// Character offset of each column's start in `line`, found from the header's columns.
    fn starts(header: &str) -> Vec<usize> {
        let mut starts = vec![0];
        let chars: Vec<char> = header.chars().collect();
        for i in 1..chars.len() {
            if chars[i] != ' ' && chars[i - 1] == ' ' && i >= 2 && chars[i - 2] == ' ' {
                starts.push(i);
            }
        }
        starts
    }

    #[test]
    fn long_cells_widen_their_column() {
        let rows = vec![
            vec!["1".into(), "completed".into(), "never".into()],
            vec!["12345".into(), "paused".into(), "succeeded +2 -0".into()],
        ];
        let table = format_table(&["ID", "STATUS", "LAST RUN"], &rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = starts(lines[0]);
        assert_eq!(columns, vec![0, 7, 18]);
        for (line, row) in lines[1..].iter().zip(&rows) {
            for (start, cell) in columns.iter().zip(row) {
                assert!(line[*start..].starts_with(cell.as_str()), "{line:?}");
            }
        }
    }

    #[test]
    fn empty_table_has_its_header() {
        assert_eq!(format_table(&["A", "B"], &[]), "A  B\n");
    }
}
