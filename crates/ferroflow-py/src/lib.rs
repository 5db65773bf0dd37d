//! `ferroflow._native`: the PyO3 bindings of the ferroflow engine. Private; the public
//! API is the `ferroflow` Python package.

mod asyncio;
mod body;
mod engine;
mod error;
mod runtime;
mod value;

use pyo3::prelude::*;

/// Checks that `obj` is plain JSON data (what a durable context can store); raises
/// `TypeError` saying what and where otherwise.
#[pyfunction]
fn check_json(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    value::py_to_json(obj, "$").map(drop).map_err(pyo3::exceptions::PyTypeError::new_err)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<engine::PyWorkflow>()?;
    m.add_class::<asyncio::PyEventLoop>()?;
    m.add_function(wrap_pyfunction!(check_json, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::shutdown, m)?)?;
    Ok(())
}
