//! The FHIR R4 core package (StructureDefinitions, SearchParameters, ValueSets, CodeSystems,
//! ...), compiled into the binary from `profiles/r4-core.ndjson.gz` so a fresh install needs
//! no files beside the executable.

use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use flate2::read::GzDecoder;
use serde_json::Value;

static R4_CORE_NDJSON_GZ: &[u8] = include_bytes!("../../../profiles/r4-core.ndjson.gz");

/// Conformance resources of one FHIR package.
#[derive(Debug, Default)]
pub struct Package {
    resources: Vec<Value>,
    /// `name` from package.json (`hl7.fhir.us.core`), when known.
    pub name: Option<String>,
    /// `version` from package.json, when known.
    pub version: Option<String>,
    /// `dependencies` from package.json: (name, version).
    pub dependencies: Vec<(String, String)>,
}

/// A package held either for the whole process (the embedded core) or shared by the
/// registries that loaded it. Lets the terminology and the profile registry refer to
/// resources in place instead of copying them.
#[derive(Debug, Clone)]
pub enum PackageRef {
    Static(&'static Package),
    Shared(Arc<Package>),
}

impl Deref for PackageRef {
    type Target = Package;
    fn deref(&self) -> &Package {
        match self {
            PackageRef::Static(p) => p,
            PackageRef::Shared(p) => p,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("reading package: {0}")]
    Io(#[from] std::io::Error),
    #[error("package line {line}: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
}

impl Package {
    /// The R4 core package, decompressed and parsed once per process.
    pub fn r4_core() -> &'static Package {
        static CORE: OnceLock<Package> = OnceLock::new();
        CORE.get_or_init(|| {
            // The archive is built into the binary and checked by tests; failing here means
            // the build itself is broken, not that input was bad.
            Package::from_ndjson_gz(R4_CORE_NDJSON_GZ).expect("embedded R4 core package is valid")
        })
    }

    /// Reads gzip-compressed NDJSON, one resource per line.
    pub fn from_ndjson_gz(bytes: &[u8]) -> Result<Package, PackageError> {
        let reader = BufReader::new(GzDecoder::new(bytes));
        let mut resources = Vec::new();
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let value = serde_json::from_str(&line).map_err(|source| PackageError::Json {
                line: n + 1,
                source,
            })?;
            resources.push(value);
        }
        let mut pkg = Package::from_resources(resources);
        pkg.name = Some("hl7.fhir.r4.core".into());
        pkg.version = Some("4.0.1".into());
        Ok(pkg)
    }

    pub fn from_resources(resources: Vec<Value>) -> Package {
        Package {
            resources,
            ..Package::default()
        }
    }

    pub fn resources(&self) -> &[Value] {
        &self.resources
    }

    /// All resources of one type, e.g. `"SearchParameter"`.
    pub fn of_type<'a>(&'a self, resource_type: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.resources
            .iter()
            .filter(move |r| r.get("resourceType").and_then(Value::as_str) == Some(resource_type))
    }

    /// The resource with this canonical URL (ignoring any `|version`).
    pub fn by_url(&self, url: &str) -> Option<&Value> {
        let url = url.split('|').next().unwrap_or(url);
        self.resources
            .iter()
            .find(|r| r.get("url").and_then(Value::as_str) == Some(url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_package_loads() {
        let core = Package::r4_core();
        assert!(core.of_type("StructureDefinition").count() > 600);
        assert!(core.of_type("SearchParameter").count() > 1300);
        let patient = core
            .by_url("http://hl7.org/fhir/StructureDefinition/Patient")
            .expect("Patient definition");
        assert_eq!(patient["type"], "Patient");
    }
}
