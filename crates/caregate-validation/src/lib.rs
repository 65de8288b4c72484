//! Validation of inbound resources against StructureDefinitions, and the registry of the
//! conformance packages they come from.
//!
//! [`StructureModel`] is the write-path check: the R4 core snapshots compiled into hash
//! tables once, then a single walk over each inbound resource that reports unknown
//! elements, wrong JSON shapes, bad primitive values and missing required elements as
//! `OperationOutcome` issues located by FHIRPath.

mod model;
pub mod package;
mod primitive;
pub mod terminology;
mod validate;

use std::sync::OnceLock;

use caregate_core::Issue;
use serde_json::Value;

pub use model::ModelError;
pub use package::{Package, PackageRef};
pub use terminology::{CodeCheck, Terminology};
pub use primitive::Primitive;

use model::{FxMap, Table, TableId, TypeInfo, TypeKind};

/// Structural model of FHIR R4 compiled from StructureDefinition snapshots: for each
/// resource type, complex datatype and backbone element, the JSON properties it allows.
///
/// Built once (see [`StructureModel::r4_core`]) and shared: it is immutable, `Send + Sync`.
#[derive(Debug)]
pub struct StructureModel {
    tables: Vec<Table>,
    types: FxMap<Box<str>, TypeInfo>,
    element_table: TableId,
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
        })
    }

    /// Compiles every base (specialization) resource type and datatype of a package.
    pub fn from_package(pkg: &Package) -> Result<StructureModel, ModelError> {
        let compiled = model::compile(pkg)?;
        Ok(StructureModel {
            tables: compiled.tables,
            types: compiled.types,
            element_table: compiled.element_table,
        })
    }

    /// Structural validation of one resource of any type, including contained resources,
    /// `Bundle.entry.resource` and `Parameters.parameter.resource`, recursively.
    /// Returns the problems found (all errors today); empty means structurally valid.
    pub fn validate(&self, resource: &Value) -> Vec<Issue> {
        let mut walker = validate::Walker::new(self);
        walker.resource(resource, false);
        walker.issues
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
