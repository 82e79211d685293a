//! `lockstep-bench`: drives a lockstep-server (or starts one) and prints what
//! it measured. All the work is in the library; this only wires.

use std::process::ExitCode;

use clap::Parser as _;
use lockstep_bench::{Args, run};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(report) => {
            if report.errors_total > 0 {
                eprintln!(
                    "lockstep-bench: finished with {} errors (see the table)",
                    report.errors_total
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lockstep-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
