//! A subset of Mixpanel's segmentation expression language for the `where` parameter of
//! `/api/query/engage`:
//!
//! - `properties["name"]` reads a profile property, and alone it tests that the value is truthy;
//! - literals: strings in double quotes, numbers, `true`, `false`;
//! - comparisons `==`, `!=`, `>`, `>=`, `<`, `<=` (numbers compare as numbers, strings as text);
//! - `defined(properties["name"])`, `not`, `and`, `or` and parentheses, with `and` binding
//!   tighter than `or`.
//!
//! Anything else is rejected with the position of the problem.

use std::cmp::Ordering;

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Property(String),
    Literal(Value),
    Defined(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Box<Expr>, CompareOp, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid `where` expression at character {position}: {message}")]
pub struct WhereError {
    pub position: usize,
    pub message: String,
}

/// The deepest nesting of parentheses and `not` accepted, and the most operands in one
/// expression. Both keep parsing, evaluation and dropping the tree within a thread's stack.
const MAX_DEPTH: usize = 64;
const MAX_OPERANDS: usize = 1000;

struct Parser<'a> {
    text: &'a str,
    position: usize,
    depth: usize,
    operands: usize,
}

impl<'a> Parser<'a> {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, WhereError> {
        Err(WhereError {
            position: self.position,
            message: message.into(),
        })
    }

    fn rest(&self) -> &'a str {
        &self.text[self.position..]
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.position = self.text.len() - trimmed.len();
    }

    /// Consumes `token` if the input continues with it. Words only match whole words.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        let rest = self.rest();
        if !rest.starts_with(token) {
            return false;
        }
        let is_word = token.chars().all(|c| c.is_ascii_alphabetic());
        let next = rest[token.len()..].chars().next();
        if is_word && next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            return false;
        }
        self.position += token.len();
        true
    }

    fn expect(&mut self, token: &str) -> Result<(), WhereError> {
        if self.eat(token) {
            Ok(())
        } else {
            self.error(format!("expected `{token}`"))
        }
    }

    fn or(&mut self) -> Result<Expr, WhereError> {
        let mut left = self.and()?;
        while self.eat("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, WhereError> {
        let mut left = self.unary()?;
        while self.eat("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn enter(&mut self) -> Result<(), WhereError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, WhereError> {
        if self.eat("not") {
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        let left = self.operand()?;
        const OPERATORS: [(&str, CompareOp); 6] = [
            ("==", CompareOp::Eq),
            ("!=", CompareOp::Ne),
            (">=", CompareOp::Ge),
            ("<=", CompareOp::Le),
            (">", CompareOp::Gt),
            ("<", CompareOp::Lt),
        ];
        for (token, op) in OPERATORS {
            if self.eat(token) {
                let right = self.operand()?;
                return Ok(Expr::Compare(Box::new(left), op, Box::new(right)));
            }
        }
        Ok(left)
    }

    fn string(&mut self) -> Result<String, WhereError> {
        self.skip_spaces();
        if !self.rest().starts_with('"') {
            return self.error("expected a string in double quotes");
        }
        let mut stream = serde_json::Deserializer::from_str(self.rest()).into_iter::<String>();
        match stream.next() {
            Some(Ok(text)) => {
                self.position += stream.byte_offset();
                Ok(text)
            }
            _ => self.error("unterminated or invalid string"),
        }
    }

    fn property(&mut self) -> Result<String, WhereError> {
        self.expect("properties")?;
        self.expect("[")?;
        let name = self.string()?;
        self.expect("]")?;
        Ok(name)
    }

    fn operand(&mut self) -> Result<Expr, WhereError> {
        self.skip_spaces();
        self.operands += 1;
        if self.operands > MAX_OPERANDS {
            return self.error(format!("more than {MAX_OPERANDS} operands"));
        }
        if self.eat("(") {
            self.enter()?;
            let inner = self.or()?;
            self.expect(")")?;
            self.depth -= 1;
            return Ok(inner);
        }
        if self.eat("defined") {
            self.expect("(")?;
            let name = self.property()?;
            self.expect(")")?;
            return Ok(Expr::Defined(name));
        }
        if self.rest().starts_with("properties") {
            return Ok(Expr::Property(self.property()?));
        }
        if self.rest().starts_with('"') {
            return Ok(Expr::Literal(Value::String(self.string()?)));
        }
        if self.eat("true") {
            return Ok(Expr::Literal(Value::Bool(true)));
        }
        if self.eat("false") {
            return Ok(Expr::Literal(Value::Bool(false)));
        }
        let number: String = self
            .rest()
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
            .collect();
        match number.parse::<f64>() {
            Ok(n) if !number.is_empty() => {
                self.position += number.len();
                Ok(Expr::Literal(Value::from(n)))
            }
            _ => self.error("expected properties[\"name\"], a string, a number, true or false"),
        }
    }
}

/// Parses a `where` expression.
pub fn parse(text: &str) -> Result<Expr, WhereError> {
    let mut parser = Parser {
        text,
        position: 0,
        depth: 0,
        operands: 0,
    };
    let expr = parser.or()?;
    parser.skip_spaces();
    if !parser.rest().is_empty() {
        return parser.error("unexpected text after the expression");
    }
    Ok(expr)
}

fn value_of(expr: &Expr, properties: &Map<String, Value>) -> Value {
    match expr {
        Expr::Property(name) => properties.get(name).cloned().unwrap_or(Value::Null),
        Expr::Literal(value) => value.clone(),
        other => Value::Bool(matches(other, properties)),
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Evaluates an expression against one profile's properties.
pub fn matches(expr: &Expr, properties: &Map<String, Value>) -> bool {
    match expr {
        Expr::Property(_) | Expr::Literal(_) => truthy(&value_of(expr, properties)),
        Expr::Defined(name) => properties.get(name).is_some_and(|v| !v.is_null()),
        Expr::Not(inner) => !matches(inner, properties),
        Expr::And(a, b) => matches(a, properties) && matches(b, properties),
        Expr::Or(a, b) => matches(a, properties) || matches(b, properties),
        Expr::Compare(a, op, b) => {
            let ordering = compare(&value_of(a, properties), &value_of(b, properties));
            match op {
                CompareOp::Eq => ordering == Some(Ordering::Equal),
                CompareOp::Ne => ordering != Some(Ordering::Equal),
                CompareOp::Gt => ordering == Some(Ordering::Greater),
                CompareOp::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
                CompareOp::Lt => ordering == Some(Ordering::Less),
                CompareOp::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(text: &str, profile: Value) -> bool {
        matches(&parse(text).unwrap(), profile.as_object().unwrap())
    }

    #[test]
    fn comparisons_and_logic() {
        let profile = json!({"plan": "pro", "seats": 5, "trial": false, "tags": []});
        let cases = [
            (r#"properties["plan"] == "pro""#, true),
            (r#"properties["plan"] != "pro""#, false),
            (
                r#"properties["seats"] >= 5 and properties["seats"] < 6"#,
                true,
            ),
            (
                r#"properties["seats"] > 5 or properties["plan"] == "pro""#,
                true,
            ),
            (
                r#"not (properties["seats"] > 5 or properties["plan"] == "pro")"#,
                false,
            ),
            (
                r#"defined(properties["trial"]) and not properties["trial"]"#,
                true,
            ),
            (r#"defined(properties["missing"])"#, false),
            (r#"properties["tags"]"#, false),
            (r#"properties["seats"] == 5.0"#, true),
            (r#"properties["plan"] > "basic""#, true),
            (r#"properties["seats"] == "5""#, false),
        ];
        for (text, expected) in cases {
            assert_eq!(check(text, profile.clone()), expected, "{text}");
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let profile = json!({"a": 1});
        assert!(check(
            r#"properties["a"] == 1 or properties["a"] == 2 and properties["a"] == 3"#,
            profile
        ));
    }

    #[test]
    fn deep_or_long_expressions_are_rejected() {
        let deep = format!("{}true{}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
        let nots = format!("{}true", "not ".repeat(5000));
        assert!(parse(&nots).unwrap_err().message.contains("nested deeper"));
        let long = vec!["true"; 5000].join(" and ");
        assert!(parse(&long).unwrap_err().message.contains("operands"));
        let fine = format!("{}true{}", "(".repeat(60), ")".repeat(60));
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn errors_give_the_position() {
        for (text, position) in [
            (r#"properties["plan"] ==="#, 21),
            (r#"properties[plan] == 1"#, 11),
            (r#"properties["plan"] == 1 xor"#, 24),
            (r#"(properties["a"]"#, 16),
        ] {
            let error = parse(text).unwrap_err();
            assert_eq!(error.position, position, "{text}: {error}");
        }
    }
}
