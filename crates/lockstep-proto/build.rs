//! Compiles the `.proto` contract with `protox` (pure Rust), so no system
//! `protoc` is needed on any machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/telemetry/telemetry.proto",
        "proto/lockstep/v1/lockstep.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
