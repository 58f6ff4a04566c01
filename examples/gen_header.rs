//! Prints include/shmsesscache.h generated from the crate's C API, `src/ffi/` (used by
//! `make header`; `make check-header`, part of `make lint`, fails when the committed header differs).
//!
//! The C API only grows, and so does its header: a constant or function already in the
//! committed header keeps its place there, whichever file of `src/ffi/` defines it, and new
//! ones follow in the order cbindgen reads them (`src/ffi/mod.rs`, then its modules in the
//! order they are declared). So the Rust files can be arranged by C concept without moving
//! declarations in the header that C programmers read.
fn main() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config =
        cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("cbindgen.toml");
    let mut bindings = cbindgen::Builder::new()
        .with_src(format!("{dir}/src/ffi/mod.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let committed =
        std::fs::read_to_string(format!("{dir}/include/shmsesscache.h")).unwrap_or_default();
    let place = |name: &str| declared_at(&committed, name).unwrap_or(usize::MAX);
    // Stable sorts: items new to the header keep cbindgen's order, after the others.
    bindings.constants.sort_by_key(|c| place(c.path.name()));
    bindings.functions.sort_by_key(|f| place(f.path.name()));
    bindings.write(std::io::stdout());
}

/// Where `header` declares `name` (a `#define` or a function), outside comments: the byte
/// offset of the line, or `None` if it is not declared there.
fn declared_at(header: &str, name: &str) -> Option<usize> {
    let define = format!("#define {name} ");
    let function = [format!(" {name}("), format!("*{name}(")];
    let mut offset = 0;
    for line in header.split_inclusive('\n') {
        let code = line.trim_start();
        let comment = code.starts_with("//") || code.starts_with("/*") || code.starts_with('*');
        if !comment && (code.starts_with(&define) || function.iter().any(|f| code.contains(f))) {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}
