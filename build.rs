// The shared library carries a SONAME so that C programs link against the ABI major version
// (libshmsesscache.so.0), not against the unversioned development symlink.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libshmsesscache.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
