//! Lookups by JSON member name, tuned for the short names FHIR uses (`status`, `valueQuantity`).
//!
//! The validator and the search extractor look up every member of every object they walk.
//! With a general-purpose map each lookup hashes the whole name and then calls `memcmp` to
//! confirm the hit; for names of a few bytes the call costs more than the comparison. Here a
//! name of up to 16 bytes is read as two (possibly overlapping) machine words, which both
//! hash it and, compared with the stored words, decide equality without a call.

/// The bytes of `b` as two words that together cover every byte: for 8–16 bytes the first
/// and last eight, for 4–7 the first and last four, for 1–3 the first, middle and last byte.
/// Two strings of the same length ≤ 16 are equal exactly when their words are.
#[inline(always)]
fn words(b: &[u8]) -> (u64, u64) {
    let n = b.len();
    if n >= 8 {
        let mut first = [0u8; 8];
        let mut last = [0u8; 8];
        first.copy_from_slice(&b[..8]);
        last.copy_from_slice(&b[n - 8..]);
        (u64::from_le_bytes(first), u64::from_le_bytes(last))
    } else if n >= 4 {
        let mut first = [0u8; 4];
        let mut last = [0u8; 4];
        first.copy_from_slice(&b[..4]);
        last.copy_from_slice(&b[n - 4..]);
        (
            u64::from(u32::from_le_bytes(first)),
            u64::from(u32::from_le_bytes(last)),
        )
    } else if n > 0 {
        (
            u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
            0,
        )
    } else {
        (0, 0)
    }
}

/// `a == b`, without a library call for strings of up to 16 bytes.
#[inline(always)]
pub fn short_eq(a: &str, b: &str) -> bool {
    short_eq_bytes(a.as_bytes(), b.as_bytes())
}

/// [`short_eq`] on bytes.
#[inline(always)]
pub fn short_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 16 {
        words(a) == words(b)
    } else {
        a == b
    }
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// The slot-choosing hash of a name whose [`words`] are `w0`, `w1`.
#[inline(always)]
fn hash(b: &[u8], w0: u64, w1: u64) -> u64 {
    let mut h = (w0.rotate_left(5) ^ (b.len() as u64)).wrapping_mul(SEED);
    h = (h.rotate_left(5) ^ w1).wrapping_mul(SEED);
    if b.len() > 16 {
        // Long names: the middle bytes count too, eight at a time.
        for chunk in b[8..b.len() - 8].chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(SEED);
        }
    }
    h
}

/// A stored name's words and length, which decide equality for names of up to 16 bytes
/// without reading the name, and its value. `key` is the name's index in
/// [`KeyIndex::keys`] plus one (so an empty slot costs no extra tag).
#[derive(Debug, Clone)]
struct Slot<V> {
    w0: u64,
    w1: u64,
    len: u32,
    key: std::num::NonZeroU32,
    value: V,
}

/// A read-mostly map from names to values, built once and looked up on every walk.
/// Open addressing over a power-of-two table at most half full; a probe compares the
/// name's words held in the slot, so a lookup reads one slot, not the stored name (for
/// names longer than 16 bytes it compares the whole name too).
#[derive(Debug, Clone)]
pub struct KeyIndex<V> {
    slots: Box<[Option<Slot<V>>]>,
    keys: Vec<Box<str>>,
}

impl<V> Default for KeyIndex<V> {
    fn default() -> Self {
        KeyIndex {
            slots: Box::new([]),
            keys: Vec::new(),
        }
    }
}

impl<V> KeyIndex<V> {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The slot holding `key`, or the empty slot where it would go.
    #[inline(always)]
    fn find(&self, key: &str) -> usize {
        let b = key.as_bytes();
        let (w0, w1) = words(b);
        let mask = self.slots.len() - 1;
        // The high bits pick the slot: they depend on every input bit.
        let mut i = (hash(b, w0, w1) >> 32) as usize & mask;
        loop {
            match &self.slots[i] {
                None => return i,
                Some(s)
                    if s.w0 == w0
                        && s.w1 == w1
                        && s.len as usize == b.len()
                        && (b.len() <= 16
                            || self
                                .keys
                                .get(s.key.get() as usize - 1)
                                .is_some_and(|k| k.as_bytes() == b)) =>
                {
                    return i
                }
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// The value stored under `key`.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&V> {
        if self.slots.is_empty() {
            return None;
        }
        self.slots[self.find(key)].as_ref().map(|s| &s.value)
    }

    /// The stored copy of `key` and its value.
    #[inline]
    pub fn get_key_value(&self, key: &str) -> Option<(&str, &V)> {
        if self.slots.is_empty() {
            return None;
        }
        let s = self.slots[self.find(key)].as_ref()?;
        Some((self.keys.get(s.key.get() as usize - 1)?, &s.value))
    }

    #[inline]
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Stores `value` under `key`; returns the value it replaces.
    pub fn insert(&mut self, key: Box<str>, value: V) -> Option<V> {
        if (self.keys.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let i = self.find(&key);
        if let Some(s) = &mut self.slots[i] {
            return Some(std::mem::replace(&mut s.value, value));
        }
        let (w0, w1) = words(key.as_bytes());
        // At most 2^31 names fit a table at most half full of 2^32 slots.
        let index = u32::try_from(self.keys.len() + 1)
            .ok()
            .and_then(std::num::NonZeroU32::new)
            .expect("fewer than 2^32 names");
        self.slots[i] = Some(Slot {
            w0,
            w1,
            len: key.len() as u32,
            key: index,
            value,
        });
        self.keys.push(key);
        None
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(8);
        let old = std::mem::replace(
            &mut self.slots,
            std::iter::repeat_with(|| None).take(size).collect(),
        );
        let mut keys = std::mem::take(&mut self.keys);
        let mut entries: Vec<(usize, V)> = old
            .into_vec()
            .into_iter()
            .flatten()
            .map(|s| (s.key.get() as usize - 1, s.value))
            .collect();
        // Re-inserted in the original order, so each keeps its index.
        entries.sort_by_key(|(k, _)| *k);
        for (k, value) in entries {
            let key = std::mem::take(&mut keys[k]);
            self.insert(key, value);
        }
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|s| Some((&**self.keys.get(s.key.get() as usize - 1)?, &s.value)))
    }
}

impl<V> FromIterator<(Box<str>, V)> for KeyIndex<V> {
    fn from_iter<I: IntoIterator<Item = (Box<str>, V)>>(iter: I) -> Self {
        let mut index = KeyIndex::default();
        for (k, v) in iter {
            index.insert(k, v);
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_agrees_with_the_library_for_every_length() {
        let base = "abcdefghijklmnopqrstuvwxyz0123456789";
        for n in 0..=base.len() {
            let a = &base[..n];
            assert!(short_eq(a, a));
            // A difference at any single position is seen.
            for p in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[p] = b'#';
                let b = String::from_utf8(b).unwrap_or_default();
                assert!(!short_eq(a, &b), "{a:?} vs {b:?}");
            }
            // Different lengths never compare equal.
            if n > 0 {
                assert!(!short_eq(a, &base[..n - 1]));
            }
        }
        assert!(short_eq("", ""));
        assert!(!short_eq("a", ""));
    }

    #[test]
    fn finds_what_was_inserted_and_nothing_else() {
        let names: Vec<String> = (0..500).map(|i| format!("element{i}")).collect();
        let mut index = KeyIndex::default();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(index.insert(n.as_str().into(), i), None);
        }
        assert_eq!(index.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(index.get(n), Some(&i), "{n}");
        }
        for missing in ["", "element", "element500", "Element1", "element1 ", "e"] {
            assert_eq!(index.get(missing), None, "{missing}");
        }
        assert_eq!(index.insert("element7".into(), 70), Some(7));
        assert_eq!(index.get("element7"), Some(&70));
        assert_eq!(index.iter().count(), names.len());
        // Names longer than 16 bytes, differing only in the middle.
        let mut long = KeyIndex::default();
        long.insert("aaaaaaaaXaaaaaaaaaaaaaaa".into(), 1);
        long.insert("aaaaaaaaYaaaaaaaaaaaaaaa".into(), 2);
        assert_eq!(long.get("aaaaaaaaXaaaaaaaaaaaaaaa"), Some(&1));
        assert_eq!(long.get("aaaaaaaaYaaaaaaaaaaaaaaa"), Some(&2));
        assert_eq!(long.get("aaaaaaaaZaaaaaaaaaaaaaaa"), None);
        assert_eq!(KeyIndex::<u8>::default().get("x"), None);
        // Names whose words agree but whose lengths differ ("ab" reads as a, b, b).
        let mut short = KeyIndex::default();
        short.insert("ab".into(), 1);
        assert_eq!(short.get("abb"), None);
        short.insert("abb".into(), 2);
        assert_eq!((short.get("ab"), short.get("abb")), (Some(&1), Some(&2)));
        assert_eq!(short.get_key_value("abb"), Some(("abb", &2)));
    }
}
