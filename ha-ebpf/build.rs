//! Re-link the XDP object when `bpf-linker` changes.
//!
//! Building for the BPF target has an undeclared dependency on the `bpf-linker`
//! binary; keying the build on its path and mtime makes a reinstalled linker
//! (e.g. against another LLVM) relink the object instead of reusing a stale one.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    // Only the BPF build links with bpf-linker; the host build (the empty
    // library used as a build-dependency, clippy) does not need it.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`");
            std::process::exit(1);
        }
    }
}
