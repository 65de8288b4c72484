//! End-to-end: `$validate` (type and instance level) and the full validator on the write
//! path (400 for structure, 422 for profiles and invariants, configured required profiles).

mod support;

use caregate_server::RequiredProfile;
use serde_json::{json, Value};
use support::{first_expression, TestServer};

const CAREPLAN_PROFILE: &str = "http://caregate.example/fhir/StructureDefinition/caregate-careplan";

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann Smith</div>"},
        "name": [{"family": "Smith", "given": ["Ann"]}],
        "gender": "female",
        "birthDate": "1980-02-03"
    })
}

fn bad_encounter() -> Value {
    json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": "2020-02-01", "end": "2020-01-01"}})
}

fn errors(oo: &Value) -> Vec<&Value> {
    oo["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| matches!(i["severity"].as_str(), Some("error" | "fatal")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_operation_type_and_instance_level() {
    let s = TestServer::start().await;
    // A valid resource: 200, a single information issue.
    let r = s.post("Patient/$validate", &patient()).await;
    assert_eq!(r.status(), 200);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"].as_array().map(Vec::len), Some(1), "{oo}");
    assert_eq!(oo["issue"][0]["severity"], "information");
    assert_eq!(oo["issue"][0]["diagnostics"], "All OK");

    // An invariant violation is reported (still 200), located by FHIRPath.
    let r = s.post("Encounter/$validate", &bad_encounter()).await;
    assert_eq!(r.status(), 200);
    let oo: Value = r.json().await.unwrap();
    let errs = errors(&oo);
    assert_eq!(errs.len(), 1, "{oo}");
    assert_eq!(errs[0]["code"], "invariant");
    assert_eq!(errs[0]["expression"][0], "Encounter.period");
    assert!(errs[0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .contains("per-1"));

    // Parameters form with a profile: the caregate CarePlan profile wants a category.
    let plan = json!({"resourceType": "CarePlan", "status": "draft", "intent": "plan",
        "subject": {"reference": "Patient/1"}});
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": plan},
        {"name": "profile", "valueUri": CAREPLAN_PROFILE},
        {"name": "mode", "valueCode": "create"}]});
    let r = s.post("CarePlan/$validate", &params).await;
    assert_eq!(r.status(), 200);
    let oo: Value = r.json().await.unwrap();
    assert!(!errors(&oo).is_empty(), "{oo}");
    // Without the profile the same CarePlan has no errors.
    let r = s.post("CarePlan/$validate", &plan).await;
    let oo: Value = r.json().await.unwrap();
    assert!(errors(&oo).is_empty(), "{oo}");
    // An unknown profile is an error.
    let r = s
        .post(
            "CarePlan/$validate?profile=http://example.org/StructureDefinition/nope",
            &plan,
        )
        .await;
    let oo: Value = r.json().await.unwrap();
    assert!(errors(&oo).iter().any(|i| i["code"] == "not-found"), "{oo}");

    // Instance level: the id must match; an unknown mode is refused.
    let mut p = patient();
    p["id"] = json!("p1");
    let r = s.post("Patient/p1/$validate", &p).await;
    assert_eq!(r.status(), 200);
    let r = s.post("Patient/p2/$validate", &p).await;
    assert_eq!(r.status(), 400);
    let r = s.post("Patient/$validate?mode=bogus", &p).await;
    assert_eq!(r.status(), 400);
    // Nothing was stored.
    let b = s.get_json("Patient").await;
    assert_eq!(b["total"], 0, "{b}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn write_path_uses_the_full_validator() {
    let s = TestServer::start().await;
    // Structure: 400.
    let mut p = patient();
    p["nickname"] = json!("x");
    let r = s.post("Patient", &p).await;
    assert_eq!(r.status(), 400);
    // Invariant: 422, nothing stored.
    let r = s.post("Encounter", &bad_encounter()).await;
    assert_eq!(r.status(), 422);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(first_expression(&errors_only(&oo)), "Encounter.period");
    // A claimed profile that is not loaded: 422.
    let mut p = patient();
    p["meta"] = json!({"profile": ["http://example.org/StructureDefinition/unknown"]});
    let r = s.post("Patient", &p).await;
    assert_eq!(r.status(), 422);
    // A local extension is only a warning by default.
    let mut p = patient();
    p["extension"] = json!([{"url": "http://ehr.example.org/fhir/ext/x", "valueString": "y"}]);
    let r = s.post("Patient", &p).await;
    assert_eq!(r.status(), 201);
    s.stop().await;
}

fn errors_only(oo: &Value) -> Value {
    json!({"issue": errors(oo)})
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_profiles_are_required() {
    let s = TestServer::start_with(|c| {
        c.validation.require.push(RequiredProfile {
            client: None,
            resource: "CarePlan".into(),
            profile: CAREPLAN_PROFILE.into(),
        });
        c.validation.unknown_extension = "error".into();
    })
    .await;
    let plan = json!({"resourceType": "CarePlan", "status": "draft", "intent": "plan",
        "subject": {"reference": "Patient/1"}});
    let r = s.post("CarePlan", &plan).await;
    assert_eq!(r.status(), 422);
    let mut ok = plan.clone();
    ok["category"] = json!([{"text": "x"}]);
    let r = s.post("CarePlan", &ok).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    // unknown_extension = "error"
    let mut p = patient();
    p["extension"] = json!([{"url": "http://ehr.example.org/fhir/ext/x", "valueString": "y"}]);
    let r = s.post("Patient", &p).await;
    assert_eq!(r.status(), 422);
    s.stop().await;
}

#[test]
fn validation_config_parses_and_is_checked() {
    let c = caregate_server::ServerConfig::from_toml(
        r#"
[validation]
unknown_profile = "warning"
unknown_extension = "error"
ig = ["a.tgz"]

[[validation.require]]
resource = "CarePlan"
profile = "http://example.org/p"
"#,
    )
    .expect("parses");
    assert_eq!(c.validation.unknown_profile, "warning");
    assert_eq!(c.validation.ig.len(), 1);
    assert_eq!(c.validation.require[0].resource, "CarePlan");
    assert!(
        caregate_server::ServerConfig::from_toml("[validation]\nunknown_profile = \"maybe\"")
            .is_err()
    );
    assert!(caregate_server::ServerConfig::from_toml(
        "[[validation.require]]\nresource = \"Careplan\"\nprofile = \"x\""
    )
    .is_err());
    assert!(caregate_server::ServerConfig::from_toml(
        "[[validation.require]]\nclient = \"nobody\"\nresource = \"CarePlan\"\nprofile = \"x\""
    )
    .is_err());
    let d = caregate_server::ServerConfig::default();
    assert_eq!(d.validation.unknown_profile, "error");
    assert_eq!(d.validation.unknown_extension, "warning");
}
