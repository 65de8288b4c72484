//! Validation of inbound resources against StructureDefinitions, and the registry of the
//! conformance packages they come from.
//!
//! * [`StructureModel`] is the write-path check: the R4 core snapshots compiled into hash
//!   tables once, then a single walk over each inbound resource that reports unknown
//!   elements, wrong JSON shapes, bad primitive values, missing required elements and
//!   core bindings (required → error, extensible → warning) as `OperationOutcome` issues
//!   located by FHIRPath.
//! * [`Terminology`] expands ValueSets from the loaded CodeSystems and answers
//!   [`Terminology::validate_code`] (also the entry point for FHIRPath `memberOf()`).
//! * [`Registry`] holds the core package, caregate's own profiles and user IG packages
//!   (folders, `.tgz`, single files) by canonical URL, generating snapshots for
//!   differential-only profiles ([`snapshot`]).
//! * [`Validator`] is the full check for `$validate`, `caregate validate` and configured
//!   profiles on ingest: the structural walk, then the core definition (reference targets,
//!   extensions, nested resources) and every claimed or required profile (cardinality,
//!   fixed/pattern, bindings, types, slicing). FHIRPath invariants are evaluated through
//!   the [`InvariantEvaluator`] hook.

pub mod invariants;
mod limits;
mod model;
pub mod package;
mod primitive;
mod profile;
mod questionnaire;
pub mod registry;
pub mod snapshot;
pub mod terminology;
mod validate;
mod validator;

#[cfg(test)]
mod fused_tests;

use std::sync::{Arc, OnceLock};

use caregate_core::Issue;
use serde_json::Value;

pub use invariants::{FhirPathInvariants, SKIPPED_INVARIANTS};
pub use model::ModelError;
pub use package::{Package, PackageRef};
pub use primitive::Primitive;
pub use profile::Constraint;
pub use registry::{LoadError, Registry, RegistryBuilder};
pub use snapshot::SnapshotError;
pub use terminology::{CodeCheck, Terminology};
pub use validator::{
    InvariantContext, InvariantEvaluator, InvariantOutcome, ValidationOptions, Validator,
};

use caregate_core::keys::KeyIndex;
pub use model::BindingStrength;
use model::{BindingInfo, Table, TableId, TypeInfo, TypeKind};
use terminology::Expansion;

/// Structural model of FHIR R4 compiled from StructureDefinition snapshots: for each
/// resource type, complex datatype and backbone element, the JSON properties it allows.
///
/// Built once (see [`StructureModel::r4_core`]) and shared: it is immutable, `Send + Sync`.
#[derive(Debug)]
pub struct StructureModel {
    tables: Vec<Table>,
    types: KeyIndex<TypeInfo>,
    element_table: TableId,
    /// The table of `Coding` (whose `system` must be absolute).
    coding_table: Option<TableId>,
    bindings: Vec<BindingInfo>,
    /// The expansion of each binding's value set, resolved on first use so that start-up
    /// does not pay for value sets no resource ever touches.
    expansions: Vec<OnceLock<Option<Arc<Expansion>>>>,
    /// Where bindings are checked against; `None` skips binding checks.
    terminology: Option<Arc<Terminology>>,
}

impl StructureModel {
    /// The model of the R4 core package embedded in the binary, compiled on first use.
    pub fn r4_core() -> &'static StructureModel {
        static CORE: OnceLock<StructureModel> = OnceLock::new();
        CORE.get_or_init(|| {
            // The package is built into the binary and compiled by the tests; failing here
            // means the build is broken, not that any input was bad.
            StructureModel::from_package(Package::r4_core())
                .expect("embedded R4 core package compiles")
                .with_terminology(Terminology::r4_core().clone())
        })
    }

    /// Checks bindings (required → error, extensible → warning, preferred → information
    /// when the code cannot be checked) against `terminology`.
    pub fn with_terminology(mut self, terminology: Arc<Terminology>) -> StructureModel {
        self.terminology = Some(terminology);
        self
    }

    /// The terminology bindings are checked against, if any.
    pub fn terminology(&self) -> Option<&Arc<Terminology>> {
        self.terminology.as_ref()
    }

    /// The expansion of binding `b`'s value set; `None` when not checkable at all.
    pub(crate) fn binding_expansion(&self, b: u32) -> Option<&Arc<Expansion>> {
        let terminology = self.terminology.as_ref()?;
        let info = self.bindings.get(b as usize)?;
        self.expansions
            .get(b as usize)?
            .get_or_init(|| terminology.expansion(&info.value_set))
            .as_ref()
    }

    /// Compiles every base (specialization) resource type and datatype of a package.
    pub fn from_package(pkg: &Package) -> Result<StructureModel, ModelError> {
        let compiled = model::compile(pkg)?;
        let coding_table = compiled.types.get("Coding").and_then(|t| t.table);
        Ok(StructureModel {
            coding_table,
            tables: compiled.tables,
            types: compiled.types,
            element_table: compiled.element_table,
            expansions: compiled.bindings.iter().map(|_| OnceLock::new()).collect(),
            bindings: compiled.bindings,
            terminology: None,
        })
    }

    /// Structural validation of one resource of any type, including contained resources,
    /// `Bundle.entry.resource` and `Parameters.parameter.resource`, recursively.
    /// Returns the problems found (all errors today); empty means structurally valid.
    pub fn validate(&self, resource: &Value) -> Vec<Issue> {
        self.validate_noting_extensions(resource).0
    }

    /// [`StructureModel::validate`], and whether the resource carries any extension
    /// (`extension`, `modifierExtension`, or a primitive's `_name`) anywhere.
    pub(crate) fn validate_noting_extensions(&self, resource: &Value) -> (Vec<Issue>, bool) {
        let mut walker = validate::Walker::new(self);
        walker.resource(resource, false);
        (walker.issues, walker.saw_extensions)
    }

    /// True for any type the model knows: resource types (including the abstract
    /// `Resource` and `DomainResource`), complex datatypes and primitive types.
    pub fn is_known_type(&self, name: &str) -> bool {
        self.types.contains_key(name)
    }

    /// True for a concrete resource type, one that may appear as `resourceType`.
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.types
            .get(name)
            .is_some_and(|t| t.kind == TypeKind::Resource && !t.is_abstract)
    }

    /// The primitive type of that name, if it is one.
    pub fn primitive(&self, name: &str) -> Option<Primitive> {
        match self.types.get(name)?.kind {
            TypeKind::Primitive(p) => Some(p),
            _ => None,
        }
    }
}

/// The model's own copy of a concrete resource type name (`'static` for the core model).
pub(crate) fn model_type_name<'m>(model: &'m StructureModel, name: &str) -> Option<&'m str> {
    model
        .types
        .get_key_value(name)
        .filter(|(_, t)| t.kind == TypeKind::Resource && !t.is_abstract)
        .map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<StructureModel>();
    }

    #[test]
    fn core_model_types() {
        let m = StructureModel::r4_core();
        assert!(m.is_known_type("Patient"));
        assert!(m.is_known_type("HumanName"));
        assert!(m.is_known_type("dateTime"));
        assert!(!m.is_known_type("Patinet"));
        assert!(m.is_resource_type("Bundle"));
        assert!(!m.is_resource_type("DomainResource"));
        assert!(!m.is_resource_type("HumanName"));
        for rt in caregate_core::RESOURCE_TYPES {
            assert!(m.is_resource_type(rt), "{rt}");
        }
        assert_eq!(m.primitive("positiveInt"), Some(Primitive::PositiveInt));
    }
}
