//! `lockstep-server token create|list|revoke`: token management against the
//! configured store (the same `DATABASE_URL` / data directory the server
//! uses), without a running server.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::db::AuthDb;
use super::service::{Role, Scope, create_token};

/// Subcommands of `lockstep-server`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Manage device, fleet and personal tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once, as the last line of stdout.
    Create(CreateArgs),
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id (`token list`); it stops working within seconds.
    Revoke {
        /// The token's public id, e.g. `3f2a9c1b7d04`.
        id: String,
    },
}

/// Exactly one of `--vin`, `--vin-prefix`, `--role`.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false, id = "scope")]
pub struct ScopeArgs {
    /// A device token that may write this VIN only.
    #[arg(long)]
    pub vin: Option<String>,
    /// A fleet token (simulators, replayers) that may write every VIN starting with this.
    #[arg(long)]
    pub vin_prefix: Option<String>,
    /// A token for people and tools: viewer, operator or admin.
    #[arg(long)]
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// A note shown by `token list` (who or what holds it).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Expire after this many hours (default: never).
    #[arg(long)]
    pub expires_in_hours: Option<f64>,
}

impl ScopeArgs {
    fn scope(&self) -> anyhow::Result<Scope> {
        let role = self.role.map(Role::as_str);
        Scope::from_parts(self.vin.as_deref(), self.vin_prefix.as_deref(), role)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

fn describe(scope: &Scope) -> String {
    match scope {
        Scope::Role(r) => format!("role {}", r.as_str()),
        Scope::Vin(v) => format!("device {v}"),
        Scope::VinPrefix(p) => format!("fleet {p}*"),
        Scope::Vins(vs) => format!("devices {}", vs.join(",")),
    }
}

fn time(ms: Option<i64>) -> String {
    use crate::model::{civil_date, epoch_day};
    ms.map_or_else(
        || "-".to_owned(),
        |m| {
            let s = m.rem_euclid(86_400_000) / 1000;
            format!(
                "{} {:02}:{:02}:{:02} UTC",
                civil_date(epoch_day(m)),
                s / 3600,
                s / 60 % 60,
                s % 60
            )
        },
    )
}

/// Runs a token subcommand against `db`, writing to `out`.
pub async fn run(
    cmd: &TokenCommand,
    db: &AuthDb,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(a) => {
            let scope = a.scope.scope()?;
            let expires = match a.expires_in_hours {
                Some(h) if !(h.is_finite() && h > 0.0) => {
                    anyhow::bail!("--expires-in-hours must be a positive number")
                }
                h => h.map(|h| Duration::from_secs_f64(h * 3600.0)),
            };
            let (info, token) = create_token(db, scope, &a.label, expires).await?;
            writeln!(
                out,
                "Created token {} ({}), expires {}. It is shown only now; store it safely:",
                info.public_id,
                describe(&info.scope),
                time(info.expires_at_ms)
            )?;
            writeln!(out, "{token}")?;
        }
        TokenCommand::List => {
            writeln!(
                out,
                "{:<12}  {:<26}  {:<24}  {:<24}  {:<24}  label",
                "id", "scope", "created", "expires", "revoked"
            )?;
            for t in db.tokens().await? {
                writeln!(
                    out,
                    "{:<12}  {:<26}  {:<24}  {:<24}  {:<24}  {}",
                    t.public_id,
                    describe(&t.scope),
                    time(Some(t.created_at_ms)),
                    time(t.expires_at_ms),
                    time(t.revoked_at_ms),
                    t.label
                )?;
            }
        }
        TokenCommand::Revoke { id } => {
            anyhow::ensure!(
                db.revoke(id, crate::model::now_ms()).await?,
                "no token with id {id:?} (see `lockstep-server token list`)"
            );
            writeln!(
                out,
                "Revoked token {id}; every server stops accepting it within seconds."
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
