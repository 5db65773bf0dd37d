//! `ferroflow._native.Workflow`: a validated graph with its Python bodies, built once per
//! `ferroflow.Graph` from the JSON spec the core reads (`GraphSpec::from_json`).

use std::collections::HashMap;
use std::sync::Arc;

use ferroflow::{Body, GraphSpec, Workflow};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::asyncio::AsyncPyBody;
use crate::body::{BodySpec, PyBody, SyncPyBody};
use crate::error::to_py_err;

/// A validated graph with its Python bodies.
#[pyclass(module = "ferroflow._native", name = "Workflow")]
pub struct PyWorkflow {
    workflow: Option<Workflow>,
    /// The same bodies the workflow holds, kept to report their objects to the GC.
    bodies: Vec<Arc<PyBody>>,
}

impl PyWorkflow {
    pub(crate) fn get(&self) -> PyResult<&Workflow> {
        self.workflow
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("this workflow was cleared by the garbage collector"))
    }
}

#[pymethods]
impl PyWorkflow {
    #[new]
    fn new(py: Python<'_>, spec_json: &str, bodies: Vec<(String, BodySpec)>) -> PyResult<Self> {
        let spec = GraphSpec::from_json(spec_json).map_err(|e| to_py_err(e.into()))?;
        let graph = spec.build().map_err(|e| to_py_err(e.into()))?;
        let mut kept = Vec::with_capacity(bodies.len());
        let mut compiled = HashMap::with_capacity(bodies.len());
        for (name, spec) in bodies {
            let body = PyBody::new(&spec, py)?;
            kept.push(Arc::clone(&body));
            let body = if spec.is_async {
                Body::Async(Arc::new(AsyncPyBody(body)))
            } else {
                Body::Blocking(Arc::new(SyncPyBody(body)))
            };
            compiled.insert(name, body);
        }
        let workflow = Workflow::new(graph, compiled).map_err(|e| to_py_err(e.into()))?;
        Ok(PyWorkflow { workflow: Some(workflow), bodies: kept })
    }

    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.get()?.graph().name().to_owned())
    }

    #[getter]
    fn version(&self) -> PyResult<String> {
        Ok(self.get()?.graph().version().to_owned())
    }

    fn to_mermaid(&self) -> PyResult<String> {
        Ok(self.get()?.graph().to_mermaid())
    }

    fn spec_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.get()?.graph().spec()).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Reports the bodies' objects only while this object is their sole owner. A live run
    /// shares them (and may still call them): they are then reachable from outside the GC's
    /// view, and must not be offered for collection.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if self.workflow.as_ref().is_some_and(|w| w.holders() == 1) {
            for body in &self.bodies {
                body.traverse(&visit)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.bodies.clear();
        self.workflow = None;
    }
}
