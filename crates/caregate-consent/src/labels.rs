//! Security labels (HL7 DS4P): confidentiality levels and the sensitivity codes that always
//! need an explicit permit.

use serde_json::Value;

pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const OBLIGATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Sensitivity codes (v3-ActCode) for data that no default policy may release: mental
/// health (PSY), psychotherapy notes (PSYTHPN), substance use (ETH, SUD), HIV, and the
/// 42 CFR Part 2 policy code.
pub const SENSITIVE: [&str; 6] = ["PSY", "PSYTHPN", "ETH", "SUD", "HIV", "42CFRPart2"];

/// Codes that make Consents combine by deny-overrides instead of most-recent-wins.
pub const PART2: [&str; 3] = ["42CFRPart2", "SUD", "ETH"];

/// Confidentiality rank: U < L < M < N < R < V.
pub fn confidentiality_rank(code: &str) -> Option<u8> {
    match code {
        "U" => Some(0),
        "L" => Some(1),
        "M" => Some(2),
        "N" => Some(3),
        "R" => Some(4),
        "V" => Some(5),
        _ => None,
    }
}

/// The `meta.security` codings of a resource as `(system, code)`.
pub fn security_labels(resource: &Value) -> Vec<(&str, &str)> {
    resource
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|l| {
                    Some((
                        l.get("system").and_then(Value::as_str).unwrap_or(""),
                        l.get("code")?.as_str()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The resource's confidentiality rank (N when unlabelled, per DS4P's default).
pub fn confidentiality_of(resource: &Value) -> u8 {
    security_labels(resource)
        .iter()
        .filter(|(s, _)| *s == CONFIDENTIALITY || s.is_empty())
        .filter_map(|(_, c)| confidentiality_rank(c))
        .max()
        .unwrap_or(3)
}

/// Sensitivity codes the resource carries.
pub fn sensitivity_codes(resource: &Value) -> Vec<&str> {
    security_labels(resource)
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| SENSITIVE.contains(c))
        .collect()
}
