//! Patient linking and the shared care-plan view.
//!
//! Two pure libraries over `serde_json::Value` resources (no I/O, no store access; the
//! pipeline gathers the resources and calls them):
//!
//! - [`linking`]: match grades between Patients ([`match_grade`]), grouping into persons
//!   ([`group_people`], [`group_people_with`] for manual link/unlink), `Patient/$match`
//!   ([`match_candidates`]), manual decisions as R4 `Linkage`s ([`linkage_resource`],
//!   [`override_from_linkage`]).
//! - [`view`]: the shared care-plan view of one person ([`build_view`]): a deterministic
//!   `collection` Bundle with one synthesized CarePlan, merged items with their sources,
//!   Provenance and `DetectedIssue` flags.
//! - [`cache`]: built views kept until a commit touches what they draw on ([`ViewCache`]).
//!
//! The pipeline calls [`PatientLinker`] for every stored resource and [`SharedView`] after
//! each commit; the named no-ops below keep the pipeline's shape until it is wired to the
//! functions above.

pub mod cache;
mod disjoint;
pub mod linking;
pub mod view;

pub use cache::{Begin, BothViews, Stamp, ViewCache};

pub use linking::{
    group_people, group_people_with, linkage_id, linkage_resource, linking_keys, match_candidates,
    match_grade, normalize_name, override_from_linkage, LinkConfig, LinkOverride, Match,
    MatchGrade, Person, LINK_DECISION_SYSTEM, MANUAL_LINK_REASON, MATCH_GRADE_EXTENSION,
};
pub use view::{
    build_view, etag_of_json, view_etag, Source, ViewOptions, FLAG_SYSTEM, ITEM_SOURCE_EXTENSION,
    LINK_BASIS_EXTENSION,
};

use serde_json::Value;

/// A version that has just been made durable.
#[derive(Debug, Clone)]
pub struct Committed<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version: u64,
    /// `None` for a deletion.
    pub resource: Option<&'a Value>,
    /// Every `reference` value in `resource` ([`caregate_core::json::reference_values`]),
    /// listed once by the pipeline for all the stages that follow references.
    pub references: Vec<&'a str>,
}

pub trait PatientLinker: Send + Sync {
    /// Called after a Patient (or a resource naming one) is stored.
    fn link(&self, committed: &Committed<'_>);
}

pub trait SharedView: Send + Sync {
    /// Called after each commit, to refresh the person's shared care-plan view.
    fn refresh(&self, committed: &[Committed<'_>]);
}

/// No linking yet: every source's Patient stands alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPatientLinking;

impl PatientLinker for NoPatientLinking {
    fn link(&self, _committed: &Committed<'_>) {}
}

/// No shared view is maintained yet.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSharedView;

impl SharedView for NoSharedView {
    fn refresh(&self, _committed: &[Committed<'_>]) {}
}
