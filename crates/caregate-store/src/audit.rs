//! The audit trail: AuditEvents in their own table, chained by hashes so that a changed,
//! removed or reordered event is detectable.
//!
//! Construction: events get consecutive sequence numbers `1, 2, 3, ...` in the order the
//! writer commits them. For event `n`,
//!
//! ```text
//! hash(n) = SHA-256_hex( hash(n-1) || ":" || n || ":" || SHA-256_hex(content(n)) )
//! hash(0) = 64 zeros
//! ```
//!
//! where `content(n)` is the stored record: the compact JSON that `caregate-audit` writes
//! (and renders as a BALP AuditEvent on read), or the full AuditEvent JSON in trails written
//! before the compact form. Verification recomputes every hash in
//! sequence order: an edited event breaks its own hash, a removed one leaves a gap in the
//! sequence, a reordered one breaks the link to its predecessor. Removing events from the
//! *end* leaves a valid shorter chain, so verification reports the head (sequence and hash)
//! for auditors to record elsewhere and compare next time.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

use crate::StoreError;

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_event (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    recorded_ms INTEGER NOT NULL,
    patient TEXT,
    client TEXT,
    event_type TEXT NOT NULL,
    subtype TEXT NOT NULL,
    outcome TEXT NOT NULL,
    purpose TEXT,
    entities TEXT NOT NULL,
    content BLOB NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_patient ON audit_event (patient, seq);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_event (recorded_ms);
"#;

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One AuditEvent to append, with the columns audit searches filter on.
#[derive(Clone)]
pub struct AuditRecord {
    pub id: String,
    pub recorded_ms: i64,
    /// `Patient/{id}` when the event is about one patient.
    pub patient: Option<String>,
    /// The client (agent) id.
    pub client: Option<String>,
    /// `rest`, or `110113` for security alerts.
    pub event_type: String,
    /// `read`, `create`, `search-type`, ...
    pub subtype: String,
    /// `0`, `4`, `8` or `12`.
    pub outcome: String,
    pub purpose: Option<String>,
    /// References of the entities touched (`CarePlan/1/_history/2`), for `entity=` search.
    pub entities: Vec<String>,
    /// The stored record (caregate-audit's compact form).
    pub content: Vec<u8>,
}

impl std::fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditRecord")
            .field("id", &self.id)
            .field("subtype", &self.subtype)
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// Filters for `GET /AuditEvent`; all given ones must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub id: Option<String>,
    pub patient: Option<String>,
    pub client: Option<String>,
    pub entity: Option<String>,
    pub event_type: Option<String>,
    pub subtype: Option<String>,
    pub outcome: Option<String>,
    pub purpose: Option<String>,
    /// `[from, to)` in epoch millis.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub count: usize,
    pub offset: usize,
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub events: u64,
    /// The last event's sequence number and hash (record them to detect truncation).
    pub head: Option<(i64, String)>,
    /// The first problem found, if any.
    pub first_break: Option<ChainBreak>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: i64,
    pub id: String,
    pub problem: String,
}

/// The writer's view of the chain's head.
#[derive(Debug, Clone)]
pub(crate) struct ChainHead {
    pub next_seq: i64,
    pub last_hash: String,
}

impl ChainHead {
    pub(crate) fn load(conn: &Connection) -> Result<ChainHead, StoreError> {
        let head: Option<(i64, String)> = conn
            .query_row(
                "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match head {
            Some((seq, hash)) => ChainHead {
                next_seq: seq + 1,
                last_hash: hash,
            },
            None => ChainHead {
                next_seq: 1,
                last_hash: GENESIS_HASH.to_string(),
            },
        })
    }
}

pub(crate) fn link_hash(prev: &str, seq: i64, content: &[u8]) -> String {
    let content_hash = hex::encode(Sha256::digest(content));
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b":");
    h.update(seq.to_string().as_bytes());
    h.update(b":");
    h.update(content_hash.as_bytes());
    hex::encode(h.finalize())
}

/// Appends records at the chain's head, advancing it.
pub(crate) fn append(
    tx: &Transaction<'_>,
    head: &mut ChainHead,
    records: &[AuditRecord],
) -> Result<(), StoreError> {
    for r in records {
        let seq = head.next_seq;
        let hash = link_hash(&head.last_hash, seq, &r.content);
        tx.prepare_cached(
            "INSERT INTO audit_event (seq, id, recorded_ms, patient, client, event_type, subtype, outcome, purpose, entities, content, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            seq,
            r.id,
            r.recorded_ms,
            r.patient,
            r.client,
            r.event_type,
            r.subtype,
            r.outcome,
            r.purpose,
            format!(" {} ", r.entities.join(" ")),
            r.content,
            head.last_hash,
            hash
        ])?;
        head.next_seq = seq + 1;
        head.last_hash = hash;
    }
    Ok(())
}

pub(crate) fn search(conn: &Connection, q: &AuditQuery) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
    // Anonymous `?` parameters are numbered in order, so clauses and args stay aligned.
    let mut clauses: Vec<&str> = Vec::new();
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    let text_filters = [
        ("id = ?", &q.id),
        ("patient = ?", &q.patient),
        ("client = ?", &q.client),
        ("event_type = ?", &q.event_type),
        ("subtype = ?", &q.subtype),
        ("outcome = ?", &q.outcome),
        ("purpose = ?", &q.purpose),
    ];
    for (clause, value) in text_filters {
        if let Some(v) = value {
            clauses.push(clause);
            args.push(Box::new(v.clone()));
        }
    }
    if let Some(v) = &q.entity {
        // Entities are stored space-separated with a space on each side; a version-less
        // reference also matches its versioned forms.
        clauses.push("(entities LIKE ? OR entities LIKE ?)");
        args.push(Box::new(format!("% {v} %")));
        args.push(Box::new(format!("% {v}/_history/%")));
    }
    if let Some(v) = q.from_ms {
        clauses.push("recorded_ms >= ?");
        args.push(Box::new(v));
    }
    if let Some(v) = q.to_ms {
        clauses.push("recorded_ms < ?");
        args.push(Box::new(v));
    }
    let where_sql = if clauses.is_empty() {
        "1 = 1".to_string()
    } else {
        clauses.join(" AND ")
    };
    let arg_refs: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM audit_event WHERE {where_sql}"),
        arg_refs.as_slice(),
        |r| r.get(0),
    )?;
    let sql = format!(
        "SELECT content FROM audit_event WHERE {where_sql} ORDER BY seq DESC LIMIT {} OFFSET {}",
        q.count, q.offset
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(arg_refs.as_slice(), |r| r.get::<_, Vec<u8>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, total as u64))
}

pub(crate) fn verify(conn: &Connection) -> Result<ChainReport, StoreError> {
    // One sequential pass over the table with borrowed column values: a million events
    // must verify in seconds, so nothing is allocated per event unless it is broken.
    let mut stmt =
        conn.prepare("SELECT seq, content, prev_hash, hash FROM audit_event ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1i64;
    let mut prev = [0u8; 64];
    prev.copy_from_slice(GENESIS_HASH.as_bytes());
    let mut events = 0u64;
    let mut head_seq = None;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let column = |i: usize| -> Result<&[u8], StoreError> {
            let value = row.get_ref(i)?;
            value
                .as_bytes_or_null()
                .map(Option::unwrap_or_default)
                .map_err(|e| StoreError::Database(format!("audit event {seq}: {e}")))
        };
        let content = column(1)?;
        let stored_prev = column(2)?;
        let stored_hash = column(3)?;
        events += 1;
        let problem = if seq != expected_seq {
            Some(format!(
                "sequence jumps from {} to {seq}: events {}..{} were removed",
                expected_seq - 1,
                expected_seq,
                seq - 1
            ))
        } else if stored_prev != prev {
            Some(
                "its link to the previous event does not match (events removed or reordered)"
                    .to_string(),
            )
        } else if link_hash_bytes(&prev, seq, content) != stored_hash {
            Some("its content or hash was changed".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            let id: String = conn.query_row(
                "SELECT id FROM audit_event WHERE seq = ?1",
                params![seq],
                |r| r.get(0),
            )?;
            let head = head_seq.map(|s| (s, String::from_utf8_lossy(&prev).into_owned()));
            return Ok(ChainReport {
                events,
                head,
                first_break: Some(ChainBreak { seq, id, problem }),
            });
        }
        if stored_hash.len() != prev.len() {
            return Err(StoreError::Database(format!(
                "audit event {seq} has a malformed hash"
            )));
        }
        prev.copy_from_slice(stored_hash);
        head_seq = Some(seq);
        expected_seq = seq + 1;
    }
    Ok(ChainReport {
        events,
        head: head_seq.map(|s| (s, String::from_utf8_lossy(&prev).into_owned())),
        first_break: None,
    })
}

/// [`link_hash`] into a stack buffer (hex, 64 bytes).
fn link_hash_bytes(prev: &[u8], seq: i64, content: &[u8]) -> [u8; 64] {
    let mut content_hex = [0u8; 64];
    // Both buffers are exactly twice the digest length, so encoding cannot fail.
    let _ = hex::encode_to_slice(Sha256::digest(content), &mut content_hex);
    let mut h = Sha256::new();
    h.update(prev);
    h.update(b":");
    h.update(seq.to_string().as_bytes());
    h.update(b":");
    h.update(content_hex);
    let mut out = [0u8; 64];
    let _ = hex::encode_to_slice(h.finalize(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_hash_depends_on_every_part() {
        let a = link_hash(GENESIS_HASH, 1, b"{}");
        assert_ne!(a, link_hash(GENESIS_HASH, 2, b"{}"));
        assert_ne!(a, link_hash(GENESIS_HASH, 1, b"{ }"));
        assert_ne!(a, link_hash(&a, 1, b"{}"));
        assert_eq!(a.len(), 64);
        assert_eq!(
            link_hash_bytes(GENESIS_HASH.as_bytes(), 1, b"{}").as_slice(),
            a.as_bytes()
        );
    }
}
