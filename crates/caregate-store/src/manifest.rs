//! A resource's search-index rows, listed in one `resource_ix` row.
//!
//! The index tables are clustered on `(param, value, rid)` for searching. Finding one
//! resource's rows there took a second B-tree per table, `(rid, param)`, and inserting into
//! it was a sixth of the writer's time on an import. The list answers the questions that
//! B-tree answered: which rows to delete when the resource changes, a resource's sort key
//! for `_sort`, whether it has a value for `:missing`, and its references for `_include`.
//!
//! Each row is its table's key columns (the `rid` aside): a kind byte ([`IndexKind`] as
//! [`kind_tag`]), the parameter id as a LEB128 varint, then the values; text is a varint
//! length and UTF-8 bytes, integers and reals 8 little-endian bytes.

use crate::index::IndexKind;

/// One index row, as its table keys it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Row<'a> {
    String {
        norm: &'a str,
        exact: &'a str,
    },
    Token {
        code: &'a str,
        system: &'a str,
    },
    Reference {
        tid: &'a str,
        ttype: &'a str,
        url: &'a str,
    },
    Date {
        lo: i64,
        hi: i64,
    },
    Number(f64),
    Quantity {
        value: f64,
        system: &'a str,
        code: &'a str,
        unit: &'a str,
    },
    Uri(&'a str),
}

impl<'a> Row<'a> {
    pub(crate) fn kind(&self) -> IndexKind {
        match self {
            Row::String { .. } => IndexKind::String,
            Row::Token { .. } => IndexKind::Token,
            Row::Reference { .. } => IndexKind::Reference,
            Row::Date { .. } => IndexKind::Date,
            Row::Number(_) => IndexKind::Number,
            Row::Quantity { .. } => IndexKind::Quantity,
            Row::Uri(_) => IndexKind::Uri,
        }
    }

    /// The value `_sort` orders by (the column the old `(rid, param)` lookups aggregated):
    /// a date sorts by its start ascending and by its end descending.
    fn sort_value(&self, descending: bool) -> SortValue<'a> {
        match *self {
            Row::String { norm, .. } => SortValue::Text(norm),
            Row::Token { code, .. } => SortValue::Text(code),
            Row::Reference { tid, .. } => SortValue::Text(tid),
            Row::Date { lo, hi } => SortValue::Int(if descending { hi } else { lo }),
            Row::Number(value) | Row::Quantity { value, .. } => SortValue::Real(value),
            Row::Uri(uri) => SortValue::Text(uri),
        }
    }
}

/// The small integer a kind is stored as, here and in SQL that calls the functions below.
pub(crate) fn kind_tag(kind: IndexKind) -> u8 {
    match kind {
        IndexKind::String => 0,
        IndexKind::Token => 1,
        IndexKind::Reference => 2,
        IndexKind::Date => 3,
        IndexKind::Number => 4,
        IndexKind::Quantity => 5,
        IndexKind::Uri => 6,
    }
}

pub(crate) fn kind_of_tag(tag: u8) -> Option<IndexKind> {
    Some(match tag {
        0 => IndexKind::String,
        1 => IndexKind::Token,
        2 => IndexKind::Reference,
        3 => IndexKind::Date,
        4 => IndexKind::Number,
        5 => IndexKind::Quantity,
        6 => IndexKind::Uri,
        _ => return None,
    })
}

/// A list that does not decode: the database was changed by something other than caregate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a resource's index row list is corrupt at byte {0}")]
pub(crate) struct Corrupt(pub usize);

/// Builds a resource's list, one row at a time.
#[derive(Default)]
pub(crate) struct Manifest {
    bytes: Vec<u8>,
}

impl Manifest {
    pub(crate) fn push(&mut self, param: i64, row: &Row<'_>) {
        self.bytes.push(kind_tag(row.kind()));
        self.varint(param as u64);
        match *row {
            Row::String { norm, exact } => {
                self.text(norm);
                self.text(exact);
            }
            Row::Token { code, system } => {
                self.text(code);
                self.text(system);
            }
            Row::Reference { tid, ttype, url } => {
                self.text(tid);
                self.text(ttype);
                self.text(url);
            }
            Row::Date { lo, hi } => {
                self.bytes.extend_from_slice(&lo.to_le_bytes());
                self.bytes.extend_from_slice(&hi.to_le_bytes());
            }
            Row::Number(value) => self.bytes.extend_from_slice(&value.to_le_bytes()),
            Row::Quantity {
                value,
                system,
                code,
                unit,
            } => {
                self.bytes.extend_from_slice(&value.to_le_bytes());
                self.text(system);
                self.text(code);
                self.text(unit);
            }
            Row::Uri(uri) => self.text(uri),
        }
    }

    /// The stored form: `None` for a resource without index rows.
    pub(crate) fn finish(self) -> Option<Vec<u8>> {
        (!self.bytes.is_empty()).then_some(self.bytes)
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.bytes.push(v as u8);
    }

    fn text(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
    }
}

/// The rows of a stored list, with their parameter ids.
pub(crate) fn rows(blob: &[u8]) -> Rows<'_> {
    Rows { blob, at: 0 }
}

pub(crate) struct Rows<'a> {
    blob: &'a [u8],
    at: usize,
}

impl<'a> Rows<'a> {
    fn byte(&mut self) -> Result<u8, Corrupt> {
        let b = *self.blob.get(self.at).ok_or(Corrupt(self.at))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, Corrupt> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Corrupt(self.at))
    }

    fn eight(&mut self) -> Result<[u8; 8], Corrupt> {
        let bytes = self
            .blob
            .get(self.at..self.at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .ok_or(Corrupt(self.at))?;
        self.at += 8;
        Ok(bytes)
    }

    fn text(&mut self) -> Result<&'a str, Corrupt> {
        let len = usize::try_from(self.varint()?).map_err(|_| Corrupt(self.at))?;
        let end = self.at.checked_add(len).ok_or(Corrupt(self.at))?;
        let bytes = self.blob.get(self.at..end).ok_or(Corrupt(self.at))?;
        let s = std::str::from_utf8(bytes).map_err(|_| Corrupt(self.at))?;
        self.at = end;
        Ok(s)
    }

    fn header(&mut self) -> Result<(IndexKind, i64), Corrupt> {
        let start = self.at;
        let kind = kind_of_tag(self.byte()?).ok_or(Corrupt(start))?;
        let param = i64::try_from(self.varint()?).map_err(|_| Corrupt(start))?;
        Ok((kind, param))
    }

    /// Steps over a row's values without decoding them.
    fn skip(&mut self, kind: IndexKind) -> Result<(), Corrupt> {
        let (texts, fixed) = match kind {
            IndexKind::String | IndexKind::Token => (2, 0),
            IndexKind::Reference => (3, 0),
            IndexKind::Date => (0, 16),
            IndexKind::Number => (0, 8),
            IndexKind::Quantity => (3, 8),
            IndexKind::Uri => (1, 0),
        };
        self.at = self.at.checked_add(fixed).ok_or(Corrupt(self.at))?;
        for _ in 0..texts {
            let len = usize::try_from(self.varint()?).map_err(|_| Corrupt(self.at))?;
            self.at = self.at.checked_add(len).ok_or(Corrupt(self.at))?;
        }
        if self.at > self.blob.len() {
            return Err(Corrupt(self.blob.len()));
        }
        Ok(())
    }

    /// The next row of `kind` for one of `params`, stepping over the others undecoded.
    fn next_of(&mut self, kind: IndexKind, params: &[i64]) -> Option<Result<Row<'a>, Corrupt>> {
        while self.at < self.blob.len() {
            let found = self.header().and_then(|(k, p)| {
                if k == kind && params.contains(&p) {
                    self.values(k).map(Some)
                } else {
                    self.skip(k).map(|()| None)
                }
            });
            match found {
                Ok(Some(row)) => return Some(Ok(row)),
                Ok(None) => {}
                Err(e) => {
                    self.at = self.blob.len();
                    return Some(Err(e));
                }
            }
        }
        None
    }

    fn row(&mut self) -> Result<(i64, Row<'a>), Corrupt> {
        let (kind, param) = self.header()?;
        Ok((param, self.values(kind)?))
    }

    fn values(&mut self, kind: IndexKind) -> Result<Row<'a>, Corrupt> {
        let row = match kind {
            IndexKind::String => Row::String {
                norm: self.text()?,
                exact: self.text()?,
            },
            IndexKind::Token => Row::Token {
                code: self.text()?,
                system: self.text()?,
            },
            IndexKind::Reference => Row::Reference {
                tid: self.text()?,
                ttype: self.text()?,
                url: self.text()?,
            },
            IndexKind::Date => Row::Date {
                lo: i64::from_le_bytes(self.eight()?),
                hi: i64::from_le_bytes(self.eight()?),
            },
            IndexKind::Number => Row::Number(f64::from_le_bytes(self.eight()?)),
            IndexKind::Quantity => Row::Quantity {
                value: f64::from_le_bytes(self.eight()?),
                system: self.text()?,
                code: self.text()?,
                unit: self.text()?,
            },
            IndexKind::Uri => Row::Uri(self.text()?),
        };
        Ok(row)
    }
}

impl<'a> Iterator for Rows<'a> {
    type Item = Result<(i64, Row<'a>), Corrupt>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.blob.len() {
            return None;
        }
        let row = self.row();
        if row.is_err() {
            // Nothing after a corrupt row can be trusted.
            self.at = self.blob.len();
        }
        Some(row)
    }
}

/// A sort key, typed as the index column it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SortValue<'a> {
    Text(&'a str),
    Int(i64),
    Real(f64),
}

impl SortValue<'_> {
    fn before(&self, other: &Self) -> bool {
        match (self, other) {
            // SQLite's BINARY collation: bytewise, as `str`'s order.
            (SortValue::Text(a), SortValue::Text(b)) => a < b,
            (SortValue::Int(a), SortValue::Int(b)) => a < b,
            (SortValue::Real(a), SortValue::Real(b)) => a < b,
            _ => false,
        }
    }
}

/// The resource's sort key over the rows of `params`: the smallest of their values
/// ascending, the largest descending (so a patient with two names sorts by the name that
/// comes first in the requested direction). `None` when it has no value.
pub(crate) fn sort_key<'b>(
    blob: &'b [u8],
    kind: IndexKind,
    params: &[i64],
    descending: bool,
) -> Result<Option<SortValue<'b>>, Corrupt> {
    let mut best: Option<SortValue<'_>> = None;
    let mut rows = rows(blob);
    while let Some(row) = rows.next_of(kind, params) {
        let v = row?.sort_value(descending);
        let better = match &best {
            None => true,
            Some(b) if descending => b.before(&v),
            Some(b) => v.before(b),
        };
        if better {
            best = Some(v);
        }
    }
    Ok(best)
}

/// Whether the resource has any value for a parameter.
pub(crate) fn has(blob: &[u8], kind: IndexKind, param: i64) -> Result<bool, Corrupt> {
    rows(blob)
        .next_of(kind, &[param])
        .transpose()
        .map(|row| row.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut m = Manifest::default();
        m.push(
            3,
            &Row::String {
                norm: "smith",
                exact: "Smith",
            },
        );
        m.push(
            3,
            &Row::String {
                norm: "jones",
                exact: "Jones",
            },
        );
        m.push(
            200,
            &Row::Reference {
                tid: "p1",
                ttype: "Patient",
                url: "",
            },
        );
        m.push(7, &Row::Date { lo: -5, hi: 10 });
        m.push(7, &Row::Date { lo: 1, hi: 4 });
        m.push(
            9,
            &Row::Quantity {
                value: 1.5,
                system: "http://unitsofmeasure.org",
                code: "mg",
                unit: "mg",
            },
        );
        m.push(9, &Row::Number(-2.0));
        m.push(
            300_000,
            &Row::Token {
                code: "ä",
                system: "",
            },
        );
        m.push(1, &Row::Uri("http://x"));
        m.finish().expect("rows")
    }

    #[test]
    fn rows_come_back_as_written() {
        let blob = sample();
        let back: Vec<(i64, Row<'_>)> = rows(&blob).collect::<Result<_, _>>().expect("decodes");
        assert_eq!(back.len(), 9);
        assert_eq!(
            back[2],
            (
                200,
                Row::Reference {
                    tid: "p1",
                    ttype: "Patient",
                    url: ""
                }
            )
        );
        assert_eq!(back[3], (7, Row::Date { lo: -5, hi: 10 }));
        assert_eq!(
            back[7],
            (
                300_000,
                Row::Token {
                    code: "ä",
                    system: ""
                }
            )
        );
        assert_eq!(back[8], (1, Row::Uri("http://x")));
        assert_eq!(Manifest::default().finish(), None);
    }

    #[test]
    fn sort_keys_take_the_extreme_in_the_direction() {
        let blob = sample();
        let key = |kind, param, desc| sort_key(&blob, kind, &[param], desc).expect("decodes");
        assert_eq!(
            key(IndexKind::String, 3, false),
            Some(SortValue::Text("jones"))
        );
        assert_eq!(
            key(IndexKind::String, 3, true),
            Some(SortValue::Text("smith"))
        );
        assert_eq!(key(IndexKind::Date, 7, false), Some(SortValue::Int(-5)));
        assert_eq!(key(IndexKind::Date, 7, true), Some(SortValue::Int(10)));
        // Same parameter id, other kinds: each kind sorts by its own rows.
        assert_eq!(key(IndexKind::Number, 9, true), Some(SortValue::Real(-2.0)));
        assert_eq!(
            key(IndexKind::Quantity, 9, true),
            Some(SortValue::Real(1.5))
        );
        assert_eq!(key(IndexKind::String, 4, false), None);
        // Over several parameters: the extreme among all their rows.
        assert_eq!(
            sort_key(&blob, IndexKind::String, &[4, 3], true).expect("decodes"),
            Some(SortValue::Text("smith"))
        );
        assert!(has(&blob, IndexKind::Reference, 200).expect("decodes"));
        assert!(!has(&blob, IndexKind::Token, 200).expect("decodes"));
    }

    #[test]
    fn a_damaged_list_is_an_error_not_a_panic() {
        let blob = sample();
        for cut in 0..blob.len() {
            let _ = rows(&blob[..cut]).count();
            let _ = sort_key(&blob[..cut], IndexKind::Uri, &[1], false);
        }
        let mut bad = blob.clone();
        bad[0] = 42;
        assert_eq!(rows(&bad).next(), Some(Err(Corrupt(0))));
        let truncated = &blob[..blob.len() - 1];
        assert!(rows(truncated).any(|r| r.is_err()));
    }
}
