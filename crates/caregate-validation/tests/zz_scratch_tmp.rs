use caregate_validation::Registry;
use serde_json::Value;
#[test]
fn scratch() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/validator/files");
    for (f, deps) in [("obs-mz.json", vec![]), ("slice23/StructureDefinition-Slice23-original.json", vec!["slice23/StructureDefinition-OtherId.json"]), ("ext-derived.json", vec!["ext-base.json"])] {
        let mut b = Registry::builder();
        for d in deps { let _ = b.load_path(&dir.join(d)); }
        let reg = b.build();
        let sd: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap();
        let r = reg.generate_snapshot(&sd);
        eprintln!("{f}: {:?}", r.map(|e| e.len()));
    }
}
