//! Plain-text tables for the CLI: each column is as wide as its widest cell, so a long value
//! (a `completed` status, a large id) never shifts the columns after it.

/// Formats `headers` and `rows` as left-aligned columns separated by two spaces, one line per
/// row and a newline after each. The last column is not padded.
pub fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
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
