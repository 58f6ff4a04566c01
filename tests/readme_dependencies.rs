//! README's "Dependencies" section names every crate compiled into the library (what
//! `cargo tree -e normal` lists, transitive ones included), so that what it promises about the
//! dependencies can be checked against the build.

use std::process::Command;

#[test]
fn readme_names_every_linked_crate() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
            "--manifest-path",
        ])
        .arg(format!("{root}/Cargo.toml"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&c| c != env!("CARGO_PKG_NAME"))
        .collect();
    assert!(
        crates.contains(&"libc"),
        "unexpected cargo tree output: {tree}"
    );
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let start = readme
        .find("\n## Dependencies")
        .expect("README has a Dependencies section");
    let section = &readme[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |e| e + 1)];
    let missing: Vec<&&str> = crates
        .iter()
        .filter(|c| !section.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's Dependencies section does not name {missing:?}"
    );
}
