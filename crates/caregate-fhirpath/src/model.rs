//! FHIR type information for the evaluator, built from StructureDefinitions.
//!
//! FHIR JSON does not say what type an element is: `"1974-12-25"` is a `date`, `"male"` a
//! `code`, and `value` in an Observation is whichever `valueX` key is present. FHIRPath
//! needs those types for `is`/`as`/`ofType`, for typed comparisons (a `date` compares as a
//! date, not as text) and for choice elements. `ModelInfo` holds, per type, its base type
//! and its elements with their types; backbone elements are types of their own, named by
//! path (`Patient.contact`).
//!
//! Building it from the 29 MB R4 core package takes a while, so the R4 model ships as a
//! compact text form (`r4.model`, generated from `profiles/r4-core.ndjson.gz` and checked
//! against it by a test) and loads in milliseconds on first use.

use std::sync::OnceLock;

use caregate_core::keys::KeyIndex;
use serde_json::Value;

pub(crate) type TypeId = u32;

/// What kind of type a `TypeDef` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeKind {
    Primitive,
    Complex,
    Resource,
    /// A backbone element (`Patient.contact`): complex, named by its path.
    Backbone,
}

#[derive(Debug, Clone)]
pub(crate) struct ElemDef {
    /// The possible types; several for a choice element (`value[x]`).
    pub types: Box<[TypeId]>,
    /// `value[x]`: the JSON key carries a type suffix.
    pub choice: bool,
    /// A choice element addressed by its JSON key (`valueQuantity`), which FHIRPath does not
    /// allow but lenient evaluation (and old search expressions) accept.
    pub expanded: bool,
    /// `_name`: the key holding a primitive's id/extensions.
    pub ext_key: Box<str>,
}

#[derive(Debug, Clone)]
pub(crate) struct TypeDef {
    pub name: Box<str>,
    pub base: Option<TypeId>,
    pub kind: TypeKind,
    pub elements: KeyIndex<ElemDef>,
    /// How a JSON value of this (primitive) type maps onto a FHIRPath System type.
    pub prim: PrimKind,
    /// `Quantity` or one of its specialisations (`Age`, `Duration`, ...).
    pub quantity: bool,
}

/// The System type a FHIR primitive converts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrimKind {
    None,
    Bool,
    Int,
    Dec,
    Str,
    Date,
    DateTime,
    Time,
}

/// Types and elements of a FHIR version (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    types: Vec<TypeDef>,
    by_name: KeyIndex<TypeId>,
}

static R4_MODEL_TEXT: &str = include_str!("r4.model");
static R4: OnceLock<ModelInfo> = OnceLock::new();

/// One element in the intermediate form shared by the compact text and the builder.
struct RawElem {
    name: String,
    choice: bool,
    types: Vec<String>,
}

struct RawType {
    name: String,
    base: Option<String>,
    kind: TypeKind,
    elements: Vec<RawElem>,
}

fn kind_char(k: TypeKind) -> char {
    match k {
        TypeKind::Primitive => 'p',
        TypeKind::Complex => 'c',
        TypeKind::Resource => 'r',
        TypeKind::Backbone => 'b',
    }
}

impl ModelInfo {
    /// The FHIR R4 (4.0.1) core model, loaded once.
    pub fn r4() -> &'static ModelInfo {
        R4.get_or_init(|| ModelInfo::from_compact(R4_MODEL_TEXT).unwrap_or_default())
    }

    /// Builds a model from StructureDefinitions (snapshots required). Constraint profiles and
    /// logical models are skipped: they add no new types.
    pub fn from_structure_definitions<'v>(defs: impl IntoIterator<Item = &'v Value>) -> ModelInfo {
        let mut raw = Vec::new();
        for sd in defs {
            collect_sd(sd, &mut raw);
        }
        ModelInfo::from_raw(raw)
    }

    fn from_raw(raw: Vec<RawType>) -> ModelInfo {
        let mut m = ModelInfo::default();
        for t in &raw {
            let id = m.types.len() as TypeId;
            m.by_name.insert(t.name.clone().into_boxed_str(), id);
            m.types.push(TypeDef {
                name: t.name.clone().into_boxed_str(),
                base: None,
                kind: t.kind,
                elements: KeyIndex::default(),
                prim: PrimKind::None,
                quantity: false,
            });
        }
        for (i, t) in raw.iter().enumerate() {
            let base = t.base.as_deref().and_then(|b| m.by_name.get(b).copied());
            let mut elements = KeyIndex::default();
            for e in &t.elements {
                let types: Box<[TypeId]> = e
                    .types
                    .iter()
                    .filter_map(|n| m.by_name.get(n.as_str()).copied())
                    .collect();
                if e.choice {
                    for &ty in types.iter() {
                        let tn = &m.types[ty as usize].name;
                        let mut key = e.name.clone();
                        let mut cs = tn.chars();
                        if let Some(c0) = cs.next() {
                            key.push(c0.to_ascii_uppercase());
                            key.push_str(cs.as_str());
                        }
                        let ext_key = format!("_{key}").into_boxed_str();
                        // A real element of the same name wins over an expansion.
                        if !elements.contains_key(&key) {
                            elements.insert(
                                key.into_boxed_str(),
                                ElemDef {
                                    types: Box::new([ty]),
                                    choice: false,
                                    expanded: true,
                                    ext_key,
                                },
                            );
                        }
                    }
                }
                elements.insert(
                    e.name.clone().into_boxed_str(),
                    ElemDef {
                        types,
                        choice: e.choice,
                        expanded: false,
                        ext_key: format!("_{}", e.name).into_boxed_str(),
                    },
                );
            }
            let td = &mut m.types[i];
            td.base = base;
            td.elements = elements;
        }
        let quantity = m.type_id("Quantity");
        for i in 0..m.types.len() {
            let id = i as TypeId;
            let mut prim = PrimKind::None;
            if m.types[i].kind == TypeKind::Primitive {
                // Walk to the root primitive (`positiveInt` → `integer`, `code` → `string`).
                let mut cur = Some(id);
                let mut guard = 0;
                while let Some(c) = cur {
                    prim = match &*m.types[c as usize].name {
                        "boolean" => PrimKind::Bool,
                        "integer" | "integer64" => PrimKind::Int,
                        "decimal" => PrimKind::Dec,
                        "date" => PrimKind::Date,
                        "dateTime" | "instant" => PrimKind::DateTime,
                        "time" => PrimKind::Time,
                        _ => PrimKind::None,
                    };
                    guard += 1;
                    if prim != PrimKind::None || guard > 16 {
                        break;
                    }
                    cur = m.types[c as usize].base;
                }
                if prim == PrimKind::None {
                    prim = PrimKind::Str;
                }
            }
            m.types[i].prim = prim;
            m.types[i].quantity = quantity.is_some_and(|q| m.is_subtype(id, q));
        }
        m
    }

    /// Parses the compact form written by [`ModelInfo::to_compact`].
    pub fn from_compact(text: &str) -> Option<ModelInfo> {
        let mut raw: Vec<RawType> = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('\t') {
                let mut parts = rest.split('\t');
                let name = parts.next()?.to_string();
                let flags = parts.next()?;
                let types = parts
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                raw.last_mut()?.elements.push(RawElem {
                    name,
                    choice: flags.contains('x'),
                    types,
                });
            } else {
                let mut parts = line.split('\t');
                let name = parts.next()?.to_string();
                let base = parts.next()?;
                let kind = match parts.next()? {
                    "p" => TypeKind::Primitive,
                    "c" => TypeKind::Complex,
                    "r" => TypeKind::Resource,
                    "b" => TypeKind::Backbone,
                    _ => return None,
                };
                raw.push(RawType {
                    name,
                    base: (base != "-").then(|| base.to_string()),
                    kind,
                    elements: Vec::new(),
                });
            }
        }
        Some(ModelInfo::from_raw(raw))
    }

    /// A stable text form: one line per type, one tab-indented line per element.
    pub fn to_compact(&self) -> String {
        let mut out = String::from(
            "# FHIRPath model: type, base, kind; then elements (name, flags, types).\n",
        );
        for t in &self.types {
            let base = t.base.map_or("-", |b| &*self.types[b as usize].name);
            out.push_str(&format!("{}\t{}\t{}\n", t.name, base, kind_char(t.kind)));
            let mut names: Vec<_> = t.elements.iter().filter(|(_, e)| !e.expanded).collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            for (n, e) in names {
                let types: Vec<&str> = e
                    .types
                    .iter()
                    .map(|&i| &*self.types[i as usize].name)
                    .collect();
                out.push_str(&format!(
                    "\t{}\t{}\t{}\n",
                    n,
                    if e.choice { "x" } else { "-" },
                    types.join(",")
                ));
            }
        }
        out
    }

    pub(crate) fn type_id(&self, name: &str) -> Option<TypeId> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn get(&self, id: TypeId) -> Option<&TypeDef> {
        self.types.get(id as usize)
    }

    pub(crate) fn name(&self, id: TypeId) -> &str {
        self.types.get(id as usize).map_or("", |t| &t.name)
    }

    pub(crate) fn kind(&self, id: TypeId) -> Option<TypeKind> {
        self.types.get(id as usize).map(|t| t.kind)
    }

    pub(crate) fn element(&self, ty: TypeId, name: &str) -> Option<&ElemDef> {
        self.types.get(ty as usize)?.elements.get(name)
    }

    /// Whether `ty` is `ancestor` or derives from it.
    pub(crate) fn is_subtype(&self, ty: TypeId, ancestor: TypeId) -> bool {
        let mut cur = Some(ty);
        let mut guard = 0;
        while let Some(c) = cur {
            if c == ancestor {
                return true;
            }
            guard += 1;
            if guard > 64 {
                return false;
            }
            cur = self.types.get(c as usize).and_then(|t| t.base);
        }
        false
    }

    /// Whether a type of this name exists.
    pub fn has_type(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Number of types (resources, data types, backbone elements).
    pub fn type_count(&self) -> usize {
        self.types.len()
    }
}

const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";

/// The FHIR type name of an ElementDefinition.type entry.
fn type_code(t: &Value) -> Option<String> {
    let code = t.get("code")?.as_str()?;
    if let Some(sys) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
        let from_ext = t
            .get("extension")
            .and_then(Value::as_array)
            .and_then(|exts| {
                exts.iter()
                    .find(|e| e.get("url").and_then(Value::as_str) == Some(FHIR_TYPE_EXT))
            })
            .and_then(|e| e.get("valueUrl").or_else(|| e.get("valueUri")))
            .and_then(Value::as_str);
        return Some(match from_ext {
            Some(t) => t.to_string(),
            None => match sys {
                "String" => "string".into(),
                "Boolean" => "boolean".into(),
                "Integer" => "integer".into(),
                "Decimal" => "decimal".into(),
                "Date" => "date".into(),
                "DateTime" => "dateTime".into(),
                "Time" => "time".into(),
                other => other.to_ascii_lowercase(),
            },
        });
    }
    Some(code.to_string())
}

fn collect_sd(sd: &Value, out: &mut Vec<RawType>) {
    if sd.get("resourceType").and_then(Value::as_str) != Some("StructureDefinition") {
        return;
    }
    let kind = match sd.get("kind").and_then(Value::as_str) {
        Some("primitive-type") => TypeKind::Primitive,
        Some("complex-type") => TypeKind::Complex,
        Some("resource") => TypeKind::Resource,
        _ => return,
    };
    if sd.get("derivation").and_then(Value::as_str) == Some("constraint") {
        return;
    }
    let Some(name) = sd.get("type").and_then(Value::as_str) else {
        return;
    };
    let base = sd
        .get("baseDefinition")
        .and_then(Value::as_str)
        .and_then(|b| b.rsplit('/').next())
        .map(str::to_string);
    let Some(elements) = sd.pointer("/snapshot/element").and_then(Value::as_array) else {
        return;
    };
    let paths: Vec<&str> = elements
        .iter()
        .map(|e| e.get("path").and_then(Value::as_str).unwrap_or(""))
        .collect();
    let mut types: Vec<RawType> = vec![RawType {
        name: name.to_string(),
        base,
        kind,
        elements: Vec::new(),
    }];
    for (i, el) in elements.iter().enumerate() {
        let path = paths[i];
        let Some((owner, elem)) = path.rsplit_once('.') else {
            continue;
        };
        if kind == TypeKind::Primitive {
            // `string.value` etc. describe the primitive's own value, not an element.
            continue;
        }
        let has_children = paths.iter().skip(i + 1).any(|p| {
            p.len() > path.len() && p.starts_with(path) && p.as_bytes()[path.len()] == b'.'
        });
        let (elem_name, choice) = match elem.strip_suffix("[x]") {
            Some(n) => (n, true),
            None => (elem, false),
        };
        let mut tys: Vec<String> = Vec::new();
        if let Some(r) = el.get("contentReference").and_then(Value::as_str) {
            tys.push(r.trim_start_matches('#').to_string());
        } else if let Some(list) = el.get("type").and_then(Value::as_array) {
            for t in list {
                if let Some(code) = type_code(t) {
                    if !tys.contains(&code) {
                        tys.push(code);
                    }
                }
            }
        }
        if kind == TypeKind::Resource && elem == "id" && owner == name {
            // R4 types `Resource.id` as a System.String with fhir-type `string`; FHIRPath
            // (and HL7's suite: `contained.id` is an `id`) treats it as `id`.
            tys = vec!["id".to_string()];
        }
        if has_children && !choice {
            let base = tys
                .first()
                .cloned()
                .unwrap_or_else(|| "BackboneElement".into());
            types.push(RawType {
                name: path.to_string(),
                base: Some(base),
                kind: TypeKind::Backbone,
                elements: Vec::new(),
            });
            tys = vec![path.to_string()];
        }
        if let Some(t) = types.iter_mut().find(|t| t.name == owner) {
            t.elements.push(RawElem {
                name: elem_name.to_string(),
                choice,
                types: tys,
            });
        }
    }
    out.extend(types);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r4_model_knows_choices_backbones_and_primitives() {
        let m = ModelInfo::r4();
        assert!(m.type_count() > 500, "{}", m.type_count());
        let obs = m.type_id("Observation").unwrap();
        let value = m.element(obs, "value").unwrap();
        assert!(value.choice);
        let q = m.type_id("Quantity").unwrap();
        assert!(value.types.contains(&q));
        assert!(m.element(obs, "valueQuantity").unwrap().expanded);
        let pat = m.type_id("Patient").unwrap();
        let contact = m.element(pat, "contact").unwrap();
        assert_eq!(m.name(contact.types[0]), "Patient.contact");
        let bd = m.element(pat, "birthDate").unwrap();
        assert_eq!(m.name(bd.types[0]), "date");
        let code = m.type_id("code").unwrap();
        let string = m.type_id("string").unwrap();
        assert!(m.is_subtype(code, string));
        let age = m.type_id("Age").unwrap();
        assert!(m.is_subtype(age, q));
        let dr = m.type_id("DomainResource").unwrap();
        assert!(m.is_subtype(pat, dr));
        let qi = m
            .element(m.type_id("Questionnaire.item").unwrap(), "item")
            .unwrap();
        assert_eq!(m.name(qi.types[0]), "Questionnaire.item");
        let id = m.element(pat, "id").unwrap();
        assert_eq!(m.name(id.types[0]), "id");
    }
}
