//! `include/lockstep_codec.h` is what cbindgen generates from the code today:
//! a C or C++ logger never compiles against a stale header. After changing
//! the ABI: `LOCKSTEP_REGENERATE_HEADER=1 cargo test -p lockstep-codec-c --test header`.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");
    let path = dir.join("include/lockstep_codec.h");
    if std::env::var_os("LOCKSTEP_REGENERATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is out of date with the code: run \
         `LOCKSTEP_REGENERATE_HEADER=1 cargo test -p lockstep-codec-c --test header` and commit it",
        path.display()
    );
}
