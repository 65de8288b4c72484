use caregate_format::*;
#[test]
fn scratch() {
    eprintln!("A {:?}", xml_to_json("<Patient><active value=\"true\"/></Patient>"));
    eprintln!("B {:?}", xml_to_json("<Patinet xmlns=\"http://hl7.org/fhir\"/>"));
    eprintln!("C {:?}", json_to_xml(&serde_json::json!({"resourceType": "Patient", "foo": 1})));
    eprintln!("D {:?}", json_to_xml(&serde_json::json!({"resourceType": "Nope"})));
    eprintln!("E {:?}", xml_to_json("<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">Hello <b>big</b> <!-- c --> world</div></text></Patient>"));
    let v = serde_json::json!({"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Hello <b>big</b> world</div>"},"active":true});
    eprintln!("F {}", json_to_xml(&v).unwrap());
}
