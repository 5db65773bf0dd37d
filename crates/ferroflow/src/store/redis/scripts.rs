//! The store's Lua scripts: each runs atomically on the server, one file each in
//! `scripts/` after the helpers they share (`scripts/common.lua`). A script's doc says its
//! arguments (`ARGV`) and what it returns.

use redis::Script;

/// The Lua scripts, one file each in `scripts/`, each after the helpers they share
/// (`scripts/common.lua`; `P` is the key prefix, `ff:<ns>`, always `ARGV[1]`).
macro_rules! script {
    ($file:literal) => {
        concat!(include_str!("scripts/common.lua"), include_str!(concat!("scripts/", $file)))
    };
}

/// `create`: ARGV = P, run, graph, version, status, created_ms, updated_ms, created_ms
/// as 20 digits, owner ('' for none), lease_ms, n entries, entries..., n ready,
/// (task key, run, task JSON, nbf)... Returns 1 when the run is new, 0 when it existed.
pub(super) const CREATE: &str = script!("create.lua");

/// `commit` and `commit_batch`: ARGV = P, owner ('' for none), lease_ms, n steps, then per
/// step: run, expected_seq, status, holds (1/0), terminal (1/0), updated_ms ('' for none),
/// n entries, entries..., n done, done task keys..., n ready, (task key, run, task JSON,
/// nbf)... Returns per step {1 or 0 (whether the owner holds the run), 0}, {2, 0} for an
/// unknown run, or {3, found} for a conflict.
pub(super) const COMMIT: &str = script!("commit.lua");

/// `claim`: ARGV = P, owner, max, lease_ms. Returns {server now, when the next hold, lease
/// or task falls due (-1 if nothing is held or queued), runs claimed, {task, nbf,
/// deliveries} of tasks leased}: expired holds first, then expired leases, then due tasks.
pub(super) const CLAIM: &str = script!("claim.lua");

/// `claim_run`: ARGV = P, owner, run, lease_ms. Returns {task, nbf, deliveries} of every
/// task of the run, now leased to the owner.
pub(super) const CLAIM_RUN: &str = script!("claim_run.lua");

/// `renew`: ARGV = P, owner, lease_ms.
pub(super) const RENEW: &str = script!("renew.lua");

/// `ack`: ARGV = P, owner, task key. Returns 1 when removed, 0 when the owner does not
/// hold the task (any more).
pub(super) const ACK: &str = script!("ack.lua");

/// `release`: ARGV = P, owner, nbf, task keys...
pub(super) const RELEASE: &str = script!("release.lua");

/// `release_run`: ARGV = P, owner, run, nbf, the name of a released holder.
pub(super) const RELEASE_RUN: &str = script!("release_run.lua");

/// `holdings`: ARGV = P, owner. Returns {runs held, {task JSON, nbf, deliveries} leased}.
pub(super) const HOLDINGS: &str = script!("holdings.lua");

/// `delete`: ARGV = P, run. Deletes a finished run: its record, journal, listing entry and
/// whatever is left of its tasks and hold. Returns 1 when deleted, 0 when the run is not
/// finished (nothing is deleted), -1 when there is no such run.
pub(super) const DELETE: &str = script!("delete.lua");

/// The scripts, hashed once per store.
pub(super) struct Scripts {
    pub(super) create: Script,
    pub(super) commit: Script,
    pub(super) claim: Script,
    pub(super) claim_run: Script,
    pub(super) renew: Script,
    pub(super) ack: Script,
    pub(super) release: Script,
    pub(super) release_run: Script,
    pub(super) holdings: Script,
    pub(super) delete: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            create: Script::new(CREATE),
            commit: Script::new(COMMIT),
            claim: Script::new(CLAIM),
            claim_run: Script::new(CLAIM_RUN),
            renew: Script::new(RENEW),
            ack: Script::new(ACK),
            release: Script::new(RELEASE),
            release_run: Script::new(RELEASE_RUN),
            holdings: Script::new(HOLDINGS),
            delete: Script::new(DELETE),
        }
    }

    pub(super) fn all(&self) -> [&Script; 10] {
        [
            &self.create,
            &self.commit,
            &self.claim,
            &self.claim_run,
            &self.renew,
            &self.ack,
            &self.release,
            &self.release_run,
            &self.holdings,
            &self.delete,
        ]
    }
}
