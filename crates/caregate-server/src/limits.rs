//! `[limits]`: how much work one request may cause, and how long a client may take to send
//! it. Every breach is answered with a 4xx OperationOutcome and logged without content.

use std::time::Duration;

use caregate_core::ContentLimits;
use serde::Deserialize;

/// `[limits]` in the configuration. The body-size limit stays `max_body_bytes` at the top
/// level.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Deepest nesting of objects/arrays (JSON) or elements (XML) in a body.
    pub max_depth: usize,
    /// Most JSON values in one body.
    pub max_elements: usize,
    /// Longest string value in bytes.
    pub max_string_bytes: usize,
    /// Time a client has to send the request line and headers (slow-loris protection);
    /// answered with 408 by the HTTP layer.
    pub header_timeout_ms: u64,
    /// Time a client has to send the whole body once the headers arrived; answered with a
    /// 408 OperationOutcome.
    pub body_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive_s: u64,
    /// Concurrent connections per worker thread; more wait in the accept queue.
    pub max_connections_per_worker: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let content = ContentLimits::default();
        LimitsConfig {
            max_depth: content.max_depth,
            max_elements: content.max_elements,
            max_string_bytes: content.max_string_bytes,
            header_timeout_ms: 5_000,
            body_timeout_ms: 30_000,
            keep_alive_s: 75,
            max_connections_per_worker: 25_000,
        }
    }
}

impl LimitsConfig {
    pub fn content(&self) -> ContentLimits {
        ContentLimits {
            max_depth: self.max_depth,
            max_elements: self.max_elements,
            max_string_bytes: self.max_string_bytes,
        }
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if !(12..=128).contains(&self.max_depth) {
            return Err(format!(
                "limits.max_depth = {} is outside 12..=128 (FHIR resources need at least 12; the JSON parser stops at 128)",
                self.max_depth
            ));
        }
        if self.max_elements == 0 || self.max_string_bytes == 0 {
            return Err("limits.max_elements and limits.max_string_bytes must be positive".into());
        }
        if self.header_timeout_ms == 0 || self.body_timeout_ms == 0 {
            return Err("limits timeouts must be positive".into());
        }
        Ok(())
    }
}
