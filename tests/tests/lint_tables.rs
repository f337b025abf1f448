//! The lint list lives once, in the root Cargo.toml's `[workspace.lints]`. The workspace's
//! members inherit it; the three workspaces kept out of it (tests/core-link,
//! tests/check-glue, fuzz) cannot, so each carries a copy: this checks the copies and the
//! inheritance have not drifted.

use std::path::Path;

fn manifest(relative: &str) -> toml::Table {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(relative);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn table<'a>(t: &'a toml::Table, key: &str, what: &str) -> &'a toml::Table {
    t.get(key)
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| panic!("{what}: no [{key}]"))
}

#[test]
fn excluded_workspaces_copy_the_workspace_lints() {
    let root = manifest("Cargo.toml");
    let lints = table(
        table(&root, "workspace", "Cargo.toml"),
        "lints",
        "Cargo.toml",
    );
    for copy in [
        "tests/core-link/Cargo.toml",
        "tests/check-glue/Cargo.toml",
        "fuzz/Cargo.toml",
    ] {
        let m = manifest(copy);
        assert_eq!(
            table(&m, "lints", copy),
            lints,
            "{copy}'s [lints] differ from the root's [workspace.lints]"
        );
    }
}

#[test]
fn members_inherit_the_workspace_lints() {
    for member in ["Cargo.toml", "client/Cargo.toml", "tests/Cargo.toml"] {
        let m = manifest(member);
        let lints = table(&m, "lints", member);
        assert_eq!(
            lints.get("workspace").and_then(toml::Value::as_bool),
            Some(true),
            "{member}: [lints] must be `workspace = true` and nothing else"
        );
        assert_eq!(
            lints.len(),
            1,
            "{member}: [lints] must be only `workspace = true`"
        );
    }
}
