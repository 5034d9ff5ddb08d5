//! Go-style JSON request decoding: field names match case-insensitively (and snake_case for
//! service definitions), unknown fields are optionally rejected with Go's message, and typed
//! getters produce Go-like `json: cannot unmarshal …` errors.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::duration::parse_go_duration;

/// The shape of one field, so map keys (Meta, Header) are never renamed.
pub(crate) enum Field {
    /// A scalar or list of scalars.
    Leaf,
    /// A free-form object whose keys are data.
    Map,
    /// Anything; kept verbatim.
    Any,
    /// A nested object.
    Struct(&'static [(&'static str, Field)]),
    /// A list of nested objects.
    List(&'static [(&'static str, Field)]),
}

/// A schema: canonical field names and shapes.
pub(crate) type Schema = &'static [(&'static str, Field)];

/// Folds a key for matching: lowercase without underscores.
fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Parses `body` as a JSON object and renames its fields to their canonical names.
///
/// # Errors
/// Go-like decode message (without the `Request decode failed: ` prefix).
pub(crate) fn decode_object(body: &[u8], schema: Schema, strict: bool) -> Result<Map<String, Value>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match normalize(value, schema, strict)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type struct",
            kind(&other)
        )),
    }
}

/// Renames fields recursively according to `schema`.
pub(crate) fn normalize(value: Value, schema: Schema, strict: bool) -> Result<Value, String> {
    let Value::Object(map) = value else {
        return Ok(value);
    };
    let mut out = Map::new();
    for (key, value) in map {
        let folded = fold(&key);
        let Some((name, field)) = schema.iter().find(|(name, _)| fold(name) == folded) else {
            if strict {
                return Err(format!("json: unknown field \"{key}\""));
            }
            continue;
        };
        let value = match (field, value) {
            (Field::Struct(inner), v @ Value::Object(_)) => normalize(v, inner, strict)?,
            (Field::List(inner), Value::Array(items)) => Value::Array(
                items
                    .into_iter()
                    .map(|v| normalize(v, inner, strict))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            (_, v) => v,
        };
        out.insert((*name).to_string(), value);
    }
    Ok(Value::Object(out))
}

/// Go's name for a JSON value kind.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Go's type mismatch error.
fn mismatch(v: &Value, field: &str, ty: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field .{field} of type {ty}",
        kind(v)
    )
}

/// An optional string field.
pub(crate) fn get_str(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(mismatch(v, field, "string")),
    }
}

/// An optional integer field.
pub(crate) fn get_i64(obj: &Map<String, Value>, field: &str) -> Result<Option<i64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| mismatch(v, field, "int")),
        Some(v) => Err(mismatch(v, field, "int")),
    }
}

/// An optional bool field.
pub(crate) fn get_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(mismatch(v, field, "bool")),
    }
}

/// An optional list of strings; `Some(vec![])` for `[]`, `None` when absent or null.
pub(crate) fn get_str_list(obj: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| mismatch(v, field, "string"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(v) => Err(mismatch(v, field, "[]string")),
    }
}

/// An optional string-to-string map.
pub(crate) fn get_str_map(obj: &Map<String, Value>, field: &str) -> Result<BTreeMap<String, String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| mismatch(v, field, "string"))
            })
            .collect(),
        Some(v) => Err(mismatch(v, field, "map[string]string")),
    }
}

/// An optional duration: a Go duration string or integer nanoseconds.
pub(crate) fn get_duration(obj: &Map<String, Value>, field: &str) -> Result<Option<i64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => parse_go_duration(s).map(Some).map_err(|e| e.to_string()),
        Some(v @ Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| mismatch(v, field, "time.Duration")),
        Some(v) => Err(mismatch(v, field, "time.Duration")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INNER: Schema = &[("CheckID", Field::Leaf), ("Header", Field::Map)];
    const OUTER: Schema = &[
        ("Name", Field::Leaf),
        ("Meta", Field::Map),
        ("Check", Field::Struct(INNER)),
    ];

    /// G6: names match case-insensitively and snake_case; map keys are kept; unknown fields fail.
    #[test]
    fn normalizes_names() {
        let body = br#"{"name":"x","META":{"aB":"1"},"check":{"check_id":"c","header":{"X-Y":["z"]}}}"#;
        let obj = decode_object(body, OUTER, true).unwrap_or_default();
        assert_eq!(obj["Name"], "x");
        assert_eq!(obj["Meta"]["aB"], "1");
        assert_eq!(obj["Check"]["CheckID"], "c");
        assert_eq!(obj["Check"]["Header"]["X-Y"][0], "z");
        let err = decode_object(br#"{"Check":{"ID":"c"}}"#, OUTER, true);
        assert_eq!(err, Err("json: unknown field \"ID\"".to_string()));
        assert!(decode_object(br#"{"Other":1}"#, OUTER, false).is_ok());
    }
}
