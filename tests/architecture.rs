//! The crate's shape, checked: the `# Layout` section of `src/lib.rs` lists the top-level
//! modules in layers, bottom to top, and every module may import only from modules listed
//! before it. That keeps the import graph free of cycles and the layout honest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The modules of the layout section, in the order listed.
fn layout_order() -> Vec<String> {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    let section = lib
        .split("//! # Layout")
        .nth(1)
        .expect("src/lib.rs has a # Layout section");
    let mut order = Vec::new();
    for line in section.lines().skip(1).take_while(|l| l.starts_with("//!")) {
        let entry = line.trim_start_matches("//!").trim_start();
        if let Some(rest) = entry.strip_prefix("- [`") {
            let name = rest.split('`').next().unwrap();
            order.push(name.to_owned());
        }
        if entry.starts_with("A Check goes") {
            break;
        }
    }
    order
}

/// Every `.rs` file of top-level module `name`.
fn module_files(name: &str) -> Vec<PathBuf> {
    let file = Path::new(SRC).join(format!("{name}.rs"));
    if file.is_file() {
        return vec![file];
    }
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(SRC).join(name)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level modules `file`'s code (comments aside) names through `crate::`.
fn imports(file: &Path, modules: &[String]) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut push = |name: &str| {
        if modules.iter().any(|m| m == name) && !found.iter().any(|f: &String| f == name) {
            found.push(name.to_owned());
        }
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                push(item.trim().split("::").next().unwrap_or_default());
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            push(&name);
        }
    }
    found
}

#[test]
fn every_module_is_in_the_layout_and_imports_only_modules_listed_before_it() {
    let order = layout_order();
    let declared: Vec<String> = std::fs::read_to_string(Path::new(SRC).join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(['{', ';', ' ']).to_owned())
        .filter(|name| name != "proto")
        .collect();
    let mut listed = order.clone();
    listed.sort();
    let mut expected = declared.clone();
    expected.sort();
    assert_eq!(listed, expected, "the layout must list every module once");

    let position: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut violations = Vec::new();
    for module in &order {
        for file in module_files(module) {
            for imported in imports(&file, &order) {
                if imported != *module && position[imported.as_str()] > position[module.as_str()] {
                    violations.push(format!(
                        "{} imports {imported}, listed after {module}",
                        file.strip_prefix(SRC).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_import_scanner_sees_paths_and_groups_but_not_comments() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sample.rs");
    std::fs::write(
        &file,
        "use crate::{store::Store, clock};\n// crate::server is only mentioned\nfn f() { crate::key::hash::hex(&[]); }\n",
    )
    .unwrap();
    let modules: Vec<String> = ["store", "clock", "server", "key"]
        .map(String::from)
        .to_vec();
    assert_eq!(imports(&file, &modules), ["store", "clock", "key"]);
}
