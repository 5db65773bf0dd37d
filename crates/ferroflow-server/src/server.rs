//! Serving [`FerroflowService`]: listener, TLS, bearer token, health and reflection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Status};
use tonic_health::server::HealthReporter;

use crate::proto;
use crate::proto::ferroflow_server::FerroflowServer;
use crate::service::FerroflowService;

/// Room for the rest of a request beside its JSON input, in bytes: requests up to the
/// input limit plus this are decoded, so that an input over the limit gets the service's
/// own INVALID_ARGUMENT (which says what and by how much) rather than the transport's
/// RESOURCE_EXHAUSTED.
const REQUEST_OVERHEAD: usize = 64 * 1024;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free one ([`Server::local_addr`] says which).
    pub listen: SocketAddr,
    /// With a token, every call of the ferroflow and reflection services must carry the
    /// metadata `authorization: Bearer <token>`; calls without it get UNAUTHENTICATED.
    /// The health service stays open, for load balancers and orchestrators.
    pub token: Option<String>,
    /// Serve TLS with this certificate and key, instead of plain HTTP/2.
    pub tls: Option<Tls>,
    /// Listen on an address other than loopback without a token. Off by default: then
    /// [`Server::start`] refuses such an address ([`ServerError::Exposed`]), since anyone who
    /// can reach it could start, resume and cancel runs.
    pub allow_unauthenticated: bool,
}

impl ServerConfig {
    /// Serving on `listen`, plaintext, without a token.
    pub fn new(listen: SocketAddr) -> Self {
        ServerConfig { listen, token: None, tls: None, allow_unauthenticated: false }
    }

    /// Whether [`Server::start`] would serve this configuration, checked before anything is
    /// opened: an address other than loopback needs a token unless unauthenticated calls
    /// are allowed explicitly, and a token must not be empty.
    ///
    /// # Errors
    ///
    /// [`ServerError::Exposed`] or [`ServerError::EmptyToken`].
    pub fn check(&self) -> Result<(), ServerError> {
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ServerError::EmptyToken);
        }
        if !self.listen.ip().is_loopback() && self.token.is_none() && !self.allow_unauthenticated {
            return Err(ServerError::Exposed { addr: self.listen });
        }
        Ok(())
    }
}

/// A PEM certificate chain and its private key.
#[derive(Clone)]
pub struct Tls {
    /// The certificate chain, PEM-encoded.
    pub cert_pem: Vec<u8>,
    /// The certificate's private key, PEM-encoded.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert_pem", &format!("{} bytes", self.cert_pem.len())).finish_non_exhaustive()
    }
}

/// Why the server could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The address is not loopback and there is no token ([`ServerConfig::allow_unauthenticated`]).
    #[error(
        "listening on {addr} would let anyone who can reach it start, resume and cancel runs: give a bearer \
         token (and TLS), or allow unauthenticated calls explicitly"
    )]
    Exposed {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The bearer token is empty.
    #[error("the bearer token is empty")]
    EmptyToken,
    /// The address cannot be listened on (taken, or not this machine's).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The TLS certificate or key is not usable PEM.
    #[error("the TLS certificate or key cannot be used: {0}")]
    Tls(String),
    /// The reflection service could not read the descriptors.
    #[error("server reflection cannot be set up: {0}")]
    Reflection(String),
    /// The transport failed while serving.
    #[error("the server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The serving task panicked or was cancelled.
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running server. Stop it with [`Server::stop`]; dropping it leaves it running until
/// the runtime ends.
pub struct Server {
    addr: SocketAddr,
    service: FerroflowService,
    health: HealthReporter,
    stop: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    /// Binds `config.listen` and serves `service` there (with health and reflection) on
    /// the current tokio runtime.
    ///
    /// The one rule for every way of serving (`ferroflow-server`, `ferroflow serve`,
    /// `Context.serve`, a Rust program): an address other than loopback needs a token unless
    /// unauthenticated calls are allowed explicitly, and a token sent in plaintext beyond
    /// loopback is warned about (anyone on the path can read it).
    ///
    /// # Errors
    ///
    /// [`ServerError::Exposed`] and [`ServerError::EmptyToken`] for a configuration the rule
    /// refuses, [`ServerError::Bind`] if the address cannot be listened on, and
    /// [`ServerError::Tls`] if the certificate or key is not usable PEM.
    pub async fn start(service: FerroflowService, config: ServerConfig) -> Result<Server, ServerError> {
        config.check()?;
        if !config.listen.ip().is_loopback() && config.token.is_some() && config.tls.is_none() {
            tracing::warn!(
                listen = %config.listen,
                "serving beyond loopback with a bearer token but without TLS: the token crosses the network in \
                 plaintext; give a certificate and key"
            );
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let incoming =
            TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60)));

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<FerroflowServer<FerroflowService>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(|e| ServerError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| ServerError::Reflection(e.to_string()))?;

        let auth = BearerToken::new(config.token);
        let ferroflow = FerroflowServer::new(service.clone())
            .max_decoding_message_size(service.max_input_bytes().saturating_add(REQUEST_OVERHEAD));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = config.tls {
            let identity = Identity::from_pem(tls.cert_pem, tls.key_pem);
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity))
                .map_err(|e| ServerError::Tls(e.to_string()))?;
        }
        let router = builder
            .add_service(health_service)
            .add_service(InterceptedService::new(reflection_v1, auth.clone()))
            .add_service(InterceptedService::new(reflection_v1alpha, auth.clone()))
            .add_service(InterceptedService::new(ferroflow, auth));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task =
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move { stopped.cancelled().await }));
        Ok(Server { addr, service, health, stop, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops: health turns NOT_SERVING, open watch streams end with UNAVAILABLE (saying
    /// the offset to watch again from), calls in progress finish, and new connections are
    /// refused.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.health.set_not_serving::<FerroflowServer<FerroflowService>>().await;
        self.service.stopping().cancel();
        self.stop.cancel();
        Ok(self.task.await??)
    }

    /// Waits until the server stops by itself (it fails), or for ever.
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        Ok((&mut self.task).await??)
    }
}

/// Checks the bearer token of each call, in constant time.
#[derive(Clone)]
struct BearerToken {
    expected: Option<std::sync::Arc<[u8]>>,
}

impl BearerToken {
    fn new(token: Option<String>) -> Self {
        BearerToken { expected: token.map(|t| format!("Bearer {t}").into_bytes().into()) }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let Some(given) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "this server needs a bearer token: send the metadata 'authorization: Bearer <token>'",
            ));
        };
        if !constant_time_eq(given.as_bytes(), expected) {
            return Err(Status::unauthenticated("the bearer token is not this server's"));
        }
        Ok(request)
    }
}

/// Whether `a == b`, taking the same time wherever they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
        assert!(!constant_time_eq(b"", b"Bearer abc"));
    }
}
