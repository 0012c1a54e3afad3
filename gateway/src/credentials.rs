//! The `credentials` table: which secret hash belongs to whom, kept in step with the events that
//! issue and revoke secrets (always written in the same transaction, after the events).

use chrono::{DateTime, Utc};
use logbook_domain::secret::SecretHash;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::secrets::SecretKind;

/// Records a newly issued secret.
pub async fn insert(
    conn: &mut PgConnection,
    hash: &SecretHash,
    kind: SecretKind,
    subject: Uuid,
    issued_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credentials (secret_hash, kind, subject_id, issued_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash.as_bytes().as_slice())
    .bind(kind.as_str())
    .bind(subject)
    .bind(issued_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes every secret of `kind` that belongs to `subject`.
pub async fn revoke(
    conn: &mut PgConnection,
    kind: SecretKind,
    subject: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE credentials SET revoked_at = $3 WHERE kind = $1 AND subject_id = $2 AND revoked_at IS NULL",
    )
    .bind(kind.as_str())
    .bind(subject)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The subject of a live (unrevoked) secret of `kind`, if the hash is one.
pub async fn subject(
    pool: &PgPool,
    hash: &SecretHash,
    kind: SecretKind,
) -> Result<Option<Uuid>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT subject_id FROM credentials WHERE secret_hash = $1 AND kind = $2 AND revoked_at IS NULL",
    )
    .bind(hash.as_bytes().as_slice())
    .bind(kind.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|r| r.try_get("subject_id")).transpose()
}

/// Whether any live secret of `kind` exists.
pub async fn any_live(pool: &PgPool, kind: SecretKind) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM credentials WHERE kind = $1 AND revoked_at IS NULL)",
    )
    .bind(kind.as_str())
    .fetch_one(pool)
    .await
}
