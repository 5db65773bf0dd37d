//! Python objects as engine values, and back.
//!
//! In memory a node's output stays the Python object it returned ([`PyValue`]); it is
//! converted to JSON only when a store needs it, or by strict mode's check.

use std::any::Any;

use ferroflow::{NativeValue, Value, limits};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::runtime;

/// A Python object held by the engine.
pub struct PyValue(pub Py<PyAny>);

impl NativeValue for PyValue {
    fn to_json(&self) -> Result<serde_json::Value, String> {
        runtime::attach(|py| py_to_json(self.0.bind(py), "$"))
            .unwrap_or_else(|| Err("the interpreter is shutting down".to_owned()))
    }

    fn list_items(&self) -> Option<Vec<Value>> {
        runtime::attach(|py| {
            let obj = self.0.bind(py);
            if let Ok(list) = obj.cast::<PyList>() {
                Some(list.iter().map(|o| wrap(o.unbind())).collect())
            } else if let Ok(tuple) = obj.cast::<PyTuple>() {
                Some(tuple.iter().map(|o| wrap(o.unbind())).collect())
            } else {
                None
            }
        })
        .flatten()
    }

    fn type_name(&self) -> String {
        runtime::attach(|py| type_name(self.0.bind(py))).unwrap_or_else(|| "object".to_owned())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Wraps a Python object as a value; `None` becomes JSON null.
pub fn wrap(obj: Py<PyAny>) -> Value {
    Value::native(PyValue(obj))
}

/// The object's type name, qualified by module unless it is a builtin.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let ty = obj.get_type();
    let name = ty.qualname().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    match ty.module().map(|m| m.to_string()) {
        Ok(module) if module != "builtins" => format!("{module}.{name}"),
        _ => name,
    }
}

/// The Python object for a value: the original object for a Python value, fresh
/// objects for JSON.
pub fn to_py(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    match value {
        Value::Native(native) => match native.as_any().downcast_ref::<PyValue>() {
            Some(v) => Ok(v.0.clone_ref(py)),
            None => json_to_py(py, &native.to_json().map_err(PyTypeError::new_err)?),
        },
        Value::Json(json) => json_to_py(py, json),
        Value::List(items) => {
            let objs = items.iter().map(|v| to_py(py, v)).collect::<PyResult<Vec<_>>>()?;
            Ok(PyList::new(py, objs)?.into_any().unbind())
        }
        Value::Record(fields) => {
            let dict = PyDict::new(py);
            for (k, v) in fields.iter() {
                dict.set_item(k.as_ref(), to_py(py, v)?)?;
            }
            Ok(dict.into_any().unbind())
        }
    }
}

pub fn json_to_py(py: Python<'_>, json: &serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(match json {
        serde_json::Value::Null => py.None(),
        serde_json::Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any().unbind()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any().unbind()
            }
        }
        serde_json::Value::String(s) => PyString::new(py, s).into_any().unbind(),
        serde_json::Value::Array(items) => {
            let objs = items.iter().map(|v| json_to_py(py, v)).collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, objs)?.into_any().unbind()
        }
        serde_json::Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, json_to_py(py, v)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

/// Converts plain Python data to JSON; the error names the offending type and where it
/// sits, after `root` (`$.items[2].price`). A value nested more than
/// [`ferroflow::limits::MAX_DEPTH`] lists and dicts deep is refused too: the recursion is
/// bounded by that limit, whatever the object is.
pub fn py_to_json(obj: &Bound<'_, PyAny>, root: &str) -> Result<serde_json::Value, String> {
    convert(obj, 0).map_err(|failure| failure.describe(root))
}

/// Why a value has no JSON form, and where: the path is collected as the error unwinds, so
/// that converting costs nothing for it.
struct Failure {
    /// From the offending value up to the root.
    path: Vec<PathStep>,
    reason: String,
}

enum PathStep {
    Index(usize),
    Key(String),
}

impl Failure {
    fn new(reason: String) -> Failure {
        Failure { path: Vec::new(), reason }
    }

    fn at(mut self, step: PathStep) -> Failure {
        self.path.push(step);
        self
    }

    fn describe(self, root: &str) -> String {
        use std::fmt::Write as _;
        let mut at = root.to_owned();
        for step in self.path.iter().rev() {
            match step {
                PathStep::Index(i) => {
                    let _ = write!(at, "[{i}]");
                }
                PathStep::Key(key) => {
                    let _ = write!(at, ".{}", limits::shorten(key, 40));
                }
            }
        }
        format!("{}: {}", limits::shorten(&at, 200), self.reason)
    }
}

fn convert(obj: &Bound<'_, PyAny>, depth: usize) -> Result<serde_json::Value, Failure> {
    if obj.is_none() {
        return Ok(serde_json::Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(serde_json::Value::Bool(b.is_true()));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(i.into());
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(u.into());
        }
        let digits = obj.str().map(|s| s.to_string()).unwrap_or_default();
        return Err(Failure::new(format!(
            "integer {} does not fit in 64 bits (JSON data here is exact: give large numbers as strings)",
            limits::shorten(&digits, 40)
        )));
    }
    if obj.is_exact_instance_of::<PyFloat>() {
        let f: f64 = obj.extract().map_err(|e: PyErr| Failure::new(e.to_string()))?;
        return serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| Failure::new(format!("{f} is not a finite number, and JSON has no other kind")));
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return Ok(serde_json::Value::String(s.to_cow().map_err(|e| Failure::new(e.to_string()))?.into_owned()));
    }
    let container = obj.is_exact_instance_of::<PyList>() || obj.is_exact_instance_of::<PyDict>();
    if container && depth >= limits::MAX_DEPTH {
        return Err(Failure::new(format!(
            "nested more than {} lists and dicts deep, which no store can read back",
            limits::MAX_DEPTH
        )));
    }
    if let Ok(list) = obj.cast_exact::<PyList>() {
        let mut items = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            items.push(convert(&item, depth + 1).map_err(|f| f.at(PathStep::Index(i)))?);
        }
        return Ok(serde_json::Value::Array(items));
    }
    if let Ok(dict) = obj.cast_exact::<PyDict>() {
        let mut map = serde_json::Map::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            let Ok(key) = k.cast_exact::<PyString>() else {
                let key = k.repr().map(|r| r.to_string()).unwrap_or_default();
                let kind = type_name(&k);
                return Err(Failure::new(format!(
                    "key {} is {} {kind}, and JSON keys are strings",
                    limits::shorten(&key, 40),
                    article(&kind)
                )));
            };
            let key = key.to_cow().map_err(|e| Failure::new(e.to_string()))?;
            let value = convert(&v, depth + 1).map_err(|f| f.at(PathStep::Key(key.to_string())))?;
            map.insert(key.into_owned(), value);
        }
        return Ok(serde_json::Value::Object(map));
    }
    let kind = type_name(obj);
    Err(Failure::new(format!(
        "{} {kind} is not JSON data (use dict, list, str, int, float, bool or None)",
        article(&kind)
    )))
}

/// The indefinite article for `noun`, by its first letter: "an int", "a float".
pub fn article(noun: &str) -> &'static str {
    match noun.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}
