//! `lockstep-edge`: the command line lives in the library ([`lockstep_edge::cli`]).

fn main() -> std::process::ExitCode {
    lockstep_edge::cli::run(std::env::args_os())
}
