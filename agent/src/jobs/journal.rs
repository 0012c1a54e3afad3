//! The job journal: what this agent did with each job, on disk. It is what makes a job run at
//! most once whatever crashes when (the server grants a job's claim once, to one attempt of its
//! own agent; the journal says what happened to it here):
//!
//! - no entry: the job never started here. It is claimed: asked again by the same attempt
//!   because the answer was lost, a granted claim is granted again; a job claimed by another
//!   attempt (before a restart, or by a clone with this identity) is answered "already started"
//!   and reported as interrupted, never run.
//! - `Running`: written (fsynced) after the server said "run", before the process starts.
//!   Found after a restart, the job may have run partly; it is never run again and is reported
//!   as interrupted.
//! - `Finished`: the result, written (fsynced) before it is published. Found after a restart,
//!   the stored result is published again (the job is not run again).
//! - `Reported` / `Refused`: nothing left to do; a redelivery is simply acknowledged. These are
//!   not fsynced: losing one in a crash costs only a repeat (the stored result published again,
//!   which the server records once; or the claim asked again, which is refused again).
//!
//! The journal is one append-only file: a JSON line per change, fsynced (`fdatasync`) when the
//! change must survive a crash, so a durable change costs one flush. Opening it replays the
//! file; a last line cut short by a crash is dropped (nothing that followed it happened, since
//! its flush never returned). Settled entries older than the transport's retention are pruned
//! by rewriting the file (write, fsync, rename, fsync the directory), which also happens on its
//! own when the file has grown well beyond what it holds.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use logbook_proto::agent::v1::JobResultReport;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::state::{StateError, io_error, write_atomically};

/// The journal's file in its directory.
const FILE: &str = "journal.log";

/// Lines beyond the live entries after which the file is rewritten.
const COMPACT_SLACK: usize = 10_000;

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

/// One line of the file.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    seq: u64,
    job: String,
    /// Unix seconds when it was written (for pruning).
    at: u64,
    entry: Entry,
}

struct Inner {
    file: File,
    entries: BTreeMap<(u64, String), (Entry, u64)>,
    lines: usize,
}

/// The job journal of one agent.
#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

fn now_secs() -> u64 {
    u64::try_from(crate::collector::now_unix_ms() / 1000).unwrap_or(0)
}

impl Journal {
    /// Opens (or creates) the journal in `dir` (which exists) and replays it.
    pub fn open(dir: PathBuf) -> Result<Self, StateError> {
        let path = dir.join(FILE);
        let created = !path.exists();
        let mut file = append_to(&path, true)?;
        if created {
            // The new file's name must survive a crash as well as what is written to it.
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error("flushing", &dir))?;
        }
        let mut entries = BTreeMap::new();
        let mut lines = 0;
        let mut good_len = 0u64;
        let mut reader = BufReader::new(&mut file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(io_error("reading", &path))?;
            if read == 0 {
                break;
            }
            // A line cut short by a crash (no newline yet) can only be the last one.
            if line.last() != Some(&b'\n') {
                break;
            }
            let record: Record = serde_json::from_slice(&line).map_err(corrupt(&path))?;
            entries.insert((record.seq, record.job), (record.entry, record.at));
            lines += 1;
            good_len += read as u64;
        }
        drop(reader);
        let len = file.metadata().map_err(io_error("reading", &path))?.len();
        if good_len < len {
            tracing::warn!(path = %path.display(), dropped_bytes = len - good_len, "dropping an unfinished last line of the job journal");
            // Appends go to the (new) end.
            file.set_len(good_len)
                .map_err(io_error("truncating", &path))?;
        }
        Ok(Self {
            dir,
            inner: Arc::new(Mutex::new(Inner {
                file,
                entries,
                lines,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map as consistent as the file: use it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry of a job, if any.
    pub fn get(&self, agent_seq: u64, job_id: &str) -> Option<Entry> {
        self.lock()
            .entries
            .get(&(agent_seq, job_id.to_string()))
            .map(|(entry, _)| entry.clone())
    }

    /// Records a job's entry; durably (flushed before this returns) when a lost entry could
    /// make the job run twice or lose its result.
    pub fn put(&self, agent_seq: u64, job_id: &str, entry: &Entry) -> Result<(), StateError> {
        let path = self.dir.join(FILE);
        let at = now_secs();
        let mut line = Vec::new();
        let record = Record {
            seq: agent_seq,
            job: job_id.to_string(),
            at,
            entry: entry.clone(),
        };
        write_line(&mut line, &record).map_err(corrupt(&path))?;
        let durable = matches!(entry, Entry::Running | Entry::Finished { .. });
        let mut inner = self.lock();
        inner
            .file
            .write_all(&line)
            .and_then(|()| {
                if durable {
                    inner.file.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(io_error("writing", &path))?;
        inner
            .entries
            .insert((record.seq, record.job), (record.entry, at));
        inner.lines += 1;
        if inner.lines > inner.entries.len() * 4 + COMPACT_SLACK {
            self.rewrite(&mut inner)?;
        }
        Ok(())
    }

    /// Results finished but not yet published, in queue order.
    pub fn unreported(&self) -> Vec<(u64, String, JobResultReport)> {
        self.lock()
            .entries
            .iter()
            .filter_map(|((seq, job), (entry, _))| {
                entry.report().map(|report| (*seq, job.clone(), report))
            })
            .collect()
    }

    /// Removes settled entries older than `age`; returns how many.
    pub fn prune(&self, age: Duration) -> Result<usize, StateError> {
        let cutoff = now_secs().saturating_sub(age.as_secs());
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.entries.retain(|_, (entry, at)| {
            !(matches!(entry, Entry::Reported | Entry::Refused { .. }) && *at <= cutoff)
        });
        let removed = before - inner.entries.len();
        if removed > 0 || inner.lines > inner.entries.len() {
            self.rewrite(&mut inner)?;
        }
        Ok(removed)
    }

    /// Rewrites the file with one line per live entry, atomically and durably.
    fn rewrite(&self, inner: &mut Inner) -> Result<(), StateError> {
        let path = self.dir.join(FILE);
        let mut bytes = Vec::new();
        for ((seq, job), (entry, at)) in &inner.entries {
            let record = Record {
                seq: *seq,
                job: job.clone(),
                at: *at,
                entry: entry.clone(),
            };
            write_line(&mut bytes, &record).map_err(corrupt(&path))?;
        }
        write_atomically(&self.dir, FILE, &bytes)?;
        inner.file = append_to(&path, false)?;
        inner.lines = inner.entries.len();
        Ok(())
    }
}

/// Opens the journal's file for appending (and reading), creating it (mode 0600) if `create`.
fn append_to(path: &Path, create: bool) -> Result<File, StateError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(create);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(io_error("opening", path))
}

/// Appends `record` to `out` as one JSON line.
fn write_line(out: &mut Vec<u8>, record: &Record) -> Result<(), serde_json::Error> {
    serde_json::to_writer(&mut *out, record)?;
    out.push(b'\n');
    Ok(())
}

fn corrupt(path: &Path) -> impl FnOnce(serde_json::Error) -> StateError + '_ {
    move |e| StateError::Corrupt {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(job: &str, exit_code: i32) -> JobResultReport {
        JobResultReport {
            job_id: job.into(),
            exit_code,
            has_exit_code: true,
            ..Default::default()
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_unreported_results_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path().to_path_buf()).expect("open");
        assert_eq!(journal.get(1, "a"), None);
        journal.put(1, "a", &Entry::Running).expect("write");
        journal
            .put(2, "b", &Entry::finished(&report("b", 3)))
            .expect("write");
        journal.put(3, "c", &Entry::Running).expect("write");
        journal.put(3, "c", &Entry::Reported).expect("write");
        drop(journal);

        let journal = Journal::open(dir.path().to_path_buf()).expect("reopen");
        assert_eq!(journal.get(1, "a"), Some(Entry::Running));
        assert_eq!(journal.get(3, "c"), Some(Entry::Reported));
        let unreported = journal.unreported();
        assert_eq!(unreported.len(), 1);
        assert_eq!(unreported[0].2, report("b", 3));
        assert_eq!(
            journal.prune(Duration::ZERO).expect("prune"),
            1,
            "only settled entries go"
        );
        drop(journal);
        let journal = Journal::open(dir.path().to_path_buf()).expect("reopen");
        assert_eq!(journal.get(3, "c"), None, "pruned for good");
        assert_eq!(journal.get(1, "a"), Some(Entry::Running));
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_dropped_and_the_journal_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path().to_path_buf()).expect("open");
        journal.put(1, "a", &Entry::Running).expect("write");
        drop(journal);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .expect("file");
        file.write_all(br#"{"seq":2,"job":"b","at":1,"entry":{"sta"#)
            .expect("torn write");
        drop(file);

        let journal = Journal::open(dir.path().to_path_buf()).expect("reopen");
        assert_eq!(journal.get(2, "b"), None);
        journal.put(2, "b", &Entry::Running).expect("write");
        drop(journal);
        let journal = Journal::open(dir.path().to_path_buf()).expect("reopen");
        assert_eq!(journal.get(1, "a"), Some(Entry::Running));
        assert_eq!(journal.get(2, "b"), Some(Entry::Running));
    }

    #[test]
    fn the_file_is_rewritten_when_it_outgrows_its_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path().to_path_buf()).expect("open");
        for _ in 0..(COMPACT_SLACK + 10) {
            journal.put(1, "a", &Entry::Reported).expect("write");
        }
        let lines = std::fs::read_to_string(dir.path().join(FILE))
            .expect("read")
            .lines()
            .count();
        assert!(lines < 100, "{lines} lines for one entry");
        drop(journal);
        let journal = Journal::open(dir.path().to_path_buf()).expect("reopen");
        assert_eq!(journal.get(1, "a"), Some(Entry::Reported));
    }
}
