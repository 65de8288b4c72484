//! Patient linking and the shared care-plan view.
//!
//! The pipeline calls [`PatientLinker`] for every stored resource and [`SharedView`] after
//! each commit. The implementations that link Patients across sources and merge care plans
//! come with the care-plan work; until then these named no-ops keep the pipeline's shape.

use serde_json::Value;

/// A version that has just been made durable.
#[derive(Debug, Clone)]
pub struct Committed<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version: u64,
    /// `None` for a deletion.
    pub resource: Option<&'a Value>,
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
