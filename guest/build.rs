//! Links every guest binary with `link.ld`. The script is passed from here rather than
//! through RUSTFLAGS so that editing it relinks the guests (`rerun-if-changed`).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = std::path::Path::new(&dir).join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    // Only the freestanding target uses the script; a host `cargo check --workspace`
    // must not be handed a bare-metal memory layout.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
