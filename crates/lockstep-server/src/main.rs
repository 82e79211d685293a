//! `lockstep-server`: reads `.env` and the settings, starts the [`App`],
//! turns SIGINT/SIGTERM into a graceful shutdown.

use clap::Parser;
use lockstep_server::{App, Settings, app::shutdown_signal};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // `lockstep-server edge …` is the edge logger itself (the same code as
    // `lockstep-edge …`): the server re-executes itself this way to start a
    // logger, so `cargo run -p lockstep-server` alone gives a working Start logger.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "edge") {
        return lockstep_edge::cli::run(std::iter::once("lockstep-server edge".into()).chain(args));
    }
    // .env first: real environment variables win over it.
    let dotenv = dotenvy::dotenv();
    let settings = Settings::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = settings.runtime_threads() {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build();
    match runtime {
        Ok(rt) => rt.block_on(serve(settings, dotenv)),
        Err(e) => {
            eprintln!("lockstep-server: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(
    mut settings: Settings,
    dotenv: Result<std::path::PathBuf, dotenvy::Error>,
) -> std::process::ExitCode {
    if let Some(command) = settings.command.take() {
        return token_command(command, &settings).await;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if settings.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .init();
    }
    if let Err(e) = dotenv
        && !e.not_found()
    {
        tracing::warn!(error = %e, "The .env file could not be read.");
    }
    match run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("lockstep-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `lockstep-server token …`: the token goes to stdout (its last line), errors to stderr.
async fn token_command(
    command: lockstep_server::auth::cli::Command,
    settings: &Settings,
) -> std::process::ExitCode {
    let lockstep_server::auth::cli::Command::Token(cmd) = command;
    let run = async {
        let db = lockstep_server::auth::db::AuthDb::open(&settings.store_config()?).await?;
        lockstep_server::auth::cli::run(&cmd, &db, &mut std::io::stdout().lock()).await
    };
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-server token: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let app = App::build(settings).await?;
    let token = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    app.run().await
}
