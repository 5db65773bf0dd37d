//! Durable contexts named by URL: the one reader of them, used by the Python package (every
//! `ff.Sqlite`, `ff.Redis` and `ff.Nats`, and the `ferroflow` CLI's `--context`), by
//! `ferroflow-server --context` and by Rust programs, so that every interface names and opens
//! a context alike:
//!
//! - a SQLite file: `runs.db`, `sqlite:///abs/path/runs.db` or `sqlite:relative.db`;
//! - a Redis server: `redis://host:port[/db][?namespace=NAME]` (or `rediss://`); the
//!   namespace defaults to `default`;
//! - a NATS server with JetStream: `nats://host:port[?namespace=NAME]` (or `tls://`); the
//!   namespace defaults to `ferroflow`.
//!
//! A store whose cargo feature (`sqlite`, `redis`, `nats`) is off is still read, and opening
//! it says which feature it needs.

use std::sync::Arc;

use super::DurableStore;
use crate::error::{Error, Result};
use crate::limits;

/// A context URL that names no durable context, or one that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// `memory`, an unknown scheme, or nothing: no store that workers could share.
    #[error(
        "context '{}' names no durable context: give a SQLite file (or sqlite:///path), redis://HOST:PORT or nats://HOST:PORT",
        limits::shorten(&super::redact_url(.0), 200)
    )]
    NotDurable(String),
    /// The store could not be opened or reached.
    #[error("context '{url}' cannot be opened: {source}")]
    Open {
        /// The context as given, without credentials.
        url: String,
        /// Why the store could not be opened.
        source: Box<Error>,
    },
}

/// A durable context's kind and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextUrl {
    /// A SQLite file, by path.
    Sqlite(String),
    /// A Redis server.
    Redis {
        /// The server's URL, without the `namespace` parameter.
        url: String,
        /// The prefix of every key ferroflow writes.
        namespace: String,
    },
    /// A NATS server with JetStream.
    Nats {
        /// The server's URL, without the `namespace` parameter.
        url: String,
        /// The prefix of every bucket and stream ferroflow makes.
        namespace: String,
    },
}

impl ContextUrl {
    /// Reads a context URL (see the module's documentation).
    ///
    /// ```
    /// use ferroflow::store::ContextUrl;
    ///
    /// let url = ContextUrl::parse("redis://127.0.0.1:6379/2?namespace=prod").unwrap();
    /// assert_eq!(url, ContextUrl::Redis { url: "redis://127.0.0.1:6379/2".into(), namespace: "prod".into() });
    /// assert_eq!(url.kind(), "redis");
    /// assert!(ContextUrl::parse("memory").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ContextError::NotDurable`] for `memory`, nothing, or a scheme no store has.
    pub fn parse(spec: &str) -> std::result::Result<ContextUrl, ContextError> {
        if spec.is_empty() || spec == "memory" {
            return Err(ContextError::NotDurable(spec.to_owned()));
        }
        if let Some((scheme, _)) = spec.split_once("://") {
            let (rest, namespace) = take_namespace(spec);
            return match scheme {
                "redis" | "rediss" => {
                    Ok(ContextUrl::Redis { url: rest, namespace: namespace.unwrap_or_else(|| "default".into()) })
                }
                "nats" | "tls" => {
                    Ok(ContextUrl::Nats { url: rest, namespace: namespace.unwrap_or_else(|| "ferroflow".into()) })
                }
                "sqlite" => Ok(ContextUrl::Sqlite(spec.trim_start_matches("sqlite://").to_owned())),
                _ => Err(ContextError::NotDurable(spec.to_owned())),
            };
        }
        Ok(ContextUrl::Sqlite(spec.strip_prefix("sqlite:").unwrap_or(spec).to_owned()))
    }

    /// `sqlite`, `redis` or `nats`.
    pub fn kind(&self) -> &'static str {
        match self {
            ContextUrl::Sqlite(_) => "sqlite",
            ContextUrl::Redis { .. } => "redis",
            ContextUrl::Nats { .. } => "nats",
        }
    }

    /// Where the store is: the SQLite file's path, or the server's URL (which may hold
    /// credentials: show it through [`redact_url`](super::redact_url)).
    pub fn location(&self) -> &str {
        match self {
            ContextUrl::Sqlite(path) => path,
            ContextUrl::Redis { url, .. } | ContextUrl::Nats { url, .. } => url,
        }
    }

    /// The namespace on a server; a SQLite file has none (`""`).
    pub fn namespace(&self) -> &str {
        match self {
            ContextUrl::Sqlite(_) => "",
            ContextUrl::Redis { namespace, .. } | ContextUrl::Nats { namespace, .. } => namespace,
        }
    }

    /// Opens (connects to) the store. A SQLite file is opened off the runtime's workers.
    ///
    /// # Errors
    ///
    /// The store's own error when it cannot be opened or reached, and [`Error::Store`]
    /// naming the cargo feature when this build has no such store.
    pub async fn open(&self) -> Result<Arc<dyn DurableStore>> {
        match self {
            #[cfg(feature = "sqlite")]
            ContextUrl::Sqlite(path) => {
                let path = path.clone();
                let open = tokio::task::spawn_blocking(move || super::sqlite::SqliteStore::open(path));
                Ok(Arc::new(open.await.map_err(|e| Error::Store(format!("opening the file failed: {e}")))??))
            }
            #[cfg(feature = "redis")]
            ContextUrl::Redis { url, namespace } => {
                Ok(Arc::new(super::redis::RedisStore::connect(url, namespace).await?))
            }
            #[cfg(feature = "nats")]
            ContextUrl::Nats { url, namespace } => Ok(Arc::new(super::nats::NatsStore::connect(url, namespace).await?)),
            #[allow(unreachable_patterns)]
            other => Err(other.not_built()),
        }
    }

    /// Deletes everything of a server's namespace (Redis keys, or NATS buckets and
    /// streams); workers using it lose their work.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for a SQLite file (delete the file instead), or when the server
    /// cannot be reached.
    pub async fn delete_namespace(&self) -> Result<()> {
        match self {
            #[cfg(feature = "redis")]
            ContextUrl::Redis { url, namespace } => {
                super::redis::RedisStore::connect(url, namespace).await?.delete_namespace().await.map(drop)
            }
            #[cfg(feature = "nats")]
            ContextUrl::Nats { url, namespace } => super::nats::NatsStore::delete_namespace(url, namespace).await,
            ContextUrl::Sqlite(_) => {
                Err(Error::Store("a SQLite file has no namespace to delete: delete the file instead".into()))
            }
            #[allow(unreachable_patterns)]
            other => Err(other.not_built()),
        }
    }
}

impl ContextUrl {
    /// The error for a store whose cargo feature this build lacks.
    #[allow(dead_code)] // with every store feature on, no store is missing
    fn not_built(&self) -> Error {
        Error::Store(format!(
            "this build of ferroflow has no {kind} store: enable the cargo feature `{kind}`",
            kind = self.kind()
        ))
    }
}

/// Opens the durable context `spec` names.
///
/// # Errors
///
/// [`ContextError::NotDurable`] when `spec` names none, [`ContextError::Open`] (the URL
/// without credentials, and why) when it cannot be opened.
pub async fn open(spec: &str) -> std::result::Result<Arc<dyn DurableStore>, ContextError> {
    let url = ContextUrl::parse(spec)?;
    url.open().await.map_err(|source| ContextError::Open { url: super::redact_url(spec), source: Box::new(source) })
}

/// The URL without its `namespace` query parameter, and that parameter.
fn take_namespace(spec: &str) -> (String, Option<String>) {
    let Some((base, query)) = spec.split_once('?') else { return (spec.to_owned(), None) };
    let mut namespace = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("namespace", value)) => {
                namespace = Some(value.to_owned());
                false
            }
            _ => !pair.is_empty(),
        })
        .collect();
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (url, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_same_contexts_as_the_python_cli() {
        let sqlite = |p: &str| ContextUrl::Sqlite(p.to_owned());
        assert_eq!(ContextUrl::parse("runs.db").unwrap(), sqlite("runs.db"));
        assert_eq!(ContextUrl::parse("sqlite:///tmp/runs.db").unwrap(), sqlite("/tmp/runs.db"));
        assert_eq!(ContextUrl::parse("sqlite:runs.db").unwrap(), sqlite("runs.db"));
        assert_eq!(
            ContextUrl::parse("redis://127.0.0.1:6379/2?namespace=prod&protocol=resp3").unwrap(),
            ContextUrl::Redis { url: "redis://127.0.0.1:6379/2?protocol=resp3".into(), namespace: "prod".into() }
        );
        assert_eq!(
            ContextUrl::parse("nats://127.0.0.1:4222").unwrap(),
            ContextUrl::Nats { url: "nats://127.0.0.1:4222".into(), namespace: "ferroflow".into() }
        );
        assert!(matches!(ContextUrl::parse("memory"), Err(ContextError::NotDurable(_))));
        assert!(matches!(ContextUrl::parse("postgres://x"), Err(ContextError::NotDurable(_))));
    }

    #[test]
    fn a_sqlite_file_has_no_namespace_to_delete() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let error = runtime.block_on(ContextUrl::Sqlite("runs.db".into()).delete_namespace()).unwrap_err();
        assert!(error.to_string().contains("delete the file instead"), "{error}");
    }
}
