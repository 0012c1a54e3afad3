//! The job journal: what this agent did with each job, on disk. It is what makes a job run at
//! most once whatever crashes when (the server's claim answer is final, so a job that was
//! claimed is never run again; the journal says what happened to it here):
//!
//! - no entry: the job never started here. It is claimed (again): a job claimed before a
//!   restart is answered "already started" and reported as interrupted before it began.
//! - `Running`: written (fsynced) after the server said "run", before the process starts.
//!   Found after a restart, the job may have run partly; it is never run again and is reported
//!   as interrupted.
//! - `Finished`: the result, written (fsynced) before it is published. Found after a restart,
//!   the stored result is published again (the job is not run again).
//! - `Reported` / `Refused`: nothing left to do; a redelivery is simply acknowledged. These are
//!   not fsynced: losing one in a crash costs only a repeat (the stored result published again,
//!   which the server records once; or the claim asked again, which is refused again).
//!
//! One small file per job, named by the job's place in the agent's queue; entries older than
//! the transport's retention are pruned.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use logbook_proto::agent::v1::JobResultReport;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::state::{StateError, write_atomically};

/// Where a job is, for this agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Entry {
    /// The server said run; the process is (or was) running.
    Running,
    /// It ended; the result (a `JobResultReport`, base64 protobuf) is not yet acknowledged by
    /// JetStream.
    Finished {
        /// The encoded result.
        report: String,
    },
    /// The result was published.
    Reported,
    /// The server said not to run it.
    Refused {
        /// Why.
        verdict: String,
    },
}

impl Entry {
    /// A finished entry holding `report`.
    pub fn finished(report: &JobResultReport) -> Self {
        Entry::Finished {
            report: STANDARD.encode(report.encode_to_vec()),
        }
    }

    /// The stored result of a finished entry.
    pub fn report(&self) -> Option<JobResultReport> {
        match self {
            Entry::Finished { report } => STANDARD
                .decode(report)
                .ok()
                .and_then(|bytes| JobResultReport::decode(bytes.as_slice()).ok()),
            _ => None,
        }
    }
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

fn file_name(agent_seq: u64, job_id: &str) -> String {
    format!("{agent_seq:020}-{job_id}.json")
}

impl Journal {
    /// The journal in `dir` (which exists).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The entry of a job, if any.
    pub fn get(&self, agent_seq: u64, job_id: &str) -> Result<Option<Entry>, StateError> {
        let path = self.dir.join(file_name(agent_seq, job_id));
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path,
                        source: Box::new(e),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io {
                action: "reading",
                path,
                source,
            }),
        }
    }

    /// Records a job's entry: atomically always, durably (fsynced) when a lost entry could
    /// make the job run twice or lose its result.
    pub fn put(&self, agent_seq: u64, job_id: &str, entry: &Entry) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| StateError::Corrupt {
            path: self.dir.join(file_name(agent_seq, job_id)),
            source: Box::new(e),
        })?;
        let durable = matches!(entry, Entry::Running | Entry::Finished { .. });
        write_atomically(&self.dir, &file_name(agent_seq, job_id), &bytes, durable)
    }

    /// Results finished but not yet published, in queue order.
    pub fn unreported(&self) -> Result<Vec<(u64, String, JobResultReport)>, StateError> {
        let mut found = Vec::new();
        for path in self.files()? {
            let Some((seq, job)) = parse_name(&path) else {
                continue;
            };
            if let Some(entry @ Entry::Finished { .. }) = self.get(seq, &job)?
                && let Some(report) = entry.report()
            {
                found.push((seq, job, report));
            }
        }
        Ok(found)
    }

    /// Removes settled entries older than `age`.
    pub fn prune(&self, age: Duration) -> Result<usize, StateError> {
        let mut removed = 0;
        let cutoff = SystemTime::now() - age;
        for path in self.files()? {
            let Some((seq, job)) = parse_name(&path) else {
                continue;
            };
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old
                && matches!(
                    self.get(seq, &job)?,
                    Some(Entry::Reported | Entry::Refused { .. })
                )
            {
                let _ = fs::remove_file(&path);
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn files(&self) -> Result<Vec<PathBuf>, StateError> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(|source| StateError::Io {
                action: "listing",
                path: self.dir.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        Ok(files)
    }
}

fn parse_name(path: &Path) -> Option<(u64, String)> {
    let stem = path.file_stem()?.to_str()?;
    let (seq, job) = stem.split_once('-')?;
    Some((seq.parse().ok()?, job.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_and_unreported_results_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::new(dir.path().to_path_buf());
        assert_eq!(journal.get(1, "a").expect("read"), None);
        journal.put(1, "a", &Entry::Running).expect("write");
        assert_eq!(journal.get(1, "a").expect("read"), Some(Entry::Running));
        let report = JobResultReport {
            job_id: "b".into(),
            exit_code: 3,
            has_exit_code: true,
            ..Default::default()
        };
        journal
            .put(2, "b", &Entry::finished(&report))
            .expect("write");
        journal.put(3, "c", &Entry::Reported).expect("write");
        let unreported = journal.unreported().expect("scan");
        assert_eq!(unreported.len(), 1);
        assert_eq!(unreported[0].2, report);
        assert_eq!(
            journal.prune(Duration::ZERO).expect("prune"),
            1,
            "only settled entries go"
        );
    }
}
