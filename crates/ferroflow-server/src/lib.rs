//! The ferroflow gRPC service: start, inspect, watch, resume and cancel workflow runs, and
//! list runs and graphs, over gRPC (`proto/ferroflow/v1/ferroflow.proto`).
//!
//! Two ways to host it:
//! - The `ferroflow-server` binary: [`context::open`], then [`FerroflowService::new`] over an
//!   engine that does not execute, with no workflows. No Python, no node code: the runs it
//!   starts are queued in the durable context for workers (`ferroflow worker`, or a Rust
//!   program calling `Engine::work`), and it follows them from the store. It knows graphs
//!   by what workers registered ([`ferroflow::GraphRecord`]).
//! - Embedded in a process that also executes the graphs: [`FerroflowService::new`] over an
//!   engine that executes, with the workflows it serves. `ferroflow serve` in Python does
//!   this, in real-time (in-memory) or durable mode; so can a Rust program.
//!
//! [`Server::start`] serves it with the standard health service (`grpc.health.v1`) and
//! server reflection (v1 and v1alpha), so generic clients (grpcurl, grpcio) need no stubs
//! of ours. Optional TLS and bearer token: see [`ServerConfig`].

#![warn(missing_docs)]

pub mod codec;
pub mod context;
mod convert;
mod server;
mod service;
pub mod status;

pub use server::{Server, ServerConfig, ServerError, Tls};
pub use service::FerroflowService;

/// The generated protobuf messages, the service trait and the client.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("ferroflow.v1");

    /// The encoded descriptors of `ferroflow.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferroflow_descriptor");
}
