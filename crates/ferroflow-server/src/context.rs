//! Durable contexts named by URL, as on the command line of `ferroflow` and
//! `ferroflow-server`:
//!
//! - a SQLite file: `runs.db`, `sqlite:///abs/path/runs.db` or `sqlite:relative.db`;
//! - a Redis server: `redis://host:port[/db][?namespace=NAME]` (or `rediss://`); the
//!   namespace defaults to `default`;
//! - a NATS server with JetStream: `nats://host:port[?namespace=NAME]` (or `tls://`); the
//!   namespace defaults to `ferroflow`.
//!
//! The Python package reads context URLs with this code too (`ferroflow._native.parse_context`),
//! so that the CLI and the server name every context alike.

use std::sync::Arc;

use ferroflow::{DurableStore, NatsStore, RedisStore, SqliteStore};

/// A context URL that names no durable context, or one that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// `memory`, an unknown scheme, or nothing: no store that workers could share.
    #[error(
        "context '{}' names no durable context: give a SQLite file (or sqlite:///path), redis://HOST:PORT or nats://HOST:PORT",
        ferroflow::limits::shorten(&ferroflow::store::redact_url(.0), 200)
    )]
    NotDurable(String),
    /// The store could not be opened or reached.
    #[error("context '{url}' cannot be opened: {source}")]
    Open {
        /// The context as given, without credentials.
        url: String,
        /// Why the store could not be opened.
        source: Box<ferroflow::Error>,
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
    pub fn parse(spec: &str) -> Result<ContextUrl, ContextError> {
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

    /// Opens (connects to) the store.
    pub async fn open(&self) -> ferroflow::Result<Arc<dyn DurableStore>> {
        Ok(match self {
            ContextUrl::Sqlite(path) => {
                let path = path.clone();
                let open = tokio::task::spawn_blocking(move || SqliteStore::open(path));
                Arc::new(open.await.map_err(|e| ferroflow::Error::Store(format!("opening the file failed: {e}")))??)
            }
            ContextUrl::Redis { url, namespace } => Arc::new(RedisStore::connect(url, namespace).await?),
            ContextUrl::Nats { url, namespace } => Arc::new(NatsStore::connect(url, namespace).await?),
        })
    }
}

/// Opens the durable context `spec` names.
pub async fn open(spec: &str) -> Result<Arc<dyn DurableStore>, ContextError> {
    let url = ContextUrl::parse(spec)?;
    url.open()
        .await
        .map_err(|source| ContextError::Open { url: ferroflow::store::redact_url(spec), source: Box::new(source) })
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
}
