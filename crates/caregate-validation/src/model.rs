//! The compiled structure model: one lookup table per resource type, complex datatype and
//! backbone element, built once from StructureDefinition snapshots.
//!
//! Validation runs on every write, so everything that can be decided from the definitions
//! is decided here, at build time: JSON property names (choice types expanded to
//! `valueQuantity`, ...), the `_name` sibling of each primitive, cardinality, and which table
//! a nested object is checked against. The validator then only does hash lookups.
//!
//! Each [`ElementInfo`] keeps the ElementDefinition `path` it came from, so that later rules
//! (bindings, fixed/pattern values, invariants, profiles) can attach to the same elements
//! without changing how the walk works.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use caregate_core::keys::KeyIndex;
use serde_json::Value;

use crate::package::Package;
use crate::primitive::Primitive;

/// FxHash: the property tables are keyed by names fixed at build time, so a fast
/// non-randomised hash is safe (input can only miss, never collide its way into a slow path
/// that matters) and roughly halves the cost of each lookup compared with SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Index into [`StructureModel::tables`](crate::StructureModel).
pub(crate) type TableId = u32;

/// What a JSON property holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElementKind {
    Primitive(Primitive),
    /// A complex datatype; the table is that type's root table.
    Complex(TableId),
    /// An inline BackboneElement/Element with its own children (or a contentReference to one).
    Backbone(TableId),
    /// A whole resource (`contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`).
    Resource,
}

/// One JSON property of a table.
#[derive(Debug)]
pub(crate) struct ElementInfo {
    /// JSON property name, with choice types expanded (`valueQuantity`).
    pub name: Box<str>,
    /// `_name`, the sibling that carries a primitive's id/extensions.
    pub ext_name: Box<str>,
    /// The ElementDefinition path it was compiled from (`Observation.value[x]`): the key later
    /// rules (bindings, fixed values, invariants) use to find their element.
    #[allow(dead_code)]
    pub path: Box<str>,
    /// `max != "1"`: the JSON value is an array.
    pub array: bool,
    pub min: u32,
    pub kind: ElementKind,
    /// For choice variants, the index of their group in [`Table::choices`].
    pub choice: Option<u16>,
    /// Index into the model's bindings, for coded elements with a checked binding.
    pub binding: Option<u32>,
}

/// ElementDefinition.binding.strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BindingStrength {
    Required,
    Extensible,
    Preferred,
    Example,
}

impl BindingStrength {
    pub fn from_code(s: &str) -> Option<BindingStrength> {
        Some(match s {
            "required" => BindingStrength::Required,
            "extensible" => BindingStrength::Extensible,
            "preferred" => BindingStrength::Preferred,
            "example" => BindingStrength::Example,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BindingStrength::Required => "required",
            BindingStrength::Extensible => "extensible",
            BindingStrength::Preferred => "preferred",
            BindingStrength::Example => "example",
        }
    }
}

/// How a bound value carries its code(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coded {
    /// `code`, `string`, `uri`: the value itself, system implied by the value set.
    Code,
    Coding,
    CodeableConcept,
    /// `Quantity.system` + `Quantity.code`.
    Quantity,
}

impl Coded {
    pub fn of_type(code: &str) -> Option<Coded> {
        Some(match code {
            "code" | "string" | "uri" => Coded::Code,
            "Coding" => Coded::Coding,
            "CodeableConcept" => Coded::CodeableConcept,
            "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity"
            | "MoneyQuantity" => Coded::Quantity,
            _ => return None,
        })
    }
}

/// A binding the structural walk checks (required, extensible and preferred; example
/// bindings are documentation only and never compiled).
#[derive(Debug)]
pub(crate) struct BindingInfo {
    pub strength: BindingStrength,
    /// Canonical URL of the value set, as the definition states it (may carry `|version`).
    pub value_set: Box<str>,
    pub coded: Coded,
}

/// A choice element (`value[x]`): only one variant may appear, and one must when min ≥ 1.
#[derive(Debug)]
pub(crate) struct ChoiceGroup {
    /// The name without `[x]` (`value`).
    pub base: Box<str>,
}

/// The properties allowed in one kind of JSON object.
#[derive(Debug)]
pub(crate) struct Table {
    /// ElementDefinition path of the object (`Patient`, `Patient.contact`).
    #[allow(dead_code)]
    pub path: Box<str>,
    pub elements: Vec<ElementInfo>,
    pub index: KeyIndex<u32>,
    /// Elements (not choice variants) with min ≥ 1.
    pub required: Vec<u32>,
    pub choices: Vec<ChoiceGroup>,
    /// Choice groups with min ≥ 1.
    pub required_choices: Vec<u16>,
}

impl Table {
    fn new(path: &str) -> Table {
        Table {
            path: path.into(),
            elements: Vec::new(),
            index: Default::default(),
            required: Vec::new(),
            choices: Vec::new(),
            required_choices: Vec::new(),
        }
    }

    #[inline]
    pub fn lookup(&self, name: &str) -> Option<&ElementInfo> {
        self.lookup_index(name).map(|(_, el)| el)
    }

    /// The element of that JSON name and its index in [`Table::elements`].
    #[inline]
    pub fn lookup_index(&self, name: &str) -> Option<(u32, &ElementInfo)> {
        let i = *self.index.get(name)?;
        Some((i, self.elements.get(i as usize)?))
    }

    fn push(&mut self, info: ElementInfo) -> Result<(), ModelError> {
        let id = self.elements.len() as u32;
        if self.index.insert(info.name.clone(), id).is_some() {
            return Err(ModelError::Duplicate {
                path: info.path.to_string(),
                name: info.name.to_string(),
            });
        }
        if info.min > 0 && info.choice.is_none() {
            self.required.push(id);
        }
        self.elements.push(info);
        Ok(())
    }
}

/// The kind of a named type in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeKind {
    Primitive(Primitive),
    Complex,
    Resource,
}

#[derive(Debug)]
pub(crate) struct TypeInfo {
    pub kind: TypeKind,
    /// Root table (complex types and resources).
    pub table: Option<TableId>,
    pub is_abstract: bool,
}

/// Why a package could not be compiled into a [`StructureModel`](crate::StructureModel).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("StructureDefinition {url} has no snapshot")]
    NoSnapshot { url: String },
    #[error("StructureDefinition {url}: {reason}")]
    Malformed { url: String, reason: String },
    #[error("element {path}: unknown type '{code}'")]
    UnknownType { path: String, code: String },
    #[error("element {path}: contentReference '{reference}' names no element with children")]
    BadContentReference { path: String, reference: String },
    #[error("element {path}: property '{name}' defined twice")]
    Duplicate { path: String, name: String },
    #[error("the package defines no '{0}' type")]
    MissingType(&'static str),
}

pub(crate) struct Compiled {
    pub tables: Vec<Table>,
    pub bindings: Vec<BindingInfo>,
    pub types: KeyIndex<TypeInfo>,
    /// The `Element` table, used for the `_name` siblings of primitives.
    pub element_table: TableId,
}

const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
const SYSTEM_PREFIX: &str = "http://hl7.org/fhirpath/System.";

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// True for the definitions that describe a base type rather than a profile on one:
/// specializations, plus the roots `Element` and `Resource` (which have no base).
fn is_base_definition(sd: &Value) -> bool {
    match str_field(sd, "derivation") {
        Some("specialization") => true,
        Some(_) => false,
        None => sd.get("baseDefinition").is_none(),
    }
}

pub(crate) fn compile(pkg: &Package) -> Result<Compiled, ModelError> {
    let mut tables: Vec<Table> = Vec::new();
    let mut types: KeyIndex<TypeInfo> = KeyIndex::default();
    let mut to_compile: Vec<&Value> = Vec::new();
    let mut bindings: Vec<BindingInfo> = Vec::new();

    // Pass 1: name every type and reserve the root table of each structured one, so that
    // element types can be resolved in any order.
    for sd in pkg.of_type("StructureDefinition") {
        if !is_base_definition(sd) {
            continue;
        }
        let url = str_field(sd, "url").unwrap_or("?");
        let Some(name) = str_field(sd, "type") else {
            return Err(ModelError::Malformed {
                url: url.to_string(),
                reason: "no type".into(),
            });
        };
        let is_abstract = sd.get("abstract").and_then(Value::as_bool).unwrap_or(false);
        let kind = match str_field(sd, "kind") {
            Some("primitive-type") => match Primitive::from_name(name) {
                Some(p) => TypeKind::Primitive(p),
                None => {
                    return Err(ModelError::UnknownType {
                        path: name.to_string(),
                        code: name.to_string(),
                    })
                }
            },
            Some("complex-type") => TypeKind::Complex,
            Some("resource") => TypeKind::Resource,
            _ => continue, // logical models are not instance types
        };
        let table = if matches!(kind, TypeKind::Primitive(_)) {
            None
        } else {
            let id = tables.len() as TableId;
            tables.push(Table::new(name));
            to_compile.push(sd);
            Some(id)
        };
        types.insert(
            name.into(),
            TypeInfo {
                kind,
                table,
                is_abstract,
            },
        );
    }

    // Pass 2: fill the tables from the snapshots.
    for sd in to_compile {
        compile_definition(sd, &mut tables, &types, &mut bindings)?;
    }

    let element_table = types
        .get("Element")
        .and_then(|t| t.table)
        .ok_or(ModelError::MissingType("Element"))?;
    Ok(Compiled {
        tables,
        bindings,
        types,
        element_table,
    })
}

fn compile_definition(
    sd: &Value,
    tables: &mut Vec<Table>,
    types: &KeyIndex<TypeInfo>,
    bindings: &mut Vec<BindingInfo>,
) -> Result<(), ModelError> {
    let url = str_field(sd, "url").unwrap_or("?");
    let type_name = str_field(sd, "type").unwrap_or("?");
    let is_resource = str_field(sd, "kind") == Some("resource");
    let root_table =
        types
            .get(type_name)
            .and_then(|t| t.table)
            .ok_or_else(|| ModelError::Malformed {
                url: url.to_string(),
                reason: "type not registered".into(),
            })?;
    let elements = sd
        .get("snapshot")
        .and_then(|s| s.get("element"))
        .and_then(Value::as_array)
        .ok_or_else(|| ModelError::NoSnapshot {
            url: url.to_string(),
        })?;

    // Slices repeat their base element's path; core base definitions have none, and the
    // structural model describes the base element only.
    let defs: Vec<(&str, &Value)> = elements
        .iter()
        .filter(|e| e.get("sliceName").is_none())
        .filter_map(|e| str_field(e, "path").map(|p| (p, e)))
        .collect();

    // Every path that has children gets a table (the root reuses the reserved one).
    let mut table_of: HashMap<&str, TableId> = HashMap::new();
    let parents: HashSet<&str> = defs
        .iter()
        .filter_map(|(p, _)| p.rsplit_once('.').map(|(parent, _)| parent))
        .collect();
    for (path, _) in &defs {
        if !parents.contains(path) {
            continue;
        }
        if *path == type_name {
            table_of.insert(path, root_table);
        } else {
            table_of.insert(path, tables.len() as TableId);
            tables.push(Table::new(path));
        }
    }

    for (path, def) in &defs {
        let Some((parent, name)) = path.rsplit_once('.') else {
            continue; // the root element itself
        };
        let Some(&parent_table) = table_of.get(parent) else {
            return Err(ModelError::Malformed {
                url: url.to_string(),
                reason: format!("element {path} has no parent element"),
            });
        };
        let min = def.get("min").and_then(Value::as_u64).unwrap_or(0) as u32;
        let array = str_field(def, "max").is_some_and(|m| m != "1");
        let binding = def.get("binding").and_then(|b| {
            let strength = BindingStrength::from_code(str_field(b, "strength")?)?;
            let value_set = str_field(b, "valueSet")?;
            (strength != BindingStrength::Example).then_some((strength, value_set))
        });
        let mut bind = |type_code: &str| -> Option<u32> {
            let (strength, value_set) = binding?;
            let coded = Coded::of_type(type_code)?;
            // A Quantity's unit is only checked against a required binding: other
            // strengths over UCUM units would only ever say "cannot check".
            if coded == Coded::Quantity && strength != BindingStrength::Required {
                return None;
            }
            bindings.push(BindingInfo {
                strength,
                value_set: value_set.into(),
                coded,
            });
            Some(bindings.len() as u32 - 1)
        };

        if let Some(reference) = str_field(def, "contentReference") {
            let target = reference.rsplit_once('#').map_or(reference, |(_, t)| t);
            let Some(&table) = table_of.get(target) else {
                return Err(ModelError::BadContentReference {
                    path: path.to_string(),
                    reference: reference.to_string(),
                });
            };
            tables[parent_table as usize].push(element(
                name,
                path,
                array,
                min,
                ElementKind::Backbone(table),
                None,
            ))?;
            continue;
        }

        let type_list: Vec<&Value> = def
            .get("type")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        if let Some(base) = name.strip_suffix("[x]") {
            let table = &mut tables[parent_table as usize];
            let group = table.choices.len() as u16;
            table.choices.push(ChoiceGroup { base: base.into() });
            if min > 0 {
                table.required_choices.push(group);
            }
            for t in type_list {
                let code = str_field(t, "code").unwrap_or("");
                let kind = kind_of(code, t, path, types)?;
                let variant = format!(
                    "{base}{}{}",
                    code.get(..1).unwrap_or("").to_ascii_uppercase(),
                    code.get(1..).unwrap_or("")
                );
                let mut info = element(&variant, path, array, min, kind, Some(group));
                info.binding = bind(code);
                tables[parent_table as usize].push(info)?;
            }
            continue;
        }

        let mut bound = None;
        let kind = if let Some(&table) = table_of.get(path) {
            ElementKind::Backbone(table)
        } else if is_resource && name == "id" && parent == type_name {
            // The logical id of a resource is an `id` (the R4 snapshots type it as a plain
            // System.String, which would let any string through).
            ElementKind::Primitive(Primitive::Id)
        } else {
            let [t] = type_list.as_slice() else {
                return Err(ModelError::Malformed {
                    url: url.to_string(),
                    reason: format!(
                        "element {path} has {} types but is not a choice",
                        type_list.len()
                    ),
                });
            };
            let code = str_field(t, "code").unwrap_or("");
            bound = bind(code);
            kind_of(code, t, path, types)?
        };
        let mut info = element(name, path, array, min, kind, None);
        info.binding = bound;
        tables[parent_table as usize].push(info)?;
    }
    Ok(())
}

fn element(
    name: &str,
    path: &str,
    array: bool,
    min: u32,
    kind: ElementKind,
    choice: Option<u16>,
) -> ElementInfo {
    ElementInfo {
        name: name.into(),
        ext_name: format!("_{name}").into(),
        path: path.into(),
        array,
        min,
        kind,
        choice,
        binding: None,
    }
}

/// Resolves one ElementDefinition.type entry to what its JSON property holds.
fn kind_of(
    code: &str,
    type_def: &Value,
    path: &str,
    types: &KeyIndex<TypeInfo>,
) -> Result<ElementKind, ModelError> {
    let unknown = || ModelError::UnknownType {
        path: path.to_string(),
        code: code.to_string(),
    };
    // FHIRPath system types (ids, Extension.url, primitive values) carry the FHIR type they
    // stand for in an extension; without one they are plain strings.
    let code = if code.starts_with(SYSTEM_PREFIX) {
        type_def
            .get("extension")
            .and_then(Value::as_array)
            .and_then(|exts| {
                exts.iter()
                    .find(|x| str_field(x, "url") == Some(FHIR_TYPE_EXT))
            })
            .and_then(|x| str_field(x, "valueUrl").or_else(|| str_field(x, "valueUri")))
            .unwrap_or("string")
    } else {
        code
    };
    if code == "Resource" {
        return Ok(ElementKind::Resource);
    }
    let info = types.get(code).ok_or_else(unknown)?;
    match (info.kind, info.table) {
        (TypeKind::Primitive(p), _) => Ok(ElementKind::Primitive(p)),
        (TypeKind::Complex, Some(t)) => Ok(ElementKind::Complex(t)),
        // A resource-typed element other than Resource itself (not in R4 core), or a
        // structured type without a table: treat as a nested resource so its own
        // resourceType decides how it is checked.
        (TypeKind::Resource, _) => Ok(ElementKind::Resource),
        (TypeKind::Complex, None) => Err(unknown()),
    }
}
