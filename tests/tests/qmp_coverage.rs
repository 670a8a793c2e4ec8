//! docs/qmp-coverage.md against the spec and the gateway's command table: every spec
//! command has exactly one row, and each row's status and owner are what the table says.
//! The spec's command names are kept in the repository (tests/data), so a clone needs
//! nothing beside it.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_tests::repo_root;
use qmp_gateway::qmp::commands::{Coverage, Owner, COMMANDS};

/// Command names of the spec we implement (QEMU's qmp-commands.txt), as
/// scripts/spec-commands wrote them into the repository.
fn spec_commands() -> BTreeSet<String> {
    let path = repo_root().join("tests/data/qmp-spec-commands.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the spec's command list {} is missing: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

struct Row {
    status: String,
    served_by: String,
    notes: String,
}

fn doc_rows() -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(repo_root().join("docs/qmp-coverage.md")).unwrap();
    let mut rows = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| command"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 4, "malformed row: {line}");
        let previous = rows.insert(
            cells[0].to_string(),
            Row {
                status: cells[1].to_string(),
                served_by: cells[2].to_string(),
                notes: cells[3].to_string(),
            },
        );
        assert!(previous.is_none(), "{} listed twice", cells[0]);
    }
    rows
}

#[test]
fn coverage_doc_matches_the_command_table() {
    let spec = spec_commands();
    assert!(
        spec.len() > 100,
        "spec parsing found only {} commands",
        spec.len()
    );
    let rows = doc_rows();
    let table: BTreeMap<&str, _> = COMMANDS.iter().map(|c| (c.name, c)).collect();
    for name in &spec {
        assert!(
            rows.contains_key(name),
            "spec command {name} missing from docs/qmp-coverage.md"
        );
    }
    for (name, row) in &rows {
        match table.get(name.as_str()) {
            Some(c) => {
                let status = match c.coverage {
                    Coverage::Done => "done",
                    Coverage::Partly => "partly",
                    Coverage::NoDevice => "no device",
                };
                assert_eq!(row.status, status, "status of {name}");
                let owner = match c.owner {
                    Owner::Gateway => "gateway",
                    Owner::VmmCore => "vmm-core",
                    Owner::BlockDaemon => "block-daemon",
                    Owner::NetDaemon => "net-daemon",
                };
                assert_eq!(row.served_by, owner, "owner of {name}");
            }
            None => {
                assert!(
                    ["not yet", "not on x86", "not built"].contains(&row.status.as_str()),
                    "{name} is not in the command table: not yet, not on x86 or not built, \
                     not {}",
                    row.status
                );
                assert!(row.served_by.is_empty(), "{name} has no owner yet");
            }
        }
        if !spec.contains(name) {
            assert!(
                table.contains_key(name.as_str()),
                "{name} is neither in the spec nor served"
            );
            assert!(
                row.notes.contains("not in the spec"),
                "{name}: say it is not in the spec"
            );
        }
    }
    for name in table.keys() {
        assert!(
            rows.contains_key(*name),
            "served command {name} missing from the doc"
        );
    }
}

#[test]
fn renamed_commands_are_accepted_under_both_names() {
    let served: BTreeSet<&str> = COMMANDS.iter().map(|c| c.name).collect();
    for (old, new) in [
        ("query-cpus", "query-cpus-fast"),
        ("x-blockdev-del", "blockdev-del"),
        ("x-blockdev-remove-medium", "blockdev-remove-medium"),
        ("x-blockdev-insert-medium", "blockdev-insert-medium"),
    ] {
        assert!(
            served.contains(old) && served.contains(new),
            "{old} / {new}"
        );
    }
}
