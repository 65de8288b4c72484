#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ with seeds from ../shared/corpora (HL7 examples, the HL7
FHIRPath suite, validator test files, Synthea). Run from the repository root or fuzz/."""
import json, os, pathlib, hashlib

here = pathlib.Path(__file__).resolve().parent
shared = (here / ".." / ".." / "shared" / "corpora").resolve()
corpus = here / "corpus"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def small_json_files():
    for sub in ["examples/r4-spec", "examples/mcc-ig", "validator/files", "fhirpath/inputs"]:
        for p in sorted((shared / sub).rglob("*.json")):
            if p.stat().st_size <= 64 * 1024:
                yield p


for p in small_json_files():
    put("ingest_json", p.read_bytes())
for p in sorted((shared / "validator/files").rglob("*.xml")):
    if p.stat().st_size <= 64 * 1024:
        put("ingest_xml", p.read_bytes())

suite = json.loads((shared / "fhirpath/tests.json").read_text())
inputs = {}
for t in suite["tests"]:
    f = t.get("input_file")
    if f and f not in inputs:
        path = shared / "fhirpath" / f
        inputs[f] = path.read_text() if path.exists() and path.stat().st_size < 32 * 1024 else ""
    put("fhirpath", t["expression"] + "\n" + inputs.get(f, ""))

for q in [
    "Patient?family=smith&given:exact=Ann&birthdate=ge1970-01-01&_sort=-birthdate&_count=10",
    "Patient?identifier=http://hospital.example.org|123&_include=Patient:organization",
    "Observation?code=http://loinc.org|44249-1&value-quantity=lt10||{score}&subject:Patient.name=x",
    "CarePlan?subject=Patient/1&status=active,draft&_revinclude:iterate=Provenance:target",
    "Condition?_has:Encounter:subject:status=finished&onset-date=ap2020-05&_summary=count",
    "?_type=Patient,CarePlan&_lastUpdated=gt2024-01-01T00:00:00Z&_elements=id,meta",
    "Encounter?date=le2020&_total=accurate&patient.general-practitioner:missing=true",
    "MedicationRequest?medication.code:text=sertraline&_sort=authoredon,-_id&_count=0",
]:
    put("search_params", q)

entries = []
for p in sorted((shared / "examples/synthea").glob("*.json"))[:3]:
    b = json.loads(p.read_text())
    small = dict(b)
    small["entry"] = b.get("entry", [])[:6]
    put("transaction", json.dumps(small))
put("transaction", json.dumps({
    "resourceType": "Bundle", "type": "transaction",
    "entry": [
        {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "1"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|1"}},
        {"resource": {"resourceType": "CarePlan", "status": "active", "intent": "plan",
                      "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
         "request": {"method": "PUT", "url": "CarePlan?subject.identifier=urn:mrn|1"}},
        {"request": {"method": "DELETE", "url": "Goal?lifecycle-status=cancelled"}},
        {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|1"}},
    ]}))
put("transaction", json.dumps({"resourceType": "Bundle", "type": "batch", "entry": [
    {"resource": {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"},
                  "subject": {"reference": "Patient/missing"}},
     "request": {"method": "POST", "url": "Goal"}},
    {"request": {"method": "GET", "url": "Goal/x/_history/1"}}]}))
for target in sorted(os.listdir(corpus)):
    print(target, len(os.listdir(corpus / target)))
