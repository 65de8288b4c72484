#!/usr/bin/env python3
"""Packs the FHIR R4 core package (hl7.fhir.r4.core 4.0.1) into profiles/r4-core.ndjson.gz.

One resource per line, compact JSON, gzip. Run from the repository root:
    python3 profiles/scripts/pack-core.py ../shared/corpora/profiles/hl7.fhir.r4.core-4.0.1
"""
import gzip, json, os, sys

src = sys.argv[1]
out = os.path.join(os.path.dirname(__file__), "..", "r4-core.ndjson.gz")
names = sorted(n for n in os.listdir(src) if n.endswith(".json") and n != "package.json")
kept = 0
# mtime=0 keeps the archive byte-identical between runs.
with gzip.GzipFile(out, "wb", compresslevel=9, mtime=0) as gz:
    for name in names:
        with open(os.path.join(src, name), encoding="utf-8") as f:
            res = json.load(f)
        if res.get("resourceType") not in ("StructureDefinition", "SearchParameter", "ValueSet", "CodeSystem", "CompartmentDefinition", "OperationDefinition"):
            continue
        # Narrative is for people reading the spec; nothing here evaluates it.
        res.pop("text", None)
        gz.write(json.dumps(res, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n")
        kept += 1
print(f"{kept} resources -> {out} ({os.path.getsize(out)} bytes)")
