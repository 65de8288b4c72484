//! The structural walk over one JSON resource.
//!
//! The walker keeps the location as a stack of borrowed segments and only formats a
//! FHIRPath string when it reports an issue, so a valid resource costs hash lookups and
//! byte scans, no allocation per element.

use caregate_core::json::{member, prefetch_members};
use caregate_core::{Issue, IssueCode, Severity};
use serde_json::{Map, Value};

use crate::model::{BindingStrength, Coded, ElementInfo, ElementKind, TableId, TypeKind};
use crate::primitive::{check_string, JsonForm, Primitive};
use crate::terminology::CodeCheck;
use crate::StructureModel;

#[derive(Clone, Copy)]
pub(crate) enum Seg<'a> {
    Name(&'a str),
    Index(usize),
}

/// Where the walk is: the root resource type and the segments below it.
#[derive(Clone, Copy)]
pub(crate) struct Location<'p, 'a> {
    pub root: Option<&'a str>,
    pub path: &'p [Seg<'a>],
}

impl Location<'_, '_> {
    /// The FHIRPath location (`Observation.component[0].code`), written into `out`.
    pub fn write_into(&self, out: &mut String) {
        out.clear();
        if let Some(root) = self.root {
            out.push_str(root);
        }
        for seg in self.path {
            match seg {
                Seg::Name(n) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(n);
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(decimal(&mut [0u8; 20], *i));
                    out.push(']');
                }
            }
        }
    }
}

/// `n` in decimal, written into the end of `buf` (locations are built for every value
/// checked, so without the formatting machinery).
pub(crate) fn decimal(buf: &mut [u8; 20], mut n: usize) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// Checks that other passes would make on the values the walk visits, made while it visits
/// them (the tree is in cache then): see `validator::BaseChecks`.
pub(crate) trait WalkHooks<'a> {
    /// A resource begins at the current location; `contained`: inside `contained`.
    fn enter_resource(&mut self, resource: &'a Value, contained: bool, at: Location<'_, 'a>);
    fn leave_resource(&mut self);
    /// An object of `table` (a resource root, a backbone element or a datatype's value),
    /// reached as element `via` (table, element index) of its parent object, or as a
    /// resource root (`None`).
    fn object(
        &mut self,
        via: Option<(TableId, u32)>,
        table: TableId,
        value: &'a Value,
        at: Location<'_, 'a>,
    );
}

/// The plain structural walk.
pub(crate) struct NoHooks;

impl<'a> WalkHooks<'a> for NoHooks {
    #[inline(always)]
    fn enter_resource(&mut self, _: &'a Value, _: bool, _: Location<'_, 'a>) {}
    #[inline(always)]
    fn leave_resource(&mut self) {}
    #[inline(always)]
    fn object(&mut self, _: Option<(TableId, u32)>, _: TableId, _: &'a Value, _: Location<'_, 'a>) {
    }
}

pub(crate) struct Walker<'a, H: WalkHooks<'a> = NoHooks> {
    model: &'a StructureModel,
    pub hooks: H,
    /// The root resource type (first segment of every location).
    root: Option<&'a str>,
    path: Vec<Seg<'a>>,
    pub issues: Vec<Issue>,
    /// Choice groups seen in the objects being walked; each object uses the tail it pushed.
    seen_choices: Vec<u16>,
    /// Some object had `extension`, `modifierExtension` or a `_name` member: the core
    /// pass of [`crate::Validator`] then looks for them everywhere.
    pub saw_extensions: bool,
    /// Some error was reported: the hooks' answer would be discarded (see
    /// [`Walker::hooks_live`]).
    saw_error: bool,
}

/// Longest value echoed back in a diagnostic.
const MAX_ECHO: usize = 80;

fn echo(s: &str) -> String {
    if s.chars().count() <= MAX_ECHO {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX_ECHO).collect();
        format!("{cut}...")
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl<'a> Walker<'a, NoHooks> {
    pub fn new(model: &'a StructureModel) -> Self {
        Walker::with_hooks(model, NoHooks)
    }
}

impl<'a, H: WalkHooks<'a>> Walker<'a, H> {
    pub fn with_hooks(model: &'a StructureModel, hooks: H) -> Self {
        Walker {
            model,
            hooks,
            root: None,
            path: Vec::with_capacity(16),
            issues: Vec::new(),
            seen_choices: Vec::with_capacity(16),
            saw_extensions: false,
            saw_error: false,
        }
    }

    fn location(&self) -> String {
        let mut out = String::with_capacity(64);
        self.here().write_into(&mut out);
        out
    }

    fn here(&self) -> Location<'_, 'a> {
        Location {
            root: self.root,
            path: &self.path,
        }
    }

    #[cold]
    fn error(&mut self, code: IssueCode, diagnostics: String) {
        self.report(Severity::Error, code, diagnostics);
    }

    #[cold]
    fn report(&mut self, severity: Severity, code: IssueCode, diagnostics: String) {
        self.saw_error |= severity.is_error();
        let location = self.location();
        let issue = Issue::new(severity, code, diagnostics);
        self.issues.push(if location.is_empty() {
            issue
        } else {
            issue.at(location)
        });
    }

    #[cold]
    fn error_at(&mut self, name: &'a str, code: IssueCode, diagnostics: String) {
        self.path.push(Seg::Name(name));
        self.error(code, diagnostics);
        self.path.pop();
    }

    /// Validates a resource at the current location. `in_contained`: it is itself a
    /// contained resource, which must not contain others.
    pub fn resource(&mut self, value: &'a Value, in_contained: bool) {
        let Value::Object(obj) = value else {
            self.error(
                IssueCode::Structure,
                format!(
                    "Expected a resource (JSON object) but found a {}",
                    json_kind(value)
                ),
            );
            return;
        };
        let resource_type = match member(obj, "resourceType") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                self.error(
                    IssueCode::Structure,
                    format!(
                        "resourceType must be a string, found a {}",
                        json_kind(other)
                    ),
                );
                return;
            }
            None => {
                self.error(
                    IssueCode::Structure,
                    "Missing resourceType: not a FHIR resource".into(),
                );
                return;
            }
        };
        let table = match self.model.types.get(resource_type) {
            Some(info) if info.kind == TypeKind::Resource && !info.is_abstract => info.table,
            _ => None,
        };
        let Some(table) = table else {
            self.error(
                IssueCode::Invalid,
                format!("Unknown resource type '{}'", echo(resource_type)),
            );
            return;
        };
        if self.root.is_none() && self.path.is_empty() {
            self.root = Some(resource_type);
        }
        if in_contained && member(obj, "contained").is_some() {
            self.error_at(
                "contained",
                IssueCode::Structure,
                "A contained resource must not itself contain resources".into(),
            );
        }
        let hooked = self.hooks_live();
        if hooked {
            let at = Location {
                root: self.root,
                path: &self.path,
            };
            self.hooks.enter_resource(value, in_contained, at);
            self.hooks.object(None, table, value, at);
        }
        self.object(obj, table, true);
        if hooked {
            self.hooks.leave_resource();
        }
    }

    /// Whether the hooks' checks can still count: a resource with an extension or a
    /// structural error gets the separate core-definition pass instead, so once the walk
    /// has seen either, checking on the way would be work thrown away.
    #[inline]
    fn hooks_live(&self) -> bool {
        !self.saw_extensions && !self.saw_error
    }

    /// Validates the members of one JSON object against a table.
    fn object(&mut self, obj: &'a Map<String, Value>, table: TableId, is_resource: bool) {
        if obj.is_empty() {
            self.error(IssueCode::Structure, "Empty objects are not allowed (ele-1: All FHIR elements must have a @value or children)".into());
            return;
        }
        let model = self.model;
        let t = &model.tables[table as usize];
        if Some(table) == model.coding_table {
            self.coding_system(obj);
        }
        prefetch_members(obj);
        let has_underscore = obj.keys().any(|k| k.starts_with('_'));
        let choice_start = self.seen_choices.len();

        for (key, value) in obj {
            let key = key.as_str();
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(name) = key.strip_prefix('_') {
                self.saw_extensions = true;
                match t.lookup(name) {
                    Some(el) if matches!(el.kind, ElementKind::Primitive(_)) => {
                        if member(obj, name).is_some() {
                            continue; // checked together with its value
                        }
                        if let Some(g) = el.choice {
                            self.note_choice(el, &t.choices[usize::from(g)].base, choice_start);
                        }
                        self.extension_only(el, value);
                    }
                    _ => self.error_at(
                        key,
                        IssueCode::Structure,
                        format!("Unknown element '{}'", echo(key)),
                    ),
                }
                continue;
            }
            if matches!(key, "extension" | "modifierExtension") {
                self.saw_extensions = true;
            }
            let Some((index, el)) = t.lookup_index(key) else {
                self.error_at(
                    key,
                    IssueCode::Structure,
                    format!("Unknown element '{}'", echo(key)),
                );
                continue;
            };
            if let Some(g) = el.choice {
                self.note_choice(el, &t.choices[usize::from(g)].base, choice_start);
            }
            self.path.push(Seg::Name(&el.name));
            let issues_before = self.issues.len();
            match el.kind {
                ElementKind::Primitive(p) => {
                    let ext = if has_underscore {
                        member(obj, &el.ext_name)
                    } else {
                        None
                    };
                    self.primitive_element(el, p, value, ext);
                }
                ElementKind::Complex(inner) => {
                    self.complex_element(el, (table, index), inner, value)
                }
                ElementKind::Backbone(inner) => {
                    // A contentReference (`Questionnaire.item.item`) reuses the table of
                    // the element it names, and with it that element's rules.
                    self.complex_element(el, (table, index), inner, value)
                }
                ElementKind::Resource => self.resource_element(el, value),
            }
            // A value already reported as malformed is not also reported as a bad code.
            if let Some(b) = el.binding.filter(|_| self.issues.len() == issues_before) {
                self.binding(b, value);
            }
            self.path.pop();
        }

        for &r in &t.required {
            let el = &t.elements[r as usize];
            let present = member(obj, &el.name).is_some()
                || (has_underscore
                    && matches!(el.kind, ElementKind::Primitive(_))
                    && member(obj, &el.ext_name).is_some());
            if !present {
                self.error_at(
                    &el.name,
                    IssueCode::Required,
                    format!("Missing required element '{}'", el.name),
                );
            }
        }
        for &g in &t.required_choices {
            if !self.seen_choices[choice_start..].contains(&g) {
                let base = &t.choices[usize::from(g)].base;
                self.error_at(
                    base,
                    IssueCode::Required,
                    format!("Missing required element '{base}[x]'"),
                );
            }
        }
        self.seen_choices.truncate(choice_start);
    }

    /// Coding.system names a code system by an absolute URI (`http://loinc.org`,
    /// `urn:oid:…`); a bare word (`Location1`) identifies nothing outside the sender.
    fn coding_system(&mut self, obj: &'a Map<String, Value>) {
        if let Some(Value::String(system)) = member(obj, "system") {
            if !system.contains(':') {
                self.error_at(
                    "system",
                    IssueCode::Invalid,
                    format!(
                        "Coding.system must be an absolute URI, not a local reference ('{}')",
                        echo(system)
                    ),
                );
            }
        }
    }

    /// Records that a choice variant is present in the object whose choices start at
    /// `start` on the stack; a second variant of the same group is an error.
    fn note_choice(&mut self, el: &'a ElementInfo, base: &'a str, start: usize) {
        let Some(group) = el.choice else {
            return;
        };
        if self.seen_choices[start..].contains(&group) {
            self.error_at(
                &el.name,
                IssueCode::Structure,
                format!("Only one of the '{base}[x]' choices may be present; found another besides '{}'", el.name),
            );
        } else {
            self.seen_choices.push(group);
        }
    }

    fn primitive_element(
        &mut self,
        el: &'a ElementInfo,
        p: Primitive,
        value: &'a Value,
        ext: Option<&'a Value>,
    ) {
        if el.array {
            let Value::Array(items) = value else {
                self.error(
                    IssueCode::Structure,
                    format!(
                        "Element '{}' repeats and must be a JSON array, found a {}",
                        el.name,
                        json_kind(value)
                    ),
                );
                return;
            };
            if items.is_empty() {
                self.error(IssueCode::Structure, "Empty arrays are not allowed".into());
                return;
            }
            let ext_items = match ext {
                None => None,
                Some(Value::Array(a)) => {
                    if a.len() != items.len() {
                        self.error(
                            IssueCode::Structure,
                            format!(
                                "'_{}' has {} entries but '{}' has {}; the arrays must align",
                                el.name,
                                a.len(),
                                el.name,
                                items.len()
                            ),
                        );
                    }
                    Some(a)
                }
                Some(other) => {
                    self.error(
                        IssueCode::Structure,
                        format!(
                            "'_{}' must be an array aligned with '{}', found a {}",
                            el.name,
                            el.name,
                            json_kind(other)
                        ),
                    );
                    None
                }
            };
            for (i, item) in items.iter().enumerate() {
                self.path.push(Seg::Index(i));
                let item_ext = ext_items.and_then(|a| a.get(i)).filter(|v| !v.is_null());
                if item.is_null() {
                    if item_ext.is_none() {
                        self.error(
                            IssueCode::Structure,
                            "null is only allowed where the matching '_' entry carries an id or extensions".into(),
                        );
                    }
                } else {
                    self.primitive_value(p, item);
                }
                if let Some(e) = item_ext {
                    self.element_extension(e);
                }
                self.path.pop();
            }
        } else {
            match value {
                Value::Array(_) => {
                    self.error(
                        IssueCode::Structure,
                        format!(
                            "Element '{}' has max cardinality 1 and must not be an array",
                            el.name
                        ),
                    );
                    return;
                }
                Value::Null => {
                    self.error(IssueCode::Structure, "null values are not allowed".into())
                }
                _ => self.primitive_value(p, value),
            }
            if let Some(e) = ext {
                self.element_extension(e);
            }
        }
    }

    /// A `_name` with no `name` beside it: allowed only to carry extensions (e.g. a
    /// data-absent-reason in place of the value).
    fn extension_only(&mut self, el: &'a ElementInfo, value: &'a Value) {
        self.path.push(Seg::Name(&el.name));
        if el.array {
            match value {
                Value::Array(items) if !items.is_empty() => {
                    for (i, item) in items.iter().enumerate() {
                        self.path.push(Seg::Index(i));
                        self.extension_only_entry(el, item);
                        self.path.pop();
                    }
                }
                Value::Array(_) => {
                    self.error(IssueCode::Structure, "Empty arrays are not allowed".into())
                }
                other => self.error(
                    IssueCode::Structure,
                    format!(
                        "'_{}' must be an array, found a {}",
                        el.name,
                        json_kind(other)
                    ),
                ),
            }
        } else if value.is_array() {
            self.error(
                IssueCode::Structure,
                format!(
                    "'_{}' has max cardinality 1 and must not be an array",
                    el.name
                ),
            );
        } else {
            self.extension_only_entry(el, value);
        }
        self.path.pop();
    }

    fn extension_only_entry(&mut self, el: &'a ElementInfo, value: &'a Value) {
        let has_extension = value
            .get("extension")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if !has_extension {
            self.error(
                IssueCode::Structure,
                format!(
                    "'_{}' without a value for '{}' must carry extensions",
                    el.name, el.name
                ),
            );
        }
        if value.is_object() {
            self.element_extension(value);
        }
    }

    /// The `_name` sibling content: an `Element` (id + extension).
    fn element_extension(&mut self, value: &'a Value) {
        match value {
            Value::Object(obj) => self.object(obj, self.model.element_table, false),
            other => self.error(
                IssueCode::Structure,
                format!(
                    "Primitive extension content must be an object, found a {}",
                    json_kind(other)
                ),
            ),
        }
    }

    fn primitive_value(&mut self, p: Primitive, value: &'a Value) {
        match (p.json_form(), value) {
            (JsonForm::Bool, Value::Bool(_)) | (JsonForm::Number, Value::Number(_)) => {}
            (JsonForm::Integer, Value::Number(n)) => match n.as_i64() {
                Some(i) if i >= p.min_integer() && i <= i64::from(i32::MAX) => {}
                Some(i) => self.error(
                    IssueCode::Value,
                    format!("The value {i} is out of range for type {}", p.name()),
                ),
                None => self.error(
                    IssueCode::Value,
                    format!(
                        "The value {} is not a valid {} (expected a whole number)",
                        echo(&n.to_string()),
                        p.name()
                    ),
                ),
            },
            (JsonForm::String, Value::String(s)) => {
                if let Err(reason) = check_string(p, s) {
                    self.error(
                        IssueCode::Value,
                        format!(
                            "The value '{}' is not a valid {}: {reason}",
                            echo(s),
                            p.name()
                        ),
                    );
                }
            }
            (form, other) => {
                let expected = match form {
                    JsonForm::Bool => "boolean",
                    JsonForm::Integer => "integer number",
                    JsonForm::Number => "number",
                    JsonForm::String => "string",
                };
                self.error(
                    IssueCode::Structure,
                    format!(
                        "A value of type {} must be a JSON {expected}, found a {}",
                        p.name(),
                        json_kind(other)
                    ),
                );
            }
        }
    }

    fn complex_element(
        &mut self,
        el: &'a ElementInfo,
        via: (TableId, u32),
        table: TableId,
        value: &'a Value,
    ) {
        match (el.array, value) {
            (false, Value::Object(obj)) => {
                self.hook_object(via, table, value);
                self.object(obj, table, false)
            }
            (true, Value::Array(items)) => {
                if items.is_empty() {
                    self.error(IssueCode::Structure, "Empty arrays are not allowed".into());
                }
                for (i, item) in items.iter().enumerate() {
                    self.path.push(Seg::Index(i));
                    match item {
                        Value::Object(obj) => {
                            self.hook_object(via, table, item);
                            self.object(obj, table, false)
                        }
                        other => self.error(
                            IssueCode::Structure,
                            format!(
                                "Expected an object for '{}', found a {}",
                                el.name,
                                json_kind(other)
                            ),
                        ),
                    }
                    self.path.pop();
                }
            }
            (false, Value::Array(_)) => self.error(
                IssueCode::Structure,
                format!(
                    "Element '{}' has max cardinality 1 and must not be an array",
                    el.name
                ),
            ),
            (true, Value::Object(_)) => self.error(
                IssueCode::Structure,
                format!("Element '{}' repeats and must be a JSON array", el.name),
            ),
            (_, other) => self.error(
                IssueCode::Structure,
                format!(
                    "Expected an object for '{}', found a {}",
                    el.name,
                    json_kind(other)
                ),
            ),
        }
    }

    #[inline]
    fn hook_object(&mut self, via: (TableId, u32), table: TableId, value: &'a Value) {
        if self.hooks_live() {
            let at = Location {
                root: self.root,
                path: &self.path,
            };
            self.hooks.object(Some(via), table, value, at);
        }
    }

    fn resource_element(&mut self, el: &'a ElementInfo, value: &'a Value) {
        let contained = &*el.name == "contained";
        match (el.array, value) {
            (true, Value::Array(items)) => {
                if items.is_empty() {
                    self.error(IssueCode::Structure, "Empty arrays are not allowed".into());
                }
                for (i, item) in items.iter().enumerate() {
                    self.path.push(Seg::Index(i));
                    self.resource(item, contained);
                    self.path.pop();
                }
            }
            (true, _) => self.error(
                IssueCode::Structure,
                format!("Element '{}' repeats and must be a JSON array", el.name),
            ),
            (false, Value::Array(_)) => self.error(
                IssueCode::Structure,
                format!(
                    "Element '{}' has max cardinality 1 and must not be an array",
                    el.name
                ),
            ),
            (false, _) => self.resource(value, contained),
        }
    }

    /// Checks a bound element (one value or each entry of an array) against its binding.
    fn binding(&mut self, b: u32, value: &'a Value) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.path.push(Seg::Index(i));
                    self.binding_value(b, item);
                    self.path.pop();
                }
            }
            other => self.binding_value(b, other),
        }
    }

    fn binding_value(&mut self, b: u32, value: &'a Value) {
        let model = self.model;
        if model.terminology.is_none() {
            return;
        }
        let Some(info) = model.bindings.get(b as usize) else {
            return;
        };
        let expansion = model.binding_expansion(b);
        let check = |system: Option<&str>, code: &str| match expansion {
            Some(e) => e.check(system, code),
            None => {
                CodeCheck::CannotCheck(format!("the value set {} is not available", info.value_set))
            }
        };
        let str_of = |v: &'a Value, key: &str| v.get(key).and_then(Value::as_str);
        match info.coded {
            Coded::Code => {
                if let Value::String(code) = value {
                    let result = check(None, code);
                    self.binding_outcome(info.strength, &info.value_set, result, || {
                        format!("'{}'", echo(code))
                    });
                }
            }
            Coded::Coding | Coded::Quantity => {
                let Some(code) = str_of(value, "code") else {
                    return;
                };
                let system = str_of(value, "system");
                let result = check(system, code);
                self.binding_outcome(info.strength, &info.value_set, result, || {
                    show_coding(system, code)
                });
            }
            Coded::CodeableConcept => {
                let codings: Vec<(Option<&str>, &str)> = value
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| Some((str_of(c, "system"), str_of(c, "code")?)))
                    .collect();
                if codings.is_empty() {
                    // Text only: acceptable wherever a code is not required.
                    if info.strength == BindingStrength::Required {
                        let label = self.value_set_label(&info.value_set);
                        self.error(
                            IssueCode::CodeInvalid,
                            format!("No code provided, and a code from the value set {label} is required"),
                        );
                    }
                    return;
                }
                let mut cannot: Option<String> = None;
                for (system, code) in &codings {
                    match check(*system, code) {
                        CodeCheck::Valid => return,
                        CodeCheck::CannotCheck(reason) => {
                            cannot.get_or_insert(reason);
                        }
                        CodeCheck::Invalid => {}
                    }
                }
                let result = match cannot {
                    Some(reason) => CodeCheck::CannotCheck(reason),
                    None => CodeCheck::Invalid,
                };
                self.binding_outcome(info.strength, &info.value_set, result, || {
                    codings
                        .iter()
                        .map(|(s, c)| show_coding(*s, c))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
            }
        }
    }

    fn value_set_label(&self, url: &str) -> String {
        match &self.model.terminology {
            Some(t) => t.value_set_label(url),
            None => format!("'{url}'"),
        }
    }

    /// Turns a membership answer into an issue by binding strength: not a member of a
    /// required value set is an error, of an extensible one a warning; undecidable
    /// membership is a warning (information for preferred bindings), never a silent pass.
    fn binding_outcome(
        &mut self,
        strength: BindingStrength,
        value_set: &str,
        result: CodeCheck,
        shown: impl FnOnce() -> String,
    ) {
        match (result, strength) {
            (CodeCheck::Valid, _) => {}
            (CodeCheck::Invalid, BindingStrength::Required | BindingStrength::Extensible) => {
                let label = self.value_set_label(value_set);
                let severity = if strength == BindingStrength::Required {
                    Severity::Error
                } else {
                    Severity::Warning
                };
                self.report(
                    severity,
                    IssueCode::CodeInvalid,
                    format!(
                        "The code {} is not in the value set {label}, which is {} for this element",
                        shown(),
                        strength.as_str()
                    ),
                );
            }
            (CodeCheck::Invalid, _) => {}
            (CodeCheck::CannotCheck(reason), _) => {
                let label = self.value_set_label(value_set);
                let severity = match strength {
                    BindingStrength::Required | BindingStrength::Extensible => Severity::Warning,
                    _ => Severity::Information,
                };
                self.report(
                    severity,
                    IssueCode::NotFound,
                    format!(
                        "The code {} could not be checked against the value set {label} ({} binding): {reason}",
                        shown(),
                        strength.as_str()
                    ),
                );
            }
        }
    }
}

fn show_coding(system: Option<&str>, code: &str) -> String {
    match system {
        Some(s) => format!("'{}#{}'", echo(s), echo(code)),
        None => format!("'{}'", echo(code)),
    }
}
