//! The agent's state directory: its identity (server, agent id, credential) and the spool of
//! check-ins not yet accepted by the server.
//!
//! Everything is written crash-safely (write to a temporary file, fsync, rename, fsync the
//! directory) and readable only by the agent's user (directory 0700, files 0600). A check-in is
//! spooled *before* it is sent and removed only after the server confirmed it, so an outage, a
//! crash or a reboot loses nothing; the check-in id inside makes a resend harmless.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use logbook_proto::agent::v1::CheckinRequest;
use prost::Message;
use serde::{Deserialize, Serialize};

/// Who this agent is, from enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The gateway's base URL.
    pub server_url: String,
    /// This agent's id.
    pub agent_id: String,
    /// This agent's bearer credential.
    pub credential: String,
    /// The client it belongs to.
    pub client_id: String,
    /// The site it belongs to.
    pub site_id: String,
    /// Where and how it receives jobs; absent for an agent enrolled before jobs existed.
    #[serde(default)]
    pub nats: Option<NatsIdentity>,
}

/// How the agent reaches NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsIdentity {
    /// The server URL.
    pub url: String,
    /// The names' namespace.
    pub namespace: String,
    /// The agent's user JWT; empty when the server runs without NATS authentication.
    pub user_jwt: String,
}

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another agent process works with this state directory.
    #[error(
        "another logbook-agent is running with the state directory {}; stop it first",
        path.display()
    )]
    Busy {
        /// The state directory.
        path: PathBuf,
    },
    /// A file is not what it should be.
    #[error("{path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(crate) fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

const IDENTITY_FILE: &str = "identity.json";
const NKEY_FILE: &str = "nats.nk";
const SPOOL_DIR: &str = "spool";
const JOURNAL_DIR: &str = "jobs";
const LOCK_FILE: &str = "lock";

/// Held while one agent process works with a state directory; released when dropped (or when
/// the process ends, however it ends).
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

impl StateDir {
    /// Opens (creating if needed) the directory.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        create_private_dir(root)?;
        create_private_dir(&root.join(SPOOL_DIR))?;
        create_private_dir(&root.join(JOURNAL_DIR))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Takes the directory for this process: two agents on one directory would work one job
    /// queue with one journal, and a job claimed by one could be judged by the other.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let path = self.root.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error("opening", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(StateError::Busy {
                path: self.root.clone(),
            }),
            Err(fs::TryLockError::Error(e)) => Err(io_error("locking", &path)(e)),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The stored identity, if the agent has enrolled.
    pub fn identity(&self) -> Result<Option<Identity>, StateError> {
        let path = self.root.join(IDENTITY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path,
                        source: Box::new(e),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading", &path)(e)),
        }
    }

    /// Stores the identity (mode 0600).
    pub fn save_identity(&self, identity: &Identity) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(identity).map_err(|e| StateError::Corrupt {
            path: self.root.join(IDENTITY_FILE),
            source: Box::new(e),
        })?;
        write_atomically(&self.root, IDENTITY_FILE, &bytes)
    }

    /// The agent's NATS NKey seed, if it has one.
    pub fn nkey_seed(&self) -> Result<Option<String>, StateError> {
        let path = self.root.join(NKEY_FILE);
        match fs::read_to_string(&path) {
            Ok(seed) => Ok(Some(seed.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("reading", &path)(e)),
        }
    }

    /// Stores the agent's NATS NKey seed (mode 0600). It never leaves the machine.
    pub fn save_nkey_seed(&self, seed: &str) -> Result<(), StateError> {
        write_atomically(&self.root, NKEY_FILE, seed.as_bytes())
    }

    /// The directory of the job journal.
    pub fn journal_dir(&self) -> PathBuf {
        self.root.join(JOURNAL_DIR)
    }

    /// The spool of unsent check-ins.
    pub fn spool(&self) -> Spool {
        Spool {
            dir: self.root.join(SPOOL_DIR),
        }
    }
}

/// Unsent check-ins, oldest first.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Stores a check-in durably.
    pub fn push(&self, request: &CheckinRequest) -> Result<(), StateError> {
        let collected = request
            .report
            .as_ref()
            .map_or(0, |r| r.collected_at_unix_ms)
            .max(0);
        // Zero-padded time first, so that name order is collection order.
        let name = format!("{collected:020}-{}.pb", request.checkin_id);
        write_atomically(&self.dir, &name, &request.encode_to_vec())
    }

    /// The spooled check-ins, oldest first.
    pub fn pending(&self) -> Result<Vec<PathBuf>, StateError> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io_error("listing", &self.dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pb"))
            .collect();
        files.sort();
        Ok(files)
    }

    /// Reads one spooled check-in.
    pub fn read(&self, path: &Path) -> Result<CheckinRequest, StateError> {
        let bytes = fs::read(path).map_err(io_error("reading", path))?;
        CheckinRequest::decode(bytes.as_slice()).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Removes a check-in the server has accepted (or refused for good).
    pub fn remove(&self, path: &Path) -> Result<(), StateError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("removing", path)(e)),
        }
    }

    /// Drops the oldest check-ins beyond `max`; returns how many were dropped.
    pub fn trim(&self, max: usize) -> Result<usize, StateError> {
        let pending = self.pending()?;
        let excess = pending.len().saturating_sub(max);
        for path in &pending[..excess] {
            self.remove(path)?;
        }
        Ok(excess)
    }
}

fn create_private_dir(path: &Path) -> Result<(), StateError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).map_err(io_error("creating", path))
}

/// Writes `name` in `dir` so that a crash leaves either the old or the new content, durably.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).map_err(io_error("creating", &temp))?;
    file.write_all(bytes).map_err(io_error("writing", &temp))?;
    file.sync_all().map_err(io_error("syncing", &temp))?;
    fs::rename(&temp, &target).map_err(io_error("renaming", &target))?;
    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use logbook_proto::agent::v1::CheckinReport;

    fn request(at: i64) -> CheckinRequest {
        CheckinRequest {
            checkin_id: uuid::Uuid::new_v4().to_string(),
            report: Some(CheckinReport {
                collected_at_unix_ms: at,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn identity_is_private_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(&dir.path().join("state")).expect("open");
        assert_eq!(state.identity().expect("read"), None);
        let identity = Identity {
            server_url: "http://x".into(),
            agent_id: "a".into(),
            credential: "lba_x".into(),
            client_id: "c".into(),
            site_id: "s".into(),
            nats: None,
        };
        state.save_identity(&identity).expect("save");
        assert_eq!(state.identity().expect("read"), Some(identity));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(state.path().join(IDENTITY_FILE))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(state.path())
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn one_process_at_a_time_works_with_a_state_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(dir.path()).expect("open");
        let held = state.lock().expect("first lock");
        let second = StateDir::open(dir.path()).expect("open again").lock();
        assert!(
            matches!(second, Err(StateError::Busy { .. })),
            "a second lock was taken: {second:?}"
        );
        drop(held);
        state.lock().expect("the lock is free once released");
    }

    #[test]
    fn the_spool_keeps_order_and_trims_the_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = StateDir::open(dir.path()).expect("open").spool();
        let (a, b, c) = (request(1_000), request(20_000), request(300_000));
        for r in [&c, &a, &b] {
            spool.push(r).expect("push");
        }
        let read: Vec<CheckinRequest> = spool
            .pending()
            .expect("list")
            .iter()
            .map(|p| spool.read(p).expect("read"))
            .collect();
        assert_eq!(read, vec![a, b.clone(), c.clone()]);
        assert_eq!(spool.trim(2).expect("trim"), 1);
        let read: Vec<CheckinRequest> = spool
            .pending()
            .expect("list")
            .iter()
            .map(|p| spool.read(p).expect("read"))
            .collect();
        assert_eq!(read, vec![b, c]);
    }
}
