//! The values the engine carries between nodes.
//!
//! In real-time mode a value stays in the representation its producer made (a Python
//! object behind [`NativeValue`], for instance), so the hot path never serialises. It is
//! turned into JSON only when a durable store persists it, and values read back from a
//! store arrive as [`Value::Json`].

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value held in a foreign representation (a Python object, say).
///
/// Implementations must be cheap to share: the engine clones the surrounding
/// [`Value`] (an `Arc` clone) once per consumer.
pub trait NativeValue: Send + Sync + 'static {
    /// The JSON form a durable store persists. The error says why the value has none
    /// (its type, and where in it the problem is).
    fn to_json(&self) -> Result<serde_json::Value, String>;

    /// The elements, when the value is a list: map nodes run once per element.
    fn list_items(&self) -> Option<Vec<Value>>;

    /// A short description for errors and debugging, such as the type name.
    fn type_name(&self) -> String;

    /// Gives bindings their own representation back.
    fn as_any(&self) -> &dyn Any;
}

/// A node output, a run input, a human's answer.
///
/// Cheap to clone: every variant is behind an `Arc`. Build plain data with
/// `Value::from(serde_json::Value)`; read it back with [`Value::to_json`].
///
/// ```
/// use std::sync::Arc;
///
/// use ferroflow::Value;
/// use serde_json::json;
///
/// let labels = Value::from(json!(["refund", "escalate"]));
/// assert_eq!(labels.type_name(), "list");
/// assert_eq!(labels.list_items().map(|items| items.len()), Some(2));
/// assert_eq!(labels.labels(), Some(vec!["refund".to_owned(), "escalate".to_owned()]));
///
/// // The output of a graph with several sinks: a record, whose JSON form is an object.
/// let record = Value::Record(Arc::from([(Arc::from("total"), Value::from(json!(3)))]));
/// assert_eq!(record.to_json().unwrap(), json!({"total": 3}));
/// assert!(Value::null().is_null());
/// ```
#[derive(Clone)]
pub enum Value {
    /// Plain data; what durable stores hold.
    Json(Arc<serde_json::Value>),
    /// The ordered outputs of a map node's items, each kept in its own representation.
    List(Arc<[Value]>),
    /// Named values, in order: the output of a graph with several sinks.
    Record(Arc<[(Arc<str>, Value)]>),
    /// A value in its producer's representation.
    Native(Arc<dyn NativeValue>),
}

impl Value {
    /// JSON `null`: what a skipped dependency delivers.
    pub fn null() -> Self {
        Value::Json(Arc::new(serde_json::Value::Null))
    }

    /// Wraps a foreign value.
    pub fn native(value: impl NativeValue) -> Self {
        Value::Native(Arc::new(value))
    }

    /// True for JSON `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Json(v) if v.is_null())
    }

    /// The JSON form of the value: lists become arrays, records objects.
    ///
    /// # Errors
    ///
    /// Why a native value (or one inside a list or record) has no JSON form, as
    /// [`NativeValue::to_json`] says.
    pub fn to_json(&self) -> Result<serde_json::Value, String> {
        match self {
            Value::Json(v) => Ok(v.as_ref().clone()),
            Value::List(items) => {
                items.iter().map(Value::to_json).collect::<Result<Vec<_>, _>>().map(serde_json::Value::Array)
            }
            Value::Record(fields) => fields
                .iter()
                .map(|(k, v)| Ok((k.to_string(), v.to_json()?)))
                .collect::<Result<serde_json::Map<_, _>, String>>()
                .map(serde_json::Value::Object),
            Value::Native(v) => v.to_json(),
        }
    }

    /// The elements of a list value, or `None` if the value is not a list.
    pub fn list_items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Json(v) => v.as_array().map(|items| items.iter().cloned().map(Value::from).collect()),
            Value::List(items) => Some(items.to_vec()),
            Value::Record(_) => None,
            Value::Native(v) => v.list_items(),
        }
    }

    /// The labels a branch returned: one string or a list of strings. `None` for any other
    /// value (a list with a non-string element included).
    pub fn labels(&self) -> Option<Vec<String>> {
        let json = match self {
            Value::Json(v) => return labels_of(v),
            other => other.to_json().ok()?,
        };
        labels_of(&json)
    }

    /// A short description of the value's type, for error messages. JSON values are named
    /// as Python names their decoded form, so that a message reads the same whether the
    /// value came from memory or from a durable store.
    pub fn type_name(&self) -> String {
        match self {
            Value::Json(v) => match v.as_ref() {
                serde_json::Value::Null => "None",
                serde_json::Value::Bool(_) => "bool",
                serde_json::Value::Number(n) if n.is_f64() => "float",
                serde_json::Value::Number(_) => "int",
                serde_json::Value::String(_) => "str",
                serde_json::Value::Array(_) => "list",
                serde_json::Value::Object(_) => "dict",
            }
            .to_owned(),
            Value::List(_) => "list".to_owned(),
            Value::Record(_) => "record".to_owned(),
            Value::Native(v) => v.type_name(),
        }
    }
}

fn labels_of(json: &serde_json::Value) -> Option<Vec<String>> {
    match json {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(items) => items.iter().map(|item| item.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

impl From<serde_json::Value> for Value {
    fn from(value: serde_json::Value) -> Self {
        Value::Json(Arc::new(value))
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Json(v) => write!(f, "{v}"),
            Value::List(items) => f.debug_list().entries(items.iter()).finish(),
            Value::Record(fields) => f.debug_map().entries(fields.iter().map(|(k, v)| (k, v))).finish(),
            Value::Native(v) => write!(f, "<{}>", v.type_name()),
        }
    }
}

/// Persisting a value serialises its JSON form; a value without one fails to serialise
/// with the reason [`NativeValue::to_json`] gave.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Json(v) => v.serialize(serializer),
            other => other.to_json().map_err(serde::ser::Error::custom)?.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Value::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_accept_a_string_or_a_list_of_strings() {
        assert_eq!(Value::from(json!("a")).labels(), Some(vec!["a".into()]));
        assert_eq!(Value::from(json!(["a", "b"])).labels(), Some(vec!["a".into(), "b".into()]));
        assert_eq!(Value::from(json!(3)).labels(), None);
        assert_eq!(Value::from(json!(["a", 1])).labels(), None);
    }

    #[test]
    fn list_values_serialise_as_json_arrays() {
        let list = Value::List(vec![Value::from(json!(1)), Value::from(json!("x"))].into());
        assert_eq!(serde_json::to_value(&list).unwrap(), json!([1, "x"]));
    }
}
