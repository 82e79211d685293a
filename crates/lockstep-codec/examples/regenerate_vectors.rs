//! Writes the conformance vectors of today's codec into a new protocol
//! version folder: `cargo run -p lockstep-codec --example regenerate_vectors -- v2`.
//! Refuses a version listed in `conformance/RELEASED` (its files are frozen).

#[path = "../tests/vectors/mod.rs"]
mod vectors;

fn main() {
    let Some(version) = std::env::args().nth(1) else {
        eprintln!("usage: regenerate_vectors <version, e.g. v2>");
        std::process::exit(2);
    };
    match vectors::write_all(&version) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            println!(
                "Now point vectors::CURRENT at {version}, and list it in conformance/RELEASED once an edge ships it."
            );
        }
        Err(e) => {
            eprintln!("refused: {e}");
            std::process::exit(1);
        }
    }
}
