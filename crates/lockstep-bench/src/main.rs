//! `lockstep-bench`: drives a lockstep-server (or starts one) and prints what
//! it measured. All the work is in the library; this only wires.
//! `lockstep-bench history …` measures the read side instead (see
//! [`lockstep_bench::history`]); `lockstep-bench fleet …` grows a fleet to
//! 50,000 VINs (see [`lockstep_bench::big_fleet`]); `lockstep-bench
//! subscribers …` holds WebSocket subscribers in a process of their own
//! (see [`lockstep_bench::subscribers`]).

use std::process::ExitCode;

use clap::Parser as _;
use lockstep_bench::big_fleet::{self, FleetArgs};
use lockstep_bench::history::{self, HistoryArgs};
use lockstep_bench::subscribers::{self, SubscribersArgs};
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
    if argv.get(1).is_some_and(|a| a == "fleet") {
        return match big_fleet::run(FleetArgs::parse_from(&argv[1..])).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lockstep-bench fleet: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if argv.get(1).is_some_and(|a| a == "subscribers") {
        return match subscribers::run(SubscribersArgs::parse_from(&argv[1..])).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lockstep-bench subscribers: {e:#}");
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
