//! Prints include/shmsesscache.h generated from the crate's C API (used by `make header`;
//! `make check-header`, part of `make lint`, fails when the committed header differs).
fn main() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config =
        cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_src(format!("{dir}/src/ffi.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    bindings.write(std::io::stdout());
}
