//! Logbook's database schema as numbered, forward-only SQL files (the `.sql` files next to this
//! crate's `src/`), embedded at compile time so that `logbook migrate` needs nothing on disk.
//!
//! A migration, once released, is never edited: sqlx records each file's checksum and refuses to
//! run against a database whose applied migrations differ. Change the schema with a new file.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

macro_rules! migrations {
    ($($version:literal => $file:literal),* $(,)?) => {
        &[$(($version, $file, include_str!(concat!("../", $file)))),*]
    };
}

/// `(version, file name, SQL)` of every migration, in order.
pub const MIGRATIONS: &[(i64, &str, &str)] = migrations![
    1 => "0001_event_log.sql",
    2 => "0002_credentials.sql",
    3 => "0003_fleet_read_models.sql",
    4 => "0004_agent_timeline.sql",
    5 => "0005_notify_after_commit.sql",
    6 => "0006_jobs.sql",
    7 => "0007_agent_list_report_pointer.sql",
    8 => "0008_timeline_without_checkins.sql",
    9 => "0009_log_order_beside_checkins.sql",
    10 => "0010_idempotency_key_first.sql",
    11 => "0011_checkins_of_their_own.sql",
    12 => "0012_checkin_payload_as_text.sql",
];

/// A sqlx migrator over the embedded migrations.
pub fn migrator() -> Migrator {
    migrator_through(i64::MAX)
}

/// A sqlx migrator over the embedded migrations up to and including version `last`: a database
/// as an older release left it (for tests of a migration's treatment of existing data).
pub fn migrator_through(last: i64) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .filter(|(version, _, _)| *version <= last)
        .map(|(version, file, sql)| {
            let description = file
                .trim_end_matches(".sql")
                .split_once('_')
                .map_or(*file, |(_, rest)| rest)
                .replace('_', " ");
            Migration::new(
                *version,
                Cow::Owned(description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("read migrations dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(_, f, _)| *f).collect();
        assert_eq!(files, listed);
        for (i, (version, file, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i64 + 1);
            assert!(file.starts_with(&format!("{version:04}_")), "{file}");
        }
    }
}
