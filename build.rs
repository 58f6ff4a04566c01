// The shared library carries a SONAME so that C programs link against the ABI major version
// (libshmsesscache.so.0), not against the unversioned development symlink.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libshmsesscache.so.0");
    // OpenSSL keeps calling the ex_data free function the library registers (on every
    // SSL_CTX_free, for the life of the process): the code must never be unmapped, even by a
    // server that dlcloses the library (module unload, reload).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}
