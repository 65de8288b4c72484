//! Audit: one record per interaction, for the AuditEvent trail auditors read.
//!
//! The pipeline hands every interaction to an [`AuditSink`]. BALP AuditEvents on a hash
//! chain come with the audit work; [`LogAudit`] records interactions to the log (without
//! PHI) until then.

/// What happened, in BALP terms.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// `read`, `vread`, `search-type`, `create`, `update`, `delete`, `history`, `transaction`, ...
    pub subtype: &'static str,
    pub client_id: Option<String>,
    pub resource_type: Option<String>,
    /// Logical ids of the resources touched (never their content).
    pub ids: Vec<String>,
    /// 0 success, 4 minor failure, 8 serious failure (AuditEvent.outcome).
    pub outcome: u8,
}

pub trait AuditSink: Send + Sync {
    fn record(&self, interaction: Interaction);
}

/// Writes one structured log line per interaction: ids and types only, never content.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogAudit;

impl AuditSink for LogAudit {
    fn record(&self, i: Interaction) {
        tracing::debug!(
            target: "caregate::audit",
            subtype = i.subtype,
            client = i.client_id.as_deref().unwrap_or("-"),
            resource_type = i.resource_type.as_deref().unwrap_or("-"),
            count = i.ids.len(),
            outcome = i.outcome,
            "interaction"
        );
    }
}
