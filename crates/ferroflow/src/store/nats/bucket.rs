//! KV operations as the store makes them: each with the store's time limit, values
//! encoded as JSON within the server's payload limit, errors named after the server (never
//! with its credentials), and scans of a bucket's latest values.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::journal::RunStatus;
use crate::store::{redact_url, scrub};

use super::{NatsStore, SCAN_IDLE, Versioned, is_marker};

impl NatsStore {
    /// The error `e` met doing `what`, naming the server. It is [`Error::Unavailable`] when
    /// the server is out of reach for now: the client is not connected (it reconnects by
    /// itself), or the request timed out, found nobody to answer it or found JetStream not
    /// ready (a server restarting answers before its JetStream does). async-nats gives each call its own error kinds,
    /// so these are recognised by what they say.
    pub(super) fn fail(&self, what: &str, e: impl Display) -> Error {
        let text = e.to_string();
        let message = scrub(&format!("NATS server {}: {what}: {text}", redact_url(&self.inner.url)), &self.inner.url);
        let connected = self.inner.client.connection_state() == async_nats::connection::State::Connected;
        // A scan's consumer vanishes when the server restarts under it ("consumer not found").
        let outage = [
            "timed out",
            "no responders",
            "broken pipe",
            "disconnected",
            "connection",
            "jetstream not enabled",
            "503",
            "consumer not found",
        ];
        if !connected || outage.iter().any(|sign| text.contains(sign)) {
            Error::Unavailable(message)
        } else {
            Error::Store(message)
        }
    }

    /// Runs `f` within the store's time limit (plus `extra`).
    pub(super) async fn timed<T>(&self, what: &str, extra: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
        let limit = self.timeout + extra;
        match tokio::time::timeout(limit, f).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.fail(what, format!("timed out after {:.3}s", limit.as_secs_f64()))),
        }
    }

    /// The JSON of a value for `key`, if it fits in a message of the server's
    /// ([`NatsStore::max_write_bytes`]); [`Error::ValueTooLarge`] otherwise, before anything
    /// is sent.
    pub(super) fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.fail(&format!("cannot encode {key}"), e))?;
        let limit = self.max_write_bytes();
        if bytes.len() > limit {
            return Err(Error::ValueTooLarge {
                what: format!("the value of key {}", crate::limits::shorten(key, 80)),
                bytes: bytes.len(),
                limit,
                store: format!("NATS server {}: its max_payload, less room for headers", redact_url(&self.inner.url)),
            });
        }
        Ok(bytes)
    }

    pub(super) fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        bucket: &kv::Store,
        key: &str,
        bytes: &[u8],
    ) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.fail(&format!("the value of key {key} in bucket {} cannot be read", bucket.name), e))
    }

    /// The value of `key` and its revision, if the key exists.
    pub(super) async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        bucket: &kv::Store,
        key: &str,
    ) -> Result<Option<Versioned<T>>> {
        let entry = bucket
            .entry(key)
            .await
            .map_err(|e| self.fail(&format!("cannot read key {key} of bucket {}", bucket.name), e))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok(Some(Versioned { value: self.decode(bucket, key, &entry.value)?, revision: entry.revision }))
            }
            _ => Ok(None),
        }
    }

    /// Creates `key`; `Ok(None)` if it exists already.
    ///
    /// A compare-and-set from revision 0 (the key has no message), not async-nats's
    /// `create`: that one, when its write fails for any reason (a reply lost to a restart),
    /// looks the key up and says "already exists" if it finds it, which it does when the
    /// failed write had in fact landed. A writer would then take its own step for another
    /// writer's. Here a failure stays a failure, whose outcome the caller finds out. (Keys
    /// are only ever removed with their messages purged, so a removed key has revision 0.)
    pub(super) async fn kv_create<T: Serialize>(
        &self,
        bucket: &kv::Store,
        key: &str,
        value: &T,
    ) -> Result<Option<u64>> {
        let bytes = self.encode(key, value)?;
        match bucket.update(key, bytes.into(), 0).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.fail(&format!("cannot create key {key} in bucket {}", bucket.name), e)),
        }
    }

    /// Updates `key` if its revision is still `revision`; `Ok(None)` if it is not.
    pub(super) async fn update<T: Serialize>(
        &self,
        bucket: &kv::Store,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<Option<u64>> {
        let bytes = self.encode(key, value)?;
        match bucket.update(key, bytes.into(), revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.fail(&format!("cannot update key {key} in bucket {}", bucket.name), e)),
        }
    }

    /// Sets `key` whatever it holds.
    pub(super) async fn put<T: Serialize>(&self, bucket: &kv::Store, key: &str, value: &T) -> Result<()> {
        let bytes = self.encode(key, value)?;
        bucket
            .put(key, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| self.fail(&format!("cannot write key {key} in bucket {}", bucket.name), e))
    }

    /// Removes `key` and its messages, unconditionally.
    pub(super) async fn remove(&self, bucket: &kv::Store, key: &str) -> Result<()> {
        bucket
            .stream
            .purge()
            .filter(format!("{}{key}", bucket.prefix))
            .await
            .map(|_| ())
            .map_err(|e| self.fail(&format!("cannot delete key {key} of bucket {}", bucket.name), e))
    }

    /// Removes `key` if its revision is still `revision`: a delete marker expecting that
    /// revision, then a purge of the key's messages up to the marker (a key re-created in
    /// between keeps its new value). Says whether the key was removed.
    pub(super) async fn remove_if(&self, bucket: &kv::Store, key: &str, revision: u64) -> Result<bool> {
        let subject = format!("{}{key}", bucket.prefix);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, revision.to_string().as_str());
        let failed = |e: &dyn Display| self.fail(&format!("cannot delete key {key} of bucket {}", bucket.name), e);
        let published = self.inner.js.publish_with_headers(subject.clone(), headers, Vec::new().into()).await;
        let ack = match published {
            Ok(ack) => ack.await,
            Err(e) => return Err(failed(&e)),
        };
        let marker = match ack {
            Ok(ack) => ack.sequence,
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => return Ok(false),
            Err(e) => return Err(failed(&e)),
        };
        bucket.stream.purge().filter(subject).sequence(marker + 1).await.map_err(|e| failed(&e))?;
        Ok(true)
    }

    /// The latest value of every key of `bucket` under `prefix` (all keys for `""`), with
    /// its key (without the prefix) and revision, in the order last written: one ordered
    /// consumer delivering the last message per key.
    pub(super) async fn scan<T: for<'de> Deserialize<'de>>(
        &self,
        bucket: &kv::Store,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned<T>)>> {
        let failed = |e: &dyn Display| self.fail(&format!("cannot list the keys of bucket {}", bucket.name), e);
        let consumer = bucket
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.inner.client.new_inbox(),
                filter_subject: format!("{}{prefix}>", bucket.prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        // The consumer is deleted once the scan is done (the server would keep it for 30 s
        // after its subscription ends), without waiting for the reply.
        let cleanup = {
            let (stream, name) = (bucket.stream.clone(), consumer.cached_info().name.clone());
            move || {
                tokio::spawn(async move {
                    let _ = stream.delete_consumer(&name).await;
                });
            }
        };
        if consumer.cached_info().num_pending == 0 {
            cleanup();
            return Ok(Vec::new());
        }
        // The latest message per key; a key written again during the scan is delivered
        // twice, and the later message wins.
        let mut latest: HashMap<String, (u64, Option<T>)> = HashMap::new();
        let probe = consumer.clone();
        let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
        let mut received = 0;
        loop {
            let message = match tokio::time::timeout(SCAN_IDLE, messages.next()).await {
                Ok(Some(message)) => message.map_err(|e| failed(&e))?,
                Ok(None) => break,
                Err(_) => {
                    // Messages counted as pending when the consumer started may have been
                    // purged since: ask the server whether anything is left to deliver.
                    let info = probe.get_info().await.map_err(|e| failed(&e))?;
                    if info.num_pending == 0 && info.delivered.consumer_sequence <= received {
                        break;
                    }
                    continue;
                }
            };
            received += 1;
            let info = message.info().map_err(|e| failed(&e))?;
            let (revision, pending) = (info.stream_sequence, info.pending);
            let key = message.subject.strip_prefix(bucket.prefix.as_str()).unwrap_or(&message.subject).to_owned();
            let value = if is_marker(&message) { None } else { Some(self.decode(bucket, &key, &message.payload)?) };
            if latest.get(&key).is_none_or(|(known, _)| *known < revision) {
                latest.insert(key, (revision, value));
            }
            if pending == 0 {
                break;
            }
        }
        drop(messages);
        cleanup();
        let mut found: Vec<(String, Versioned<T>)> = latest
            .into_iter()
            .filter_map(|(key, (revision, value))| value.map(|value| (key, Versioned { value, revision })))
            .collect();
        found.sort_by_key(|(_, v)| v.revision);
        Ok(found)
    }

    /// The latest value of every key of `bucket` under `prefix` (non-empty), in the order
    /// written, with one batched direct get (nats-server 2.11 and later: one request, a
    /// reply per message, then an end-of-batch status). `None` when the server is older.
    pub(super) async fn batch_get<T: for<'de> Deserialize<'de>>(
        &self,
        bucket: &kv::Store,
        prefix: &str,
    ) -> Result<Option<Vec<(String, T)>>> {
        if !self.inner.batch_get {
            return Ok(None);
        }
        let failed = |e: &dyn Display| self.fail(&format!("cannot read the keys of bucket {}", bucket.name), e);
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| failed(&e))?;
        let request =
            serde_json::json!({"seq": 0, "next_by_subj": format!("{}{prefix}>", bucket.prefix), "batch": 10_000});
        client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{}", bucket.stream_name), inbox, request.to_string().into())
            .await
            .map_err(|e| failed(&e))?;
        let mut found: Vec<(String, T)> = Vec::new();
        loop {
            let reply = match tokio::time::timeout(self.timeout, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(failed(&"the connection closed")),
                Err(_) => return Err(failed(&format!("timed out after {:.3}s", self.timeout.as_secs_f64()))),
            };
            match reply.status.map(|s| s.as_u16()) {
                // The end of the batch (204), or nothing matched (404).
                Some(204) | Some(404) => break,
                Some(code) if code >= 300 => {
                    return Err(failed(&format!("status {code}: {}", reply.description.unwrap_or_default())));
                }
                _ => {}
            }
            let headers = reply.headers.as_ref();
            let subject = headers.and_then(|h| h.get("Nats-Subject")).map(|s| s.as_str().to_owned());
            let Some(subject) = subject else { return Err(failed(&"a reply without Nats-Subject")) };
            let deleted = headers
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            let key = subject.strip_prefix(bucket.prefix.as_str()).unwrap_or(&subject).to_owned();
            if !deleted {
                let value = self.decode(bucket, &key, &reply.payload)?;
                found.push((key, value));
            }
            // The last message of the batch says none is pending; the end-of-batch status follows.
        }
        let _ = replies.unsubscribe().await;
        Ok(Some(found))
    }

    /// Tells followers, here and elsewhere, that `run_id`'s journal grew to leave it in
    /// `status`, when that is not running (a step of a running run is not announced:
    /// followers read the runs someone watches on their own). A notice is a hint
    /// ([`crate::store::Changes`]): one lost only delays a follower.
    pub(super) async fn announce(&self, run_id: &str, status: RunStatus) {
        if status != RunStatus::Running {
            let subject = format!("{}.settled", self.inner.change_subject);
            let _ = self.inner.client.publish(subject, run_id.to_owned().into()).await;
        }
    }

    /// Tells waiting claimants, here and elsewhere, that tasks were queued.
    pub(super) async fn wake(&self) {
        self.inner.ready.notify_waiters();
        // A lost wake-up only delays a claimant until its next scan.
        let _ = self.inner.client.publish(self.inner.wake_subject.clone(), Vec::new().into()).await;
    }
}
