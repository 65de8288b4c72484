//! Storage for caregate: immutable, content-hashed resource versions, history and the search
//! index, behind the [`Store`] trait. [`SqliteStore`] is the embedded default (one file, WAL,
//! one writer thread that commits concurrent requests together). The trait is shaped so a
//! PostgreSQL implementation can follow without changing callers (none exists yet).
//!
//! The store never interprets FHIR content: callers hand it finished JSON bytes, the
//! version number they expect to replace and the index entries the search layer extracted.

pub mod audit;
pub mod conformance;
pub mod index;
mod manifest;
mod sql_query;
mod sqlite;
mod vfs;

use std::fmt;

pub use audit::{AuditQuery, AuditRecord, ChainBreak, ChainReport};
pub use conformance::{ConformanceCount, ConformanceIssue, ConformanceRecord, ConformanceReport};
pub use index::*;
pub use sqlite::{SqliteOptions, SqliteStore};

/// One stored version of a resource. Versions are immutable: an update or delete adds a
/// version, it never changes an old one.
#[derive(Clone, PartialEq)]
pub struct VersionRecord {
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    /// The FHIR instant the version was written (`meta.lastUpdated`).
    pub last_updated: String,
    pub last_updated_ms: i64,
    /// `POST`, `PUT` or `DELETE`: how the version came to be (for history bundles).
    pub method: WriteMethod,
    /// The resource as JSON, `meta.versionId`/`meta.lastUpdated` included; `None` for a deletion.
    pub content: Option<Vec<u8>>,
    /// SHA-256 of `content` (hex), or of the empty string for a deletion.
    pub hash: String,
}

impl VersionRecord {
    pub fn is_deleted(&self) -> bool {
        self.content.is_none()
    }
}

impl fmt::Debug for VersionRecord {
    // Content is PHI: never print it, even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VersionRecord")
            .field("resource_type", &self.resource_type)
            .field("id", &self.id)
            .field("version", &self.version)
            .field("last_updated", &self.last_updated)
            .field("method", &self.method)
            .field("deleted", &self.is_deleted())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Post,
    Put,
    Delete,
}

impl WriteMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Post => "POST",
            WriteMethod::Put => "PUT",
            WriteMethod::Delete => "DELETE",
        }
    }

    fn parse(s: &str) -> WriteMethod {
        match s {
            "POST" => WriteMethod::Post,
            "DELETE" => WriteMethod::Delete,
            _ => WriteMethod::Put,
        }
    }
}

/// One write inside an atomic commit.
#[derive(Clone)]
pub struct WriteOp {
    pub resource_type: String,
    pub id: String,
    /// The version the resource must currently be at (its newest version, deletions
    /// included), or `None` when it must not exist at all. A mismatch fails the whole commit
    /// with [`StoreError::Conflict`]; callers retry or answer 409/412.
    pub expected_version: Option<u64>,
    /// The new version number; always `expected_version + 1` (or 1).
    pub version: u64,
    pub last_updated: String,
    pub last_updated_ms: i64,
    pub method: WriteMethod,
    /// The finished JSON, or `None` to delete.
    pub content: Option<Vec<u8>>,
    /// [`content_hash`] of `content`, computed once by the caller (off the writer thread).
    pub hash: String,
    pub index: Vec<IndexEntry>,
}

impl WriteOp {
    /// The write without its content and index entries: what callers keep of a write they
    /// handed to [`Store::commit`] (which takes the writes by value).
    pub fn summary(&self) -> WriteOp {
        WriteOp {
            resource_type: self.resource_type.clone(),
            id: self.id.clone(),
            expected_version: self.expected_version,
            version: self.version,
            last_updated: self.last_updated.clone(),
            last_updated_ms: self.last_updated_ms,
            method: self.method,
            content: None,
            hash: self.hash.clone(),
            index: Vec::new(),
        }
    }
}

impl fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteOp")
            .field("resource_type", &self.resource_type)
            .field("id", &self.id)
            .field("expected_version", &self.expected_version)
            .field("version", &self.version)
            .field("method", &self.method)
            .finish()
    }
}

/// A page of search matches (current, non-deleted versions).
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub matches: Vec<VersionRecord>,
    /// All matches, when the query asked for a total.
    pub total: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions written at or after this instant (epoch millis).
    pub since: Option<i64>,
    /// Only versions written at or before this instant (`_at`-style upper bound).
    pub before: Option<i64>,
    pub count: usize,
    pub offset: usize,
}

/// Newest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub versions: Vec<VersionRecord>,
    pub total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write's `expected_version` did not match; nothing of the commit was written.
    #[error("version conflict on {resource_type}/{id}: expected {expected:?}, found {actual:?}")]
    Conflict {
        op_index: usize,
        resource_type: String,
        id: String,
        expected: Option<u64>,
        actual: Option<u64>,
    },
    #[error("storage failure: {0}")]
    Database(String),
    #[error("the store is shutting down")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// A resource key, `(type, id)`.
pub type Key = (String, String);

/// The storage interface every backend implements. All methods block; async callers run
/// them on a blocking thread pool.
pub trait Store: Send + Sync {
    /// The newest version (possibly a deletion), or `None` if the resource never existed.
    fn read(&self, resource_type: &str, id: &str) -> Result<Option<VersionRecord>, StoreError>;

    /// The newest version numbers of many resources at once (absent keys are left out).
    fn current_versions(&self, keys: &[Key]) -> Result<Vec<(Key, u64)>, StoreError>;

    fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, StoreError>;

    /// Applies all writes atomically and durably, or none of them, together with the
    /// AuditEvents that record them (appended to the audit chain in the same transaction).
    fn commit(&self, ops: Vec<WriteOp>, audit: Vec<AuditRecord>) -> Result<(), StoreError>;

    /// Appends AuditEvents without waiting for them to be durable (used on the read path,
    /// which must not wait for an fsync).
    fn record_audit(&self, audit: Vec<AuditRecord>) -> Result<(), StoreError>;

    /// AuditEvent JSON, newest first, and the number of matches.
    fn audit_search(&self, query: &AuditQuery) -> Result<(Vec<Vec<u8>>, u64), StoreError>;

    /// Walks the audit chain from the start.
    fn verify_audit_chain(&self) -> Result<ChainReport, StoreError>;

    /// Adds validation outcomes to the per-source conformance statistics (not waited for).
    fn record_conformance(&self, stats: Vec<ConformanceRecord>) -> Result<(), StoreError>;

    /// Statistics for one client (or all) since a day (`YYYY-MM-DD`, or all time).
    fn conformance_report(
        &self,
        client: Option<&str>,
        since_day: Option<&str>,
    ) -> Result<ConformanceReport, StoreError>;

    fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;

    /// The resources an `_include`/`_revinclude` adds for the given matches.
    fn include(
        &self,
        matches: &[Key],
        spec: &IncludeSpec,
    ) -> Result<Vec<VersionRecord>, StoreError>;

    fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError>;
}

/// SHA-256 of a version's content, hex-encoded: the content address of a version.
pub fn content_hash(content: Option<&[u8]>) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(content.unwrap_or_default()))
}
