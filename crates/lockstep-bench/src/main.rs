//! `lockstep-bench`: drives a lockstep-server (or starts one) and prints what
//! it measured. All the work is in the library; this only wires.
//! `lockstep-bench history …` measures the read side instead (see
//! [`lockstep_bench::history`]).

use std::process::ExitCode;

use clap::Parser as _;
use lockstep_bench::history::{self, HistoryArgs};
use lockstep_bench::{Args, run};

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "history") {
        return match history::run(HistoryArgs::parse_from(&argv[1..])).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lockstep-bench history: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
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
