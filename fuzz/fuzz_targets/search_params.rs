//! The search-parameter parser: `Type?query` (or `?query` for a system search) as a client
//! sends it, decoded as the server decodes it, parsed strictly and leniently.
#![no_main]

use std::sync::OnceLock;

use caregate_search::SearchRegistry;
use caregate_validation::Package;
use libfuzzer_sys::fuzz_target;

fn registry() -> &'static SearchRegistry {
    static R: OnceLock<SearchRegistry> = OnceLock::new();
    R.get_or_init(|| SearchRegistry::from_definitions(Package::r4_core().of_type("SearchParameter")))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (resource_type, query) = text.split_once('?').unwrap_or((text, ""));
    let resource_type = (!resource_type.is_empty()).then_some(resource_type);
    let params: Vec<(String, String)> = form_pairs(query);
    for strict in [true, false] {
        let _ = registry().parse(resource_type, &params, strict);
    }
});

fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
