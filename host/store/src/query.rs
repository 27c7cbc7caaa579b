//! Queries as the `convex` package's `convex/server` code sends them (`1.0/queryStream`,
//! `1.0/queryPage`): a source (a table scan or an index range), an order, and operators
//! (filters and limits) applied in sequence. Filters use Convex's expression language.

use kiln_persistence::Order;
use kiln_value::{FieldPath, Value, cmp_optional, from_convex_json_or_undefined};
use serde_json::Value as Json;

use crate::document::Document;
use crate::error::{Result, StoreError};

/// The comparison of an index range expression.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RangeOp {
    /// `eq`.
    Eq,
    /// `gt`.
    Gt,
    /// `gte`.
    Gte,
    /// `lt`.
    Lt,
    /// `lte`.
    Lte,
}

/// One expression of an index range (`q.eq("author", x)`); `value == None` is undefined.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeExpr {
    /// The comparison.
    pub op: RangeOp,
    /// The field compared.
    pub field: FieldPath,
    /// The value compared with.
    pub value: Option<Value>,
}

/// Where a query reads from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Every document of a table, in `_creationTime` order.
    FullTableScan {
        /// The table.
        table: String,
    },
    /// A range of an index.
    IndexRange {
        /// The table.
        table: String,
        /// The index's name within the table.
        index: String,
        /// Equalities on a prefix of the index fields, then at most one bound on each side
        /// of the next field.
        range: Vec<RangeExpr>,
    },
    /// A full-text search (`withSearchIndex`): checked against the index when planned.
    Search {
        /// The table.
        table: String,
        /// The search index's name within the table.
        index: String,
        /// The search filters as the client sent them.
        filters: Json,
    },
}

/// A step applied to each document, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Operator {
    /// Keep documents for which the expression is true.
    Filter(Expr),
    /// Stop after this many documents.
    Limit(usize),
}

/// A parsed query.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// What is read.
    pub source: Source,
    /// In which direction.
    pub order: Order,
    /// Filters and limits.
    pub operators: Vec<Operator>,
}

/// Most operators in one query (as the `convex` package enforces).
pub const MAX_OPERATORS: usize = 256;

fn invalid(m: impl Into<String>) -> StoreError {
    StoreError::InvalidQuery(m.into())
}

impl Query {
    /// A full table scan in ascending creation order.
    pub fn full_table_scan(table: &str) -> Query {
        Query { source: Source::FullTableScan { table: table.to_owned() }, order: Order::Asc, operators: Vec::new() }
    }

    /// The table this query reads.
    pub fn table(&self) -> &str {
        match &self.source {
            Source::FullTableScan { table } | Source::IndexRange { table, .. } | Source::Search { table, .. } => table,
        }
    }

    /// Renames the table this query reads (the runtime qualifies a component's tables).
    pub fn set_table(&mut self, name: String) {
        match &mut self.source {
            Source::FullTableScan { table } | Source::IndexRange { table, .. } | Source::Search { table, .. } => {
                *table = name;
            }
        }
    }

    /// Parses the query JSON.
    pub fn from_json(j: &Json) -> Result<Query> {
        let source = j.get("source").ok_or_else(|| invalid("missing `source`"))?;
        let order = match source.get("order") {
            None | Some(Json::Null) => Order::Asc,
            Some(Json::String(s)) if s == "asc" => Order::Asc,
            Some(Json::String(s)) if s == "desc" => Order::Desc,
            Some(other) => return Err(invalid(format!("order must be \"asc\" or \"desc\", not {other}"))),
        };
        let source = match source.get("type").and_then(Json::as_str) {
            Some("FullTableScan") => Source::FullTableScan {
                table: source
                    .get("tableName")
                    .and_then(Json::as_str)
                    .ok_or_else(|| invalid("missing `tableName`"))?
                    .to_owned(),
            },
            Some("IndexRange") => {
                let full =
                    source.get("indexName").and_then(Json::as_str).ok_or_else(|| invalid("missing `indexName`"))?;
                let (table, index) =
                    full.split_once('.').ok_or_else(|| invalid(format!("index name {full:?} is not `table.index`")))?;
                let range = source
                    .get("range")
                    .and_then(Json::as_array)
                    .map(|r| r.iter().map(parse_range_expr).collect::<Result<Vec<_>>>())
                    .transpose()?
                    .unwrap_or_default();
                Source::IndexRange { table: table.to_owned(), index: index.to_owned(), range }
            }
            Some("Search") => {
                let full =
                    source.get("indexName").and_then(Json::as_str).ok_or_else(|| invalid("missing `indexName`"))?;
                let (table, index) =
                    full.split_once('.').ok_or_else(|| invalid(format!("index name {full:?} is not `table.index`")))?;
                let filters = source.get("filters").cloned().ok_or_else(|| invalid("missing `filters`"))?;
                Source::Search { table: table.to_owned(), index: index.to_owned(), filters }
            }
            other => return Err(invalid(format!("unknown source type {other:?}"))),
        };
        let mut operators = Vec::new();
        for op in j.get("operators").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
            if let Some(f) = op.get("filter") {
                operators.push(Operator::Filter(Expr::from_json(f)?));
            } else if let Some(n) = op.get("limit") {
                let n = n
                    .as_f64()
                    .filter(|n| *n >= 0.0 && n.fract() == 0.0)
                    .ok_or_else(|| invalid("limit must be a non-negative integer"))?;
                operators.push(Operator::Limit(n as usize));
            } else {
                return Err(invalid(format!("unknown operator {op}")));
            }
        }
        if operators.len() > MAX_OPERATORS {
            return Err(invalid(format!("more than {MAX_OPERATORS} operators")));
        }
        Ok(Query { source, order, operators })
    }
}

fn parse_range_expr(j: &Json) -> Result<RangeExpr> {
    let op = match j.get("type").and_then(Json::as_str) {
        Some("Eq") => RangeOp::Eq,
        Some("Gt") => RangeOp::Gt,
        Some("Gte") => RangeOp::Gte,
        Some("Lt") => RangeOp::Lt,
        Some("Lte") => RangeOp::Lte,
        other => return Err(invalid(format!("unknown range expression type {other:?}"))),
    };
    let field =
        FieldPath::parse(j.get("fieldPath").and_then(Json::as_str).ok_or_else(|| invalid("missing `fieldPath`"))?)?;
    let value = from_convex_json_or_undefined(j.get("value").ok_or_else(|| invalid("missing `value`"))?)?;
    Ok(RangeExpr { op, field, value })
}

/// A comparison operator of a filter.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `$eq`.
    Eq,
    /// `$neq`.
    Neq,
    /// `$lt`.
    Lt,
    /// `$lte`.
    Lte,
    /// `$gt`.
    Gt,
    /// `$gte`.
    Gte,
}

/// An arithmetic operator of a filter.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ArithOp {
    /// `$add`.
    Add,
    /// `$sub`.
    Sub,
    /// `$mul`.
    Mul,
    /// `$div`.
    Div,
    /// `$mod`.
    Mod,
}

/// A filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `{"$field": "a.b"}`.
    Field(FieldPath),
    /// `{"$literal": v}`; `None` is undefined.
    Literal(Option<Value>),
    /// A comparison, in the Convex total order (undefined first).
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// Arithmetic on two numbers of the same kind.
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    /// `$neg`.
    Neg(Box<Expr>),
    /// `$not`.
    Not(Box<Expr>),
    /// `$and`.
    And(Vec<Expr>),
    /// `$or`.
    Or(Vec<Expr>),
}

impl Expr {
    /// Parses the expression JSON.
    pub fn from_json(j: &Json) -> Result<Expr> {
        let obj =
            j.as_object().filter(|o| o.len() == 1).ok_or_else(|| invalid(format!("bad filter expression {j}")))?;
        let Some((op, arg)) = obj.iter().next() else { return Err(invalid("empty filter expression")) };
        let pair = |arg: &Json| -> Result<(Box<Expr>, Box<Expr>)> {
            match arg.as_array().map(Vec::as_slice) {
                Some([l, r]) => Ok((Box::new(Expr::from_json(l)?), Box::new(Expr::from_json(r)?))),
                _ => Err(invalid(format!("{op} takes two operands"))),
            }
        };
        let list = |arg: &Json| -> Result<Vec<Expr>> {
            arg.as_array().ok_or_else(|| invalid(format!("{op} takes a list")))?.iter().map(Expr::from_json).collect()
        };
        let cmp = |c| pair(arg).map(|(l, r)| Expr::Cmp(c, l, r));
        let arith = |a| pair(arg).map(|(l, r)| Expr::Arith(a, l, r));
        Ok(match op.as_str() {
            "$field" => Expr::Field(FieldPath::parse(arg.as_str().ok_or_else(|| invalid("$field takes a string"))?)?),
            "$literal" => Expr::Literal(from_convex_json_or_undefined(arg)?),
            "$eq" => cmp(CmpOp::Eq)?,
            "$neq" => cmp(CmpOp::Neq)?,
            "$lt" => cmp(CmpOp::Lt)?,
            "$lte" => cmp(CmpOp::Lte)?,
            "$gt" => cmp(CmpOp::Gt)?,
            "$gte" => cmp(CmpOp::Gte)?,
            "$add" => arith(ArithOp::Add)?,
            "$sub" => arith(ArithOp::Sub)?,
            "$mul" => arith(ArithOp::Mul)?,
            "$div" => arith(ArithOp::Div)?,
            "$mod" => arith(ArithOp::Mod)?,
            "$neg" => Expr::Neg(Box::new(Expr::from_json(arg)?)),
            "$not" => Expr::Not(Box::new(Expr::from_json(arg)?)),
            "$and" => Expr::And(list(arg)?),
            "$or" => Expr::Or(list(arg)?),
            other => return Err(invalid(format!("unknown filter operator {other:?}"))),
        })
    }

    /// Whether `doc` passes this filter; a non-boolean result is an error.
    pub fn matches(&self, doc: &Document) -> Result<bool> {
        match self.eval(doc)? {
            Some(Value::Boolean(b)) => Ok(b),
            other => Err(failed(format!("a filter must produce a boolean, not {}", describe(other.as_ref())))),
        }
    }

    /// Evaluates the expression on `doc`; `None` is undefined.
    pub fn eval(&self, doc: &Document) -> Result<Option<Value>> {
        Ok(match self {
            Expr::Field(path) => doc.field(path).cloned(),
            Expr::Literal(v) => v.clone(),
            Expr::Cmp(op, l, r) => {
                let ord = cmp_optional(l.eval(doc)?.as_ref(), r.eval(doc)?.as_ref());
                Some(Value::Boolean(match op {
                    CmpOp::Eq => ord.is_eq(),
                    CmpOp::Neq => ord.is_ne(),
                    CmpOp::Lt => ord.is_lt(),
                    CmpOp::Lte => ord.is_le(),
                    CmpOp::Gt => ord.is_gt(),
                    CmpOp::Gte => ord.is_ge(),
                }))
            }
            Expr::Arith(op, l, r) => Some(arith(*op, l.eval(doc)?, r.eval(doc)?)?),
            Expr::Neg(x) => Some(match x.eval(doc)? {
                Some(Value::Int64(i)) => Value::Int64(i.checked_neg().ok_or_else(|| failed("int64 overflow in $neg"))?),
                Some(Value::Float64(f)) => Value::Float64(-f),
                other => return Err(failed(format!("$neg needs a number, not {}", describe(other.as_ref())))),
            }),
            Expr::Not(x) => Some(Value::Boolean(!boolean(x.eval(doc)?, "$not")?)),
            Expr::And(xs) => {
                for x in xs {
                    if !boolean(x.eval(doc)?, "$and")? {
                        return Ok(Some(Value::Boolean(false)));
                    }
                }
                Some(Value::Boolean(true))
            }
            Expr::Or(xs) => {
                for x in xs {
                    if boolean(x.eval(doc)?, "$or")? {
                        return Ok(Some(Value::Boolean(true)));
                    }
                }
                Some(Value::Boolean(false))
            }
        })
    }
}

fn failed(m: impl Into<String>) -> StoreError {
    StoreError::FilterFailed(m.into())
}

fn describe(v: Option<&Value>) -> String {
    v.map_or_else(|| "undefined".to_owned(), |v| v.kind().name().to_owned())
}

fn boolean(v: Option<Value>, op: &str) -> Result<bool> {
    match v {
        Some(Value::Boolean(b)) => Ok(b),
        other => Err(failed(format!("{op} needs booleans, not {}", describe(other.as_ref())))),
    }
}

fn arith(op: ArithOp, l: Option<Value>, r: Option<Value>) -> Result<Value> {
    match (l, r) {
        (Some(Value::Int64(a)), Some(Value::Int64(b))) => {
            let v = match op {
                ArithOp::Add => a.checked_add(b),
                ArithOp::Sub => a.checked_sub(b),
                ArithOp::Mul => a.checked_mul(b),
                ArithOp::Div => a.checked_div(b),
                ArithOp::Mod => a.checked_rem(b),
            };
            v.map(Value::Int64).ok_or_else(|| failed("int64 overflow or division by zero"))
        }
        (Some(Value::Float64(a)), Some(Value::Float64(b))) => Ok(Value::Float64(match op {
            ArithOp::Add => a + b,
            ArithOp::Sub => a - b,
            ArithOp::Mul => a * b,
            ArithOp::Div => a / b,
            ArithOp::Mod => a % b,
        })),
        (l, r) => Err(failed(format!(
            "arithmetic needs two int64 or two float64 operands, not {} and {}",
            describe(l.as_ref()),
            describe(r.as_ref())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_value::{DocumentId, InternalId, Object, TableNumber, parse_convex_json};
    use serde_json::json;

    fn doc(json: &str) -> Document {
        let Value::Object(o) = parse_convex_json(json).unwrap() else { panic!() };
        Document::new(DocumentId::new(TableNumber(1), InternalId([0; 16])), 1.0, o)
    }

    #[test]
    fn parses_what_the_client_sends() {
        let q = Query::from_json(&json!({
            "source": {"type": "IndexRange", "indexName": "messages.by_channel",
                       "range": [{"type": "Eq", "fieldPath": "channel", "value": "a"},
                                 {"type": "Gt", "fieldPath": "_creationTime", "value": 5}], "order": "desc"},
            "operators": [{"filter": {"$eq": [{"$field": "author"}, {"$literal": "x"}]}}, {"limit": 2}]
        }))
        .unwrap();
        assert_eq!(q.order, Order::Desc);
        assert_eq!(q.table(), "messages");
        assert_eq!(q.operators.len(), 2);
        for bad in [
            json!({}),
            json!({"source": {"type": "Nope"}}),
            json!({"source": {"type": "FullTableScan", "tableName": "t", "order": "up"}}),
            json!({"source": {"type": "FullTableScan", "tableName": "t"}, "operators": [{"limit": -1}]}),
            json!({"source": {"type": "FullTableScan", "tableName": "t"}, "operators": [{"filter": {"$xor": []}}]}),
        ] {
            assert_eq!(Query::from_json(&bad).unwrap_err().code(), "InvalidQuery", "{bad}");
        }
    }

    #[test]
    fn expressions_follow_convex_semantics() {
        let d = doc(r#"{"n": 3, "i": {"$integer": "AgAAAAAAAAA="}, "s": "x", "o": {"a": true}}"#);
        let e = |j: Json| Expr::from_json(&j).unwrap();
        assert!(e(json!({"$gt": [{"$field": "n"}, {"$literal": 2}]})).matches(&d).unwrap());
        assert!(e(json!({"$lt": [{"$field": "missing"}, {"$literal": null}]})).matches(&d).unwrap());
        assert!(e(json!({"$eq": [{"$field": "missing"}, {"$literal": {"$undefined": null}}]})).matches(&d).unwrap());
        assert!(e(json!({"$field": "o.a"})).matches(&d).unwrap());
        assert!(e(json!({"$and": [{"$not": {"$eq": [{"$field": "s"}, {"$literal": "y"}]}}, {"$or": [{"$literal": false}, {"$literal": true}]}]})).matches(&d).unwrap());
        let sum = e(json!({"$add": [{"$field": "i"}, {"$literal": {"$integer": "AQAAAAAAAAA="}}]})).eval(&d).unwrap();
        assert_eq!(sum, Some(Value::Int64(3)));
        let mixed = e(json!({"$add": [{"$field": "i"}, {"$field": "n"}]}));
        assert_eq!(mixed.eval(&d).unwrap_err().code(), "FilterFailed");
        assert_eq!(e(json!({"$field": "n"})).matches(&d).unwrap_err().code(), "FilterFailed");
        let _ = Object::new();
    }
}
