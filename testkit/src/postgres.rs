//! One fresh, migrated Postgres database per test.
//!
//! The schema is migrated once into a template database named after a hash of the migrations;
//! each test then gets `CREATE DATABASE ... TEMPLATE`, which takes milliseconds. Test processes
//! run in parallel (nextest runs one process per test), so template creation is serialised with
//! an advisory lock and published with an atomic rename.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool};

/// The server tests use: `LOGBOOK_TEST_DATABASE_URL`, or the local default.
pub fn server_url() -> String {
    std::env::var("LOGBOOK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

const HINT: &str = "tests need PostgreSQL on 127.0.0.1:5432 (set LOGBOOK_TEST_DATABASE_URL to use another); \
                    install and start it with `ops/dev/services.sh`";

/// A database that exists for the duration of one test and is dropped afterwards.
pub struct TestDb {
    /// A pool connected to it.
    pub pool: PgPool,
    /// Its connection URL, for child processes.
    pub url: String,
    name: String,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("name", &self.name).finish()
    }
}

impl TestDb {
    /// Creates a migrated database for this test.
    pub async fn new() -> Self {
        Self::create(true).await
    }

    /// Creates an empty database for this test, with no migration applied (for tests of the
    /// migrations themselves).
    pub async fn empty() -> Self {
        Self::create(false).await
    }

    async fn create(migrated: bool) -> Self {
        let server = server_url();
        let base: PgConnectOptions = server
            .parse()
            .unwrap_or_else(|e| panic!("LOGBOOK_TEST_DATABASE_URL {server:?} is invalid: {e}"));
        let template = if migrated {
            ensure_template(&base).await
        } else {
            "template0".to_string()
        };
        let name = format!("logbook_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = connect(&base).await;
        admin
            .execute(format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#).as_str())
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let options = base.clone().database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("connecting to {name}: {e}"));
        Self { pool, url, name }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let server = server_url();
        // FORCE ends connections the test left open.
        crate::block_on_aside(async move {
            let Ok(base) = server.parse::<PgConnectOptions>() else {
                return;
            };
            if let Ok(mut admin) = base.connect().await {
                let _ = admin
                    .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                    .await;
            }
        });
    }
}

async fn connect(options: &PgConnectOptions) -> PgConnection {
    match options.connect().await {
        Ok(conn) => conn,
        Err(e) => panic!("cannot connect to PostgreSQL: {e}. {HINT}"),
    }
}

/// The template's name: per role (a role may only copy databases it owns) and per schema.
fn template_name(role: &str) -> String {
    let mut hash = Sha256::new();
    for (version, file, sql) in logbook_migrations::MIGRATIONS {
        hash.update(version.to_le_bytes());
        hash.update(file.as_bytes());
        hash.update(sql.as_bytes());
    }
    let role: String = role.chars().filter(char::is_ascii_alphanumeric).collect();
    format!(
        "logbook_template_{role}_{}",
        &hex::encode(hash.finalize())[..16]
    )
}

async fn ensure_template(base: &PgConnectOptions) -> String {
    let template = template_name(base.get_username());
    let mut admin = connect(base).await;
    if database_exists(&mut admin, &template).await {
        return template;
    }
    // Serialise template creation across test processes.
    sqlx::query("SELECT pg_advisory_lock(7366101)")
        .execute(&mut admin)
        .await
        .expect("advisory lock");
    if !database_exists(&mut admin, &template).await {
        let building = format!("{template}_building");
        admin
            .execute(format!(r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#).as_str())
            .await
            .expect("drop stale template build");
        admin
            .execute(format!(r#"CREATE DATABASE "{building}""#).as_str())
            .await
            .expect("create template database");
        {
            let mut conn = connect(&base.clone().database(&building)).await;
            logbook_migrations::migrator()
                .run(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("migrating the test template: {e}"));
            conn.close().await.expect("close template connection");
        }
        admin
            .execute(format!(r#"ALTER DATABASE "{building}" RENAME TO "{template}""#).as_str())
            .await
            .expect("publish template");
        // Templates of older schemas are of no further use.
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE $2 AND datname <> $1",
        )
        .bind(&template)
        .bind(format!(
            "{}%",
            template.rsplit_once('_').map_or("", |(prefix, _)| prefix)
        ))
        .fetch_all(&mut admin)
        .await
        .expect("list templates");
        for name in stale {
            let _ = admin
                .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
                .await;
        }
    }
    sqlx::query("SELECT pg_advisory_unlock(7366101)")
        .execute(&mut admin)
        .await
        .expect("advisory unlock");
    template
}

async fn database_exists(conn: &mut PgConnection, name: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
        .expect("query pg_database")
}
