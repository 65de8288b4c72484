//! The CapabilityStatement at `/metadata`: exactly what this gateway implements, generated
//! from the same search registry the search path uses.

use caregate_core::RESOURCE_TYPES;
use caregate_search::SearchRegistry;
use serde_json::{json, Value};

/// The operations caregate implements on each resource type.
fn operations_for(resource_type: &str) -> Vec<Value> {
    let mut ops = vec![
        json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}),
    ];
    if resource_type == "Consent" {
        ops.push(json!({"name": "evaluate", "definition": "https://caregate.example.org/fhir/OperationDefinition/Consent-evaluate",
                        "documentation": "The consent decision for a described request, with its basis"}));
    }
    if resource_type == "Patient" {
        ops.push(json!({"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"}));
        ops.push(json!({"name": "care-plan", "definition": "https://caregate.example.org/fhir/OperationDefinition/Patient-care-plan",
                        "documentation": "The person's shared care plan, merged across linked Patients and filtered by consent"}));
        ops.push(json!({"name": "disclosures", "definition": "https://caregate.example.org/fhir/OperationDefinition/Patient-disclosures",
                        "documentation": "Accounting of disclosures, for auditors"}));
        ops.push(json!({"name": "link", "definition": "https://caregate.example.org/fhir/OperationDefinition/Patient-link",
                        "documentation": "Records that another Patient is the same person (a versioned, audited Linkage; needs system/Linkage.cu)"}));
        ops.push(json!({"name": "unlink", "definition": "https://caregate.example.org/fhir/OperationDefinition/Patient-unlink",
                        "documentation": "Records that another Patient is not the same person; beats every matching rule"}));
    }
    ops
}

pub fn capability_statement(
    search: &SearchRegistry,
    base: Option<&str>,
    development_mode: bool,
) -> Value {
    let interactions = json!([
        {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "delete"},
        {"code": "history-instance"}, {"code": "history-type"}, {"code": "create"}, {"code": "search-type"}
    ]);
    let resources: Vec<Value> = RESOURCE_TYPES
        .iter()
        .map(|t| {
            let params: Vec<Value> = search
                .params_for(t)
                .into_iter()
                .map(|p| {
                    json!({
                        "name": p.code,
                        "definition": p.url,
                        "type": p.param_type.code(),
                        "documentation": p.documentation,
                    })
                })
                .collect();
            let mut includes: Vec<Value> = search
                .params_for(t)
                .into_iter()
                .filter(|p| p.param_type.code() == "reference")
                .map(|p| json!(format!("{t}:{}", p.code)))
                .collect();
            includes.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "modified-since",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "local"],
                "searchInclude": includes,
                "searchRevInclude": includes,
                "searchParam": params,
                "operation": operations_for(t),
            })
        })
        .collect();
    let security = if development_mode {
        json!({"cors": false, "description": "Local development mode: unauthenticated requests are accepted on a loopback address only."})
    } else {
        json!({
            "cors": false,
            "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
            "description": "Bearer tokens of registered clients; SMART system scopes (v1 and v2 syntax) are enforced per interaction and resource type."
        })
    };
    let mut implementation = json!({"description": "caregate FHIR R4 gateway"});
    if let Some(b) = base {
        implementation["url"] = json!(b);
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": caregate_core::now_instant().1,
        "publisher": "caregate",
        "kind": "instance",
        "software": {"name": "caregate", "version": env!("CARGO_PKG_VERSION")},
        "implementation": implementation,
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
        "patchFormat": [],
        "rest": [{
            "mode": "server",
            "security": security,
            "resource": resources,
            "interaction": [
                {"code": "transaction"}, {"code": "batch"}, {"code": "search-system"}, {"code": "history-system"}
            ],
            "searchParam": [
                {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
                {"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"},
                {"name": "_type", "type": "token"}
            ]
        }]
    })
}

/// Announces SMART Backend Services in `rest.security`: the `oauth-uris` extension with the
/// token endpoint, and the SMART-on-FHIR service coding.
pub fn add_smart_security(capability: &mut Value, token_url: &str) {
    let Some(security) = capability
        .get_mut("rest")
        .and_then(|r| r.get_mut(0))
        .and_then(|r| r.get_mut("security"))
    else {
        return;
    };
    security["extension"] = json!([{
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [{"url": "token", "valueUri": token_url}]
    }]);
    security["service"] = json!([{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
        "code": "SMART-on-FHIR"
    }]}]);
    security["description"] = json!(
        "SMART Backend Services (client_credentials with private_key_jwt, RS384/ES384; see /.well-known/smart-configuration), static bearer tokens of registered clients, or a registered mutual-TLS client certificate; SMART system scopes (v1 and v2 syntax) are enforced per interaction and resource type."
    );
}
