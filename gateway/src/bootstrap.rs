//! First start: when no API token exists yet, issue one and write it to the configured file
//! (mode 0600), so that the operator who installed Logbook can call the API.

use std::io::Write;
use std::path::{Path, PathBuf};

use logbook_domain::metadata::Actor;
use sqlx::{Connection, PgConnection};

use crate::commands::{Commands, Ctx};
use crate::credentials;
use crate::secrets::SecretKind;

/// What bootstrap found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminToken {
    /// A token was issued now and written to this file.
    Created(PathBuf),
    /// Tokens already existed.
    AlreadyExists,
}

/// Issues the bootstrap admin token if there is no live API token.
pub async fn ensure_admin_token(
    commands: &Commands,
    token_file: &Path,
) -> anyhow::Result<AdminToken> {
    let pool = commands.store().pool();
    // Two gateways starting together must not both issue one.
    let mut lock = PgConnection::connect_with(&pool.connect_options()).await?;
    sqlx::query("SELECT pg_advisory_lock(7366102)")
        .execute(&mut lock)
        .await?;
    let result = async {
        if credentials::any_live(pool, SecretKind::ApiToken).await? {
            return Ok(AdminToken::AlreadyExists);
        }
        let ctx = Ctx::new(Actor::System("bootstrap".into()), "bootstrap");
        let issued = commands.issue_api_token(&ctx, "bootstrap admin").await?;
        if let Err(e) = write_secret(token_file, &issued.token) {
            // Nobody could ever use a token that was not written down.
            commands.revoke_api_token(&ctx, issued.token_id).await?;
            return Err(anyhow::Error::new(e).context(format!(
                "writing the admin token to {}",
                token_file.display()
            )));
        }
        Ok(AdminToken::Created(token_file.to_path_buf()))
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(7366102)")
        .execute(&mut lock)
        .await;
    let _ = lock.close().await;
    result
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{secret}")?;
    file.sync_all()
}
