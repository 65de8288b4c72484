//! The SQLite store on a real file: versions, conflicts, atomic commits, search, history.

use std::sync::Arc;

use caregate_core::parse_date_range;
use caregate_store::*;

trait CommitOps {
    fn commit_ops(&self, ops: Vec<WriteOp>) -> Result<(), StoreError>;
}

impl<S: Store + ?Sized> CommitOps for S {
    fn commit_ops(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.commit(ops, Vec::new())
    }
}

fn open() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        SqliteStore::open(&dir.path().join("db.sqlite"), SqliteOptions::default()).expect("open");
    (dir, store)
}

fn op(
    ty: &str,
    id: &str,
    expected: Option<u64>,
    content: Option<&str>,
    index: Vec<IndexEntry>,
) -> WriteOp {
    let version = expected.map_or(1, |v| v + 1);
    WriteOp {
        resource_type: ty.into(),
        id: id.into(),
        expected_version: expected,
        version,
        last_updated: "2024-01-01T00:00:00.000Z".into(),
        last_updated_ms: 1_704_067_200_000 + version as i64,
        method: if content.is_none() {
            WriteMethod::Delete
        } else if expected.is_none() {
            WriteMethod::Post
        } else {
            WriteMethod::Put
        },
        content: content.map(|c| c.as_bytes().to_vec()),
        hash: content_hash(content.map(str::as_bytes)),
        index,
    }
}

fn family(v: &str) -> IndexEntry {
    IndexEntry {
        param: "Patient:family".into(),
        value: IndexValue::String {
            normalized: v.to_lowercase(),
            exact: v.into(),
        },
    }
}

#[test]
fn versions_are_kept_and_conflicts_refused() {
    let (_dir, store) = open();
    store
        .commit_ops(vec![op("Patient", "a", None, Some("{\"v\":1}"), vec![])])
        .unwrap();
    store
        .commit_ops(vec![op("Patient", "a", Some(1), Some("{\"v\":2}"), vec![])])
        .unwrap();
    let err = store
        .commit_ops(vec![op("Patient", "a", Some(1), Some("{\"v\":3}"), vec![])])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                actual: Some(2),
                ..
            }
        ),
        "{err:?}"
    );
    let cur = store.read("Patient", "a").unwrap().unwrap();
    assert_eq!(cur.version, 2);
    assert_eq!(cur.content.as_deref(), Some(&b"{\"v\":2}"[..]));
    assert_eq!(cur.hash, content_hash(Some(b"{\"v\":2}")));
    let v1 = store.vread("Patient", "a", 1).unwrap().unwrap();
    assert_eq!(v1.content.as_deref(), Some(&b"{\"v\":1}"[..]));
    store
        .commit_ops(vec![op("Patient", "a", Some(2), None, vec![])])
        .unwrap();
    let gone = store.read("Patient", "a").unwrap().unwrap();
    assert!(gone.is_deleted());
    assert_eq!(gone.version, 3);
    let history = store
        .history(&HistoryQuery {
            scope: HistoryScope::Instance("Patient".into(), "a".into()),
            since: None,
            before: None,
            count: 10,
            offset: 0,
        })
        .unwrap();
    assert_eq!(history.total, 3);
    assert_eq!(
        history
            .versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
}

#[test]
fn a_failed_commit_writes_nothing() {
    let (_dir, store) = open();
    store
        .commit_ops(vec![op("Patient", "b", None, Some("{}"), vec![])])
        .unwrap();
    let err = store.commit_ops(vec![
        op("Patient", "new", None, Some("{}"), vec![]),
        op("Patient", "b", None, Some("{}"), vec![]),
    ]);
    assert!(matches!(err, Err(StoreError::Conflict { op_index: 1, .. })));
    assert!(store.read("Patient", "new").unwrap().is_none());
}

#[test]
fn concurrent_commits_with_the_same_expectation_one_wins() {
    let (_dir, store) = open();
    store
        .commit_ops(vec![op("Patient", "c", None, Some("{}"), vec![])])
        .unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = store.clone();
            std::thread::spawn(move || {
                s.commit_ops(vec![op("Patient", "c", Some(1), Some("{}"), vec![])])
                    .is_ok()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1);
}

/// Creates are not looked up before they are written (their insert proves the id is free);
/// a create racing another for the same id, in the same commit group or not, must still
/// come back as a conflict and leave the winner intact.
#[test]
fn concurrent_creates_of_one_id_one_wins() {
    let (_dir, store) = open();
    let handles: Vec<_> = (0..8)
        .map(|n| {
            let s = store.clone();
            std::thread::spawn(move || {
                let content = format!("{{\"n\":{n}}}");
                s.commit_ops(vec![
                    op("Patient", &format!("other{n}"), None, Some("{}"), vec![]),
                    op("Patient", "d", None, Some(&content), vec![family("Race")]),
                ])
                .map(|()| content)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    StoreError::Conflict {
                        op_index: 1,
                        actual: Some(1),
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }
    let stored = store.read("Patient", "d").unwrap().unwrap();
    assert_eq!(stored.content.as_deref(), Some(winners[0].as_bytes()));
    let others = (0..8)
        .filter(|n| {
            store
                .read("Patient", &format!("other{n}"))
                .unwrap()
                .is_some()
        })
        .count();
    assert_eq!(
        others, 1,
        "a losing request's other create must not be stored"
    );
}

#[test]
fn search_by_string_prefix_sort_and_paging() {
    let (_dir, store) = open();
    for (i, name) in ["Smith", "Smythe", "Jones", "Smithers"].iter().enumerate() {
        store
            .commit_ops(vec![op(
                "Patient",
                &format!("p{i}"),
                None,
                Some("{}"),
                vec![family(name)],
            )])
            .unwrap();
    }
    let mut q = SearchQuery::new(Some("Patient"));
    q.filters.push(Filter {
        any_of: vec![Condition::String {
            param: "Patient:family".into(),
            value: "smi".into(),
            mode: StringMatch::StartsWith,
        }],
    });
    let page = store.search(&q).unwrap();
    assert_eq!(page.total, Some(2));
    let ids: Vec<_> = page.matches.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["p0", "p3"]);

    let mut sorted = SearchQuery::new(Some("Patient"));
    sorted.sort.push(SortKey {
        field: SortField::Param {
            params: vec!["Patient:family".into()],
            kind: IndexKind::String,
        },
        descending: true,
    });
    sorted.count = 2;
    let page = store.search(&sorted).unwrap();
    assert_eq!(page.total, Some(4));
    let ids: Vec<_> = page.matches.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["p1", "p3"]);
    sorted.offset = 2;
    let ids: Vec<_> = store
        .search(&sorted)
        .unwrap()
        .matches
        .iter()
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(ids, vec!["p0", "p2"]);

    // Updating re-indexes; deleting removes from search.
    store
        .commit_ops(vec![op(
            "Patient",
            "p0",
            Some(1),
            Some("{}"),
            vec![family("Brown")],
        )])
        .unwrap();
    store
        .commit_ops(vec![op("Patient", "p3", Some(1), None, vec![])])
        .unwrap();
    assert_eq!(store.search(&q).unwrap().total, Some(0));
}

#[test]
fn dates_chains_and_includes() {
    let (_dir, store) = open();
    let date = |p: &str, v: &str| IndexEntry {
        param: p.into(),
        value: IndexValue::Date(parse_date_range(v).unwrap()),
    };
    let reference = |p: &str, t: &str, id: &str| IndexEntry {
        param: p.into(),
        value: IndexValue::Reference {
            target_type: Some(t.into()),
            target_id: Some(id.into()),
            url: None,
        },
    };
    let token = |p: &str, s: &str, c: &str| IndexEntry {
        param: p.into(),
        value: IndexValue::Token {
            system: Some(s.into()),
            code: Some(c.into()),
            text: None,
        },
    };
    store
        .commit_ops(vec![
            op(
                "Patient",
                "pat",
                None,
                Some("{}"),
                vec![
                    date("Patient:birthdate", "1980-05-02"),
                    token("Patient:identifier", "urn:mrn", "42"),
                ],
            ),
            op(
                "CarePlan",
                "cp1",
                None,
                Some("{}"),
                vec![reference("CarePlan:subject", "Patient", "pat")],
            ),
            op(
                "CarePlan",
                "cp2",
                None,
                Some("{}"),
                vec![reference("CarePlan:subject", "Patient", "other")],
            ),
        ])
        .unwrap();
    let mut q = SearchQuery::new(Some("Patient"));
    q.filters.push(Filter {
        any_of: vec![Condition::Date {
            param: "Patient:birthdate".into(),
            prefix: Prefix::Eq,
            range: parse_date_range("1980").unwrap(),
        }],
    });
    assert_eq!(store.search(&q).unwrap().total, Some(1));
    q.filters[0].any_of[0] = Condition::Date {
        param: "Patient:birthdate".into(),
        prefix: Prefix::Gt,
        range: parse_date_range("1980-05-02").unwrap(),
    };
    assert_eq!(store.search(&q).unwrap().total, Some(0));

    let mut chain = SearchQuery::new(Some("CarePlan"));
    chain.filters.push(Filter {
        any_of: vec![Condition::Chain {
            param: "CarePlan:subject".into(),
            target_type: "Patient".into(),
            inner: Box::new(Condition::Token {
                param: "Patient:identifier".into(),
                system: TokenSystem::Is("urn:mrn".into()),
                code: Some("42".into()),
            }),
        }],
    });
    let page = store.search(&chain).unwrap();
    assert_eq!(page.matches.len(), 1);
    assert_eq!(page.matches[0].id, "cp1");

    let included = store
        .include(
            &[("CarePlan".into(), "cp1".into())],
            &IncludeSpec {
                source_type: "CarePlan".into(),
                param: "CarePlan:subject".into(),
                target_type: None,
                reverse: false,
                iterate: false,
            },
        )
        .unwrap();
    assert_eq!(included.len(), 1);
    assert_eq!(included[0].id, "pat");
    let rev = store
        .include(
            &[("Patient".into(), "pat".into())],
            &IncludeSpec {
                source_type: "CarePlan".into(),
                param: "CarePlan:subject".into(),
                target_type: None,
                reverse: true,
                iterate: false,
            },
        )
        .unwrap();
    assert_eq!(
        rev.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["cp1"]
    );

    let mut has = SearchQuery::new(Some("Patient"));
    has.filters.push(Filter {
        any_of: vec![Condition::Has {
            source_type: "CarePlan".into(),
            param: "CarePlan:subject".into(),
            inner: Box::new(Condition::Id("cp1".into())),
        }],
    });
    assert_eq!(store.search(&has).unwrap().total, Some(1));
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store
            .commit_ops(vec![op("Patient", "kept", None, Some("{}"), vec![])])
            .unwrap();
    }
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    assert_eq!(store.read("Patient", "kept").unwrap().unwrap().version, 1);
}

fn audit(id: &str, patient: Option<&str>) -> AuditRecord {
    AuditRecord {
        id: id.into(),
        recorded_ms: 1,
        patient: patient.map(str::to_string),
        client: Some("ehr".into()),
        event_type: "rest".into(),
        subtype: "create".into(),
        outcome: "0".into(),
        purpose: None,
        entities: vec!["Patient/a/_history/1".into()],
        content: format!("{{\"resourceType\":\"AuditEvent\",\"id\":\"{id}\"}}").into_bytes(),
    }
}

#[test]
fn audit_chain_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store
            .commit(
                vec![op("Patient", "a", None, Some("{}"), vec![])],
                vec![audit("e1", Some("Patient/a"))],
            )
            .unwrap();
        // A failed write leaves no audit event of its own in the chain.
        assert!(store
            .commit(
                vec![op("Patient", "a", None, Some("{}"), vec![])],
                vec![audit("lost", None)]
            )
            .is_err());
        store
            .commit(
                vec![],
                vec![audit("e2", None), audit("e3", Some("Patient/a"))],
            )
            .unwrap();
        store.record_audit(vec![audit("e4", None)]).unwrap();
        store.close();
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let report = store.verify_audit_chain().unwrap();
        assert_eq!(report.events, 4);
        assert!(report.first_break.is_none(), "{report:?}");
        assert_eq!(report.head.as_ref().map(|h| h.0), Some(4));
        let (found, total) = store
            .audit_search(&AuditQuery {
                patient: Some("Patient/a".into()),
                count: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(total, 2);
        assert_eq!(found.len(), 2);
        let (by_entity, _) = store
            .audit_search(&AuditQuery {
                entity: Some("Patient/a".into()),
                count: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(by_entity.len(), 4);
    }
    let tamper = |sql: &str| {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(sql).unwrap();
    };
    let verify = || {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        store.verify_audit_chain().unwrap()
    };
    tamper("UPDATE audit_event SET content = CAST('{\"resourceType\":\"AuditEvent\",\"id\":\"e2x\"}' AS BLOB) WHERE seq = 2");
    let broken = verify().first_break.expect("edit detected");
    assert_eq!(broken.seq, 2);
    assert_eq!(broken.id, "e2");
    tamper("UPDATE audit_event SET content = CAST('{\"resourceType\":\"AuditEvent\",\"id\":\"e2\"}' AS BLOB) WHERE seq = 2");
    assert!(verify().first_break.is_none());
    tamper("DELETE FROM audit_event WHERE seq = 3");
    let broken = verify().first_break.expect("removal detected");
    assert_eq!(broken.seq, 4);
    assert!(broken.problem.contains("removed"), "{}", broken.problem);
}

/// Every row in the index tables, as `(table, param key, rid)` counts: what a resource's
/// row list must account for when the resource changes.
fn index_rows(path: &std::path::Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut out = Vec::new();
    for table in [
        "ix_string",
        "ix_token",
        "ix_reference",
        "ix_date",
        "ix_number",
        "ix_quantity",
        "ix_uri",
    ] {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .expect("count");
        out.push((table.to_string(), n));
    }
    out
}

fn ids(page: &SearchPage) -> Vec<&str> {
    page.matches.iter().map(|m| m.id.as_str()).collect()
}

/// Checks sort, `:missing`, `_include` and re-indexing on update against a store holding
/// `writes()`; used on a fresh database and on one migrated from schema 4.
fn check_row_lists(store: &SqliteStore, path: &std::path::Path) {
    let by_family = |descending| {
        let mut q = SearchQuery::new(Some("Patient"));
        q.sort.push(SortKey {
            field: SortField::Param {
                params: vec!["Patient:family".into()],
                kind: IndexKind::String,
            },
            descending,
        });
        q
    };
    // a: {Adams, Young}, b: {Baker}, c: no name. Ascending sorts by each one's first name
    // in order, descending by its last; resources without a value come last either way.
    assert_eq!(
        ids(&store.search(&by_family(false)).unwrap()),
        ["a", "b", "c"]
    );
    assert_eq!(
        ids(&store.search(&by_family(true)).unwrap()),
        ["a", "b", "c"]
    );
    let missing = |missing| {
        let mut q = SearchQuery::new(Some("Patient"));
        q.filters.push(Filter {
            any_of: vec![Condition::Missing {
                param: "Patient:family".into(),
                kind: IndexKind::String,
                missing,
            }],
        });
        q
    };
    assert_eq!(ids(&store.search(&missing(true)).unwrap()), ["c"]);
    let mut dutch = SearchQuery::new(Some("Patient"));
    dutch.filters.push(Filter {
        any_of: vec![Condition::TokenText {
            param: "Patient:language".into(),
            text: "dut".into(),
        }],
    });
    assert_eq!(ids(&store.search(&dutch).unwrap()), ["b"]);
    assert_eq!(ids(&store.search(&missing(false)).unwrap()), ["a", "b"]);
    let include = IncludeSpec {
        source_type: "CarePlan".into(),
        param: "CarePlan:subject".into(),
        target_type: None,
        reverse: false,
        iterate: false,
    };
    let included = store
        .include(&[("CarePlan".into(), "plan".into())], &include)
        .unwrap();
    assert_eq!(
        included.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );

    // Re-indexing: the old rows go, whatever the resource had.
    let before = index_rows(path);
    store
        .commit_ops(vec![op(
            "Patient",
            "a",
            Some(1),
            Some("{}"),
            vec![family("Zed")],
        )])
        .unwrap();
    let after = index_rows(path);
    assert_eq!(after[0].1, before[0].1 - 1, "{before:?} -> {after:?}");
    assert_eq!(
        ids(&store.search(&by_family(false)).unwrap()),
        ["b", "a", "c"]
    );
    let mut adams = SearchQuery::new(Some("Patient"));
    adams.filters.push(Filter {
        any_of: vec![Condition::String {
            param: "Patient:family".into(),
            value: "adams".into(),
            mode: StringMatch::StartsWith,
        }],
    });
    assert_eq!(store.search(&adams).unwrap().total, Some(0));
    store
        .commit_ops(vec![op("CarePlan", "plan", Some(1), None, vec![])])
        .unwrap();
    assert_eq!(index_rows(path)[2].1, after[2].1 - 1);
    assert!(store
        .include(&[("CarePlan".into(), "plan".into())], &include)
        .unwrap()
        .is_empty());
}

fn write_row_list_fixture(store: &SqliteStore) {
    let subject = IndexEntry {
        param: "CarePlan:subject".into(),
        value: IndexValue::Reference {
            target_type: Some("Patient".into()),
            target_id: Some("b".into()),
            url: None,
        },
    };
    store
        .commit_ops(vec![
            op(
                "Patient",
                "a",
                None,
                Some("{}"),
                // The same value twice is one row.
                vec![family("Young"), family("Adams"), family("Adams")],
            ),
            op(
                "Patient",
                "b",
                None,
                Some("{}"),
                vec![
                    family("Baker"),
                    IndexEntry {
                        param: "Patient:language".into(),
                        value: IndexValue::Token {
                            system: Some("urn:ietf:bcp:47".into()),
                            code: Some("nl".into()),
                            text: Some("dutch".into()),
                        },
                    },
                ],
            ),
            op("Patient", "c", None, Some("{}"), vec![]),
            op("CarePlan", "plan", None, Some("{}"), vec![subject]),
        ])
        .unwrap();
}

#[test]
fn row_lists_serve_sort_missing_include_and_updates() {
    let (dir, store) = open();
    write_row_list_fixture(&store);
    check_row_lists(&store, &dir.path().join("db.sqlite"));
}

/// A schema 4 database (rows found through `(rid, param)` indexes, tokens keyed without
/// their text) is migrated on open.
#[test]
fn schema_4_databases_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    write_row_list_fixture(&store);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TABLE resource_ix;
         CREATE TABLE ix_token_4 (param INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL, rid INTEGER NOT NULL, text TEXT,
             PRIMARY KEY (param, code, system, rid)) WITHOUT ROWID;
         INSERT OR IGNORE INTO ix_token_4 SELECT param, code, system, rid, nullif(text, '') FROM ix_token;
         DROP TABLE ix_token;
         ALTER TABLE ix_token_4 RENAME TO ix_token;
         CREATE INDEX ix_string_r ON ix_string (rid, param);
         CREATE INDEX ix_token_r ON ix_token (rid, param);
         CREATE INDEX ix_reference_r ON ix_reference (rid, param);
         CREATE INDEX ix_date_r ON ix_date (rid, param);
         CREATE INDEX ix_number_r ON ix_number (rid, param);
         CREATE INDEX ix_quantity_r ON ix_quantity (rid, param);
         CREATE INDEX ix_uri_r ON ix_uri (rid, param);
         UPDATE caregate_meta SET value = '4' WHERE key = 'schema';",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (schema, r_indexes): (String, i64) = conn
        .query_row(
            "SELECT (SELECT value FROM caregate_meta WHERE key = 'schema'),
                    (SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix\\_%\\_r' ESCAPE '\\')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((schema.as_str(), r_indexes), ("5", 0));
    let token_table: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'ix_token'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        token_table.contains("PRIMARY KEY (param, code, system, rid, text)"),
        "{token_table}"
    );
    check_row_lists(&store, &path);
}

/// Two values of one token parameter that carry only display text (CodeableConcepts without
/// codings) are two rows: `:text` finds the resource by either, and an update removes both.
#[test]
fn text_only_tokens_keep_every_text() {
    let (_dir, store) = open();
    let text = |t: &str| IndexEntry {
        param: "Condition:code".into(),
        value: IndexValue::Token {
            system: None,
            code: None,
            text: Some(t.into()),
        },
    };
    store
        .commit_ops(vec![op(
            "Condition",
            "c",
            None,
            Some("{}"),
            vec![text("low mood"), text("poor sleep")],
        )])
        .unwrap();
    let by_text = |t: &str| {
        let mut q = SearchQuery::new(Some("Condition"));
        q.filters.push(Filter {
            any_of: vec![Condition::TokenText {
                param: "Condition:code".into(),
                text: t.into(),
            }],
        });
        store.search(&q).unwrap().total
    };
    assert_eq!((by_text("low"), by_text("poor")), (Some(1), Some(1)));
    store
        .commit_ops(vec![op(
            "Condition",
            "c",
            Some(1),
            Some("{}"),
            vec![text("better")],
        )])
        .unwrap();
    assert_eq!(
        (by_text("low"), by_text("poor"), by_text("bet")),
        (Some(0), Some(0), Some(1))
    );
}
