//! The profile registry: every conformance resource caregate knows, by canonical URL.
//!
//! Sources, in load order (a later source wins for the same `url|version`):
//! 1. the R4 core package embedded in the binary;
//! 2. caregate's own profiles (`profiles/caregate/`, embedded, written as differentials);
//! 3. user packages: an npm-style FHIR package folder (`package/package.json` or a folder
//!    holding `package.json` and the resources), a package `.tgz`, or a single conformance
//!    resource file (JSON resource or Bundle of them).
//!
//! Profiles that carry only a differential get their snapshot generated on first use and
//! cached (see [`crate::snapshot`]).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use flate2::read::GzDecoder;
use serde_json::Value;

use crate::model::FxMap;
use crate::package::{Package, PackageRef};
use crate::snapshot::{self, SnapshotError};
use crate::terminology::Terminology;

/// caregate's own profiles, as differentials. Kept in the repository under
/// `profiles/caregate/` and built into the binary like the core package.
const OWN_PROFILES: &[&str] = &[
    include_str!("../../../profiles/caregate/StructureDefinition-caregate-careplan.json"),
    include_str!("../../../profiles/caregate/StructureDefinition-caregate-consent.json"),
];

/// Why a package or resource file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    pkg: u32,
    idx: u32,
}

#[derive(Debug)]
struct Entry {
    loc: Loc,
    version: Option<Box<str>>,
}

/// Collects packages, then builds an immutable [`Registry`].
#[derive(Debug)]
pub struct RegistryBuilder {
    packages: Vec<PackageRef>,
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        RegistryBuilder::new()
    }
}

impl RegistryBuilder {
    /// The R4 core package and caregate's own profiles.
    pub fn new() -> RegistryBuilder {
        let own: Vec<Value> = OWN_PROFILES
            .iter()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect();
        let mut own = Package::from_resources(own);
        own.name = Some("caregate.profiles".into());
        own.version = Some(env!("CARGO_PKG_VERSION").into());
        own.dependencies = vec![("hl7.fhir.r4.core".into(), "4.0.1".into())];
        RegistryBuilder {
            packages: vec![
                PackageRef::Static(Package::r4_core()),
                PackageRef::Shared(Arc::new(own)),
            ],
        }
    }

    /// Only the R4 core package (tests, and callers that want nothing else).
    pub fn core_only() -> RegistryBuilder {
        RegistryBuilder {
            packages: vec![PackageRef::Static(Package::r4_core())],
        }
    }

    pub fn add_package(&mut self, package: Package) -> &mut Self {
        self.packages.push(PackageRef::Shared(Arc::new(package)));
        self
    }

    /// Adds conformance resources given directly (a test case's profiles, `$validate`
    /// with an inline profile, ...), as one anonymous package.
    pub fn add_resources(&mut self, resources: Vec<Value>) -> &mut Self {
        self.add_package(Package::from_resources(resources))
    }

    /// Loads a package folder, a package `.tgz`, or one resource file (`.json`, a Bundle
    /// of resources, or `.ndjson`).
    pub fn load_path(&mut self, path: &Path) -> Result<&mut Self, LoadError> {
        let package = load_path(path)?;
        Ok(self.add_package(package))
    }

    pub fn build(self) -> Registry {
        Registry::new(self.packages)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn parse_json(path: &Path, text: &[u8]) -> Result<Value, LoadError> {
    serde_json::from_slice(text).map_err(|source| LoadError::Json {
        path: path.display().to_string(),
        source,
    })
}

/// Adds a resource, or the resources of a Bundle, to `out`.
fn push_resource(out: &mut Vec<Value>, value: Value) {
    if value.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        if let Some(Value::Array(entries)) = value.get("entry") {
            for e in entries {
                if let Some(r) = e.get("resource") {
                    push_resource(out, r.clone());
                }
            }
        }
        return;
    }
    if value.get("resourceType").and_then(Value::as_str).is_some() {
        out.push(value);
    }
}

fn apply_manifest(pkg: &mut Package, manifest: &Value) {
    pkg.name = manifest
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string);
    pkg.version = manifest
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(Value::Object(deps)) = manifest.get("dependencies") {
        pkg.dependencies = deps
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
    }
}

/// Files in a package folder that are not conformance resources.
fn is_resource_file(name: &str) -> bool {
    name.ends_with(".json")
        && name != "package.json"
        && !name.starts_with('.')
        && name != "ig-r4.json"
}

/// Reads a package (folder or `.tgz`) or a single resource file.
pub fn load_path(path: &Path) -> Result<Package, LoadError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if path.is_dir() {
        let root = if path.join("package").join("package.json").is_file() {
            path.join("package")
        } else {
            path.to_path_buf()
        };
        let mut resources = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&root)
            .map_err(io_err(&root))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .is_some_and(|n| is_resource_file(&n.to_string_lossy()))
            })
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).map_err(io_err(&f))?;
            // A stray non-resource JSON file in a package is skipped, not fatal.
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                push_resource(&mut resources, v);
            }
        }
        let mut pkg = Package::from_resources(resources);
        let manifest = root.join("package.json");
        if manifest.is_file() {
            let bytes = std::fs::read(&manifest).map_err(io_err(&manifest))?;
            apply_manifest(&mut pkg, &parse_json(&manifest, &bytes)?);
        }
        return Ok(pkg);
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        return load_tgz(path, &bytes);
    }
    if name.ends_with(".ndjson") {
        let mut resources = Vec::new();
        for line in bytes.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            push_resource(&mut resources, parse_json(path, line)?);
        }
        return Ok(Package::from_resources(resources));
    }
    let mut resources = Vec::new();
    push_resource(&mut resources, parse_json(path, &bytes)?);
    if resources.is_empty() {
        return Err(LoadError::Invalid {
            path: path.display().to_string(),
            reason: "not a FHIR resource".into(),
        });
    }
    Ok(Package::from_resources(resources))
}

fn load_tgz(path: &Path, bytes: &[u8]) -> Result<Package, LoadError> {
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut resources = Vec::new();
    let mut manifest = None;
    for entry in archive.entries().map_err(io_err(path))? {
        let mut entry = entry.map_err(io_err(path))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        // Only the package's own folder: `package/other/`, `package/example/` and
        // `package/openapi/` hold no definitions to validate against.
        let Some(rest) = name.strip_prefix("package/") else {
            continue;
        };
        if rest.contains('/') || !rest.ends_with(".json") {
            continue;
        }
        let mut buf = Vec::new();
        entry.read_to_end(&mut buf).map_err(io_err(path))?;
        if rest == "package.json" {
            manifest = Some(parse_json(path, &buf)?);
        } else if is_resource_file(rest) {
            if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                push_resource(&mut resources, v);
            }
        }
    }
    let mut pkg = Package::from_resources(resources);
    if let Some(m) = manifest {
        apply_manifest(&mut pkg, &m);
    }
    Ok(pkg)
}

/// A snapshot (shared) or why it could not be produced; cached either way.
type SnapshotResult = Result<Arc<Vec<Value>>, SnapshotError>;

/// All conformance resources by canonical URL, their terminology, and generated snapshots.
///
/// Built once and shared (`Send + Sync`); snapshots are generated lazily and cached.
#[derive(Debug)]
pub struct Registry {
    packages: Vec<PackageRef>,
    by_url: FxMap<Box<str>, Vec<Entry>>,
    terminology: Arc<Terminology>,
    snapshots: RwLock<FxMap<String, Arc<SnapshotResult>>>,
    /// Compiled profiles for validation (see [`crate::profile`]).
    pub(crate) profiles: RwLock<FxMap<String, Arc<crate::profile::ProfileResult>>>,
    missing: Vec<String>,
}

impl Registry {
    /// Core package and caregate's own profiles.
    pub fn standard() -> &'static Arc<Registry> {
        static STD: OnceLock<Arc<Registry>> = OnceLock::new();
        STD.get_or_init(|| Arc::new(RegistryBuilder::new().build()))
    }

    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::new()
    }

    fn new(packages: Vec<PackageRef>) -> Registry {
        let mut by_url: FxMap<Box<str>, Vec<Entry>> = FxMap::default();
        for (p, pkg) in packages.iter().enumerate() {
            for (i, r) in pkg.resources().iter().enumerate() {
                let Some(url) = r.get("url").and_then(Value::as_str) else {
                    continue;
                };
                let version = r.get("version").and_then(Value::as_str).map(Box::from);
                let entries = by_url.entry(url.into()).or_default();
                entries.retain(|e| e.version != version);
                entries.push(Entry {
                    loc: Loc {
                        pkg: p as u32,
                        idx: i as u32,
                    },
                    version,
                });
            }
        }
        // Dependencies: each named package must be loaded (any version is accepted, with
        // the mismatch reported).
        let loaded: BTreeSet<(String, String)> = packages
            .iter()
            .filter_map(|p| Some((p.name.clone()?, p.version.clone().unwrap_or_default())))
            .collect();
        let mut missing = Vec::new();
        for p in &packages {
            for (name, version) in &p.dependencies {
                if loaded.contains(&(name.clone(), version.clone())) {
                    continue;
                }
                let other = loaded.iter().find(|(n, _)| n == name);
                let who = p.name.as_deref().unwrap_or("a package");
                missing.push(match other {
                    Some((_, v)) => {
                        format!("{who} depends on {name}#{version}; version {v} is loaded instead")
                    }
                    None => format!("{who} depends on {name}#{version}, which is not loaded"),
                });
            }
        }
        let terminology = if packages.len() == 1 && matches!(packages[0], PackageRef::Static(_)) {
            Terminology::r4_core().clone()
        } else {
            Arc::new(Terminology::new(packages.clone()))
        };
        Registry {
            packages,
            by_url,
            terminology,
            snapshots: RwLock::default(),
            profiles: RwLock::default(),
            missing,
        }
    }

    /// Dependencies that are not (or not in the stated version) loaded.
    pub fn dependency_problems(&self) -> &[String] {
        &self.missing
    }

    pub fn terminology(&self) -> &Arc<Terminology> {
        &self.terminology
    }

    /// The resource with that canonical (`url` or `url|version`; an unknown version falls
    /// back to the last loaded one).
    pub fn resolve(&self, canonical: &str) -> Option<&Value> {
        let (url, version) = match canonical.split_once('|') {
            Some((u, v)) => (u, Some(v)),
            None => (canonical, None),
        };
        let entries = self.by_url.get(url)?;
        let entry = version
            .and_then(|v| {
                entries
                    .iter()
                    .rev()
                    .find(|e| e.version.as_deref() == Some(v))
            })
            .or_else(|| entries.last())?;
        self.packages
            .get(entry.loc.pkg as usize)?
            .resources()
            .get(entry.loc.idx as usize)
    }

    /// The StructureDefinition with that canonical, if loaded.
    pub fn structure_definition(&self, canonical: &str) -> Option<&Value> {
        self.resolve(canonical).filter(|r| {
            r.get("resourceType").and_then(Value::as_str) == Some("StructureDefinition")
        })
    }

    /// Every StructureDefinition loaded (all packages, in load order).
    pub fn structure_definitions(&self) -> impl Iterator<Item = &Value> {
        self.packages
            .iter()
            .flat_map(|p| p.of_type("StructureDefinition"))
    }

    /// The snapshot elements of a StructureDefinition: its own snapshot when it has one,
    /// else one generated from its differential and its base (cached).
    pub fn snapshot(&self, canonical: &str) -> Result<Arc<Vec<Value>>, SnapshotError> {
        let mut stack = Vec::new();
        self.snapshot_inner(canonical, &mut stack)
    }

    pub(crate) fn snapshot_inner(
        &self,
        canonical: &str,
        stack: &mut Vec<String>,
    ) -> Result<Arc<Vec<Value>>, SnapshotError> {
        if let Some(hit) = self
            .snapshots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(canonical)
        {
            return (**hit).clone();
        }
        let sd = self
            .structure_definition(canonical)
            .ok_or_else(|| SnapshotError::NotFound(canonical.to_string()))?;
        let result = match sd
            .get("snapshot")
            .and_then(|s| s.get("element"))
            .and_then(Value::as_array)
        {
            Some(elements) if !elements.is_empty() => Ok(Arc::new(elements.clone())),
            _ => {
                if stack.iter().any(|s| s == canonical) {
                    return Err(SnapshotError::Cycle(canonical.to_string()));
                }
                stack.push(canonical.to_string());
                let r = snapshot::generate(self, sd, stack).map(Arc::new);
                stack.pop();
                r
            }
        };
        self.snapshots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(canonical.to_string(), Arc::new(result.clone()));
        result
    }

    /// Generates a snapshot from the differential even when the definition carries one
    /// (to compare with the published snapshot). Not cached.
    pub fn generate_snapshot(&self, sd: &Value) -> Result<Vec<Value>, SnapshotError> {
        let mut stack = Vec::new();
        if let Some(url) = sd.get("url").and_then(Value::as_str) {
            stack.push(url.to_string());
        }
        snapshot::generate(self, sd, &mut stack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_registry_has_core_and_own_profiles() {
        let r = Registry::standard();
        assert!(r
            .structure_definition("http://hl7.org/fhir/StructureDefinition/Patient")
            .is_some());
        assert!(r
            .structure_definition("http://hl7.org/fhir/StructureDefinition/Patient|4.0.1")
            .is_some());
        let own = r
            .structure_definition(
                "http://caregate.example/fhir/StructureDefinition/caregate-careplan",
            )
            .expect("own profile");
        assert!(own.get("snapshot").is_none(), "written as a differential");
        assert!(
            r.dependency_problems().is_empty(),
            "{:?}",
            r.dependency_problems()
        );
    }

    #[test]
    fn loads_package_folder_tgz_and_single_files() {
        let corpora =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/profiles");
        let us_core = corpora.join("hl7.fhir.us.core-3.1.0");
        if !us_core.is_dir() {
            return;
        }
        let pkg = load_path(&us_core).expect("folder loads");
        assert_eq!(pkg.name.as_deref(), Some("hl7.fhir.us.core"));
        assert!(pkg.of_type("StructureDefinition").count() >= 29);

        // The same folder as an npm-style .tgz (package/ prefix).
        let dir = tempfile::tempdir().expect("tempdir");
        let tgz = dir.path().join("us-core.tgz");
        {
            let file = std::fs::File::create(&tgz).expect("create");
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            let mut tar = tar::Builder::new(gz);
            tar.append_dir_all("package", &us_core).expect("append");
            tar.into_inner().expect("tar").finish().expect("gz");
        }
        let from_tgz = load_path(&tgz).expect("tgz loads");
        assert_eq!(from_tgz.resources().len(), pkg.resources().len());
        assert_eq!(from_tgz.version.as_deref(), Some("3.1.0"));

        let mut b = Registry::builder();
        b.load_path(&tgz).expect("load");
        b.load_path(&us_core.join("ValueSet-birthsex.json"))
            .expect("single file");
        let r = b.build();
        assert!(r
            .structure_definition(
                "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|3.1.0"
            )
            .is_some());
        assert!(
            r.dependency_problems().is_empty(),
            "{:?}",
            r.dependency_problems()
        );
        assert_eq!(
            r.terminology().validate_code(
                "http://hl7.org/fhir/us/core/ValueSet/birthsex",
                None,
                "F"
            ),
            crate::CodeCheck::Valid
        );

        // A package whose dependency is missing says so.
        let mut lonely = Package::from_resources(Vec::new());
        lonely.name = Some("x".into());
        lonely.dependencies = vec![("hl7.fhir.us.core".into(), "6.1.0".into())];
        let mut b = Registry::builder();
        b.add_package(lonely);
        assert_eq!(b.build().dependency_problems().len(), 1);
    }
}
