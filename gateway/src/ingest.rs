//! Check-in ingest with group commit.
//!
//! Check-ins arrive far faster than one transaction each could record them, so concurrent
//! check-ins are collected and appended by one multi-row statement to the log's `checkins`
//! table (docs/adr/0005). The statement does all of the work that must be atomic with the
//! append:
//!
//! - **authentication**: it joins `credentials`, so a check-in whose credential is unknown,
//!   belongs to another agent or was revoked (decommissioned agent) is simply not inserted;
//! - **idempotency**: a check-in id already recorded for the agent is skipped (and the unique
//!   index `checkins_idempotency` settles races: see below);
//! - **ordering**: each agent's sequence numbers continue from its current maximum, in arrival
//!   order.
//!
//! Rows the statement did not insert are then classified (duplicate or unauthorised). Every
//! caller is answered only after its batch committed; synchronous commit stays on.
//!
//! The two per-row probes of the log (each agent's maximum, each known id) are needed only
//! when this lane cannot vouch for an agent. Each lane remembers the last sequence it recorded
//! for every agent it has seen, and numbers that agent's next check-ins from it without a probe;
//! a retried id is then caught by the unique index `checkins_idempotency` instead of a lookup.
//! This is right whenever the lane's memory is: an agent's sequences are dense, so if another
//! writer has appended since (another gateway), the number the lane picks is taken and the
//! statement fails on the primary key; a retried id fails it on `checkins_idempotency`. Either
//! failure writes nothing, and the batch runs again at once with both probes for every row.
//! The agents of a batch that failed so are then probed for ten minutes: an agent
//! whose check-ins alternate between gateways, or whose ids are replayed, costs the probes it
//! always cost, not a failed statement per batch. The memory is dropped whenever the database
//! connection fails (a failover or a restore could have lost commits it remembers). In the
//! steady state (one gateway per agent, few retries) the two probes per row are saved: about a
//! fifth of the statement (BENCHMARKS.md). When the lane vouches for every agent of a batch and
//! each agent has one check-in in it, the lane numbers the rows itself and a plainer statement
//! appends them ([`APPEND_VOUCHED_SQL`]: no window function, no sort).
//!
//! The insert has no `ON CONFLICT` clause: that would make Postgres probe every unique index
//! before each row and write a confirmation record after it (speculative insertion), for a
//! race that one gateway never has (see the lanes below). A race with another gateway (the same
//! agent's check-ins arriving at two gateways at once, or a retry of one arriving at the other)
//! makes the whole statement fail on a unique index; nothing of it is written and the batch is
//! retried, when the probes see the other gateway's rows.
//!
//! Check-ins are spread over `concurrent_flushes` lanes by agent id. A lane appends one batch at
//! a time: it takes everything already queued (up to `max_batch`), appends it, answers, and
//! takes the next; while a lane's append runs its queue grows and the next batch is bigger. At a
//! moderate rate that alone leaves batches of one or two, and each batch costs a statement, a
//! commit and its WAL flush, and the wake-ups of every process on the way (at 5,000 check-ins/s
//! the machine was 70-78 % busy, against 45-53 % with this wait, BENCHMARKS.md).
//! So a batch smaller than `min_batch` waits up to `max_wait` for more (and then takes whatever
//! else queued meanwhile, up to `max_batch`), unless the lane's previous batch was a lone
//! check-in: on a quiet gateway, where waiting would gather nothing, a check-in is appended at
//! once. Because an agent always lands in the same lane, two batches of one gateway never hold
//! the same agent: its check-ins keep their order and never contend for the
//! same sequence numbers (rows are also inserted in agent order, so batches of two gateways
//! cannot deadlock; a deadlock or serialization failure would be retried like a unique-index race).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use logbook_domain::checkin::CheckinReport;
use logbook_domain::ids::{AgentId, CheckinId};
use logbook_domain::metadata::{Actor, EventMetadata};
use logbook_domain::secret::SecretHash;
use logbook_projections::runner::Appended;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::IngestConfig;
use crate::db;
use crate::notify::LogNotifier;

/// How many times a check-in whose batch lost a race is retried.
const MAX_ATTEMPTS: u8 = 5;

/// A check-in on its way to the log.
#[derive(Debug)]
pub struct Submission {
    /// The agent it claims to come from (from the URL).
    pub agent_id: AgentId,
    /// Hash of the credential it presented.
    pub credential: SecretHash,
    /// The id the agent gave it.
    pub checkin_id: CheckinId,
    /// The serialized `CheckinEvent` (JSON).
    pub payload: String,
    /// The report's fields that are stored as columns of their own.
    pub facts: CheckinFacts,
    /// The request that carried it.
    pub request_id: String,
}

/// The fields of a report that the agent list shows, stored beside the report as typed
/// columns so that folding a check-in into the list never parses the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckinFacts {
    /// When the agent collected the report.
    pub collected_at: DateTime<Utc>,
    /// The machine's hostname.
    pub hostname: String,
    /// OS family.
    pub os_family: String,
    /// OS name.
    pub os_name: String,
    /// OS version.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// The agent's version.
    pub agent_version: String,
}

impl CheckinFacts {
    /// The fields of `report` (moved, not copied: call it once the report is serialized).
    pub fn of(report: CheckinReport) -> Self {
        Self {
            collected_at: report.collected_at,
            hostname: report.hostname,
            os_family: report.os.family,
            os_name: report.os.name,
            os_version: report.os.version,
            kernel_version: report.os.kernel_version,
            arch: report.os.arch,
            agent_version: report.agent_version,
        }
    }
}

/// A recorded check-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Its sequence in the agent's check-in stream.
    pub sequence: i64,
    /// True when this id had been recorded before (a retry).
    pub duplicate: bool,
    /// When it was recorded (for a duplicate, when the first copy was).
    pub recorded_at: DateTime<Utc>,
}

/// Why a check-in was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The credential is not this agent's live credential.
    #[error("invalid agent credential")]
    Unauthorized,
    /// Postgres is unavailable.
    #[error("the event store is unavailable")]
    Unavailable,
    /// The queue is full.
    #[error("too many check-ins waiting; retry later")]
    Overloaded,
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// Something unexpected; logged where it happened.
    #[error("check-in could not be recorded")]
    Internal,
}

struct Pending {
    submission: Submission,
    reply: oneshot::Sender<Result<Recorded, IngestError>>,
    attempts: u8,
    queued_at: Instant,
}

/// The handle through which HTTP handlers submit check-ins.
#[derive(Debug, Clone)]
pub struct Ingest {
    lanes: Arc<[mpsc::Sender<Pending>]>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("checkin_id", &self.submission.checkin_id)
            .finish()
    }
}

impl Ingest {
    /// Starts the lanes. They run until every `Ingest` clone is dropped, then finish the batch in
    /// flight and return; the handle completes when all have.
    pub fn start(
        pool: PgPool,
        config: IngestConfig,
        notifier: LogNotifier,
    ) -> (Self, JoinHandle<()>) {
        let lanes = config.concurrent_flushes.max(1);
        let capacity = (config.queue_capacity / lanes).max(config.max_batch);
        let mut senders = Vec::with_capacity(lanes);
        let mut handles = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let (tx, rx) = mpsc::channel(capacity);
            let retry = tx.downgrade();
            handles.push(tokio::spawn(lane(
                pool.clone(),
                config.clone(),
                rx,
                retry,
                notifier.clone(),
            )));
            senders.push(tx);
        }
        let done = tokio::spawn(async move {
            for handle in handles {
                let _ = handle.await;
            }
        });
        (
            Self {
                lanes: senders.into(),
            },
            done,
        )
    }

    /// Records a check-in and returns once it is committed (or refused).
    pub async fn submit(&self, submission: Submission) -> Result<Recorded, IngestError> {
        let lane = &self.lanes[lane_of(submission.agent_id, self.lanes.len())];
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            submission,
            reply,
            attempts: 0,
            queued_at: Instant::now(),
        };
        lane.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
        })?;
        answer.await.map_err(|_| IngestError::ShuttingDown)?
    }
}

fn lane_of(agent: AgentId, lanes: usize) -> usize {
    let (high, low) = agent.as_uuid().as_u64_pair();
    ((high ^ low) % lanes as u64) as usize
}

async fn lane(
    pool: PgPool,
    config: IngestConfig,
    mut rx: mpsc::Receiver<Pending>,
    retry: mpsc::WeakSender<Pending>,
    notifier: LogNotifier,
) {
    let mut sequences = Sequences::default();
    let wait_until = config.min_batch.min(config.max_batch);
    // Whether the previous batch was a single check-in (see the module documentation); a lane
    // starts as a quiet one, so that the first check-in is appended at once.
    let mut lone = true;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        take_queued(&mut rx, &mut batch, config.max_batch);
        if batch.len() < wait_until && !lone && !config.max_wait.is_zero() {
            let deadline = tokio::time::Instant::now() + config.max_wait;
            while batch.len() < wait_until {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => batch.push(next),
                    _ => break,
                }
            }
            // What queued meanwhile beyond `min_batch` goes too, rather than a flush later.
            take_queued(&mut rx, &mut batch, config.max_batch);
        }
        lone = batch.len() == 1;
        metrics::gauge!("logbook_ingest_queue_depth").set(rx.len() as f64);
        flush(&pool, batch, &retry, &notifier, &mut sequences).await;
    }
}

/// Moves what is already queued into `batch`, up to `max` check-ins in all.
fn take_queued(rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

/// How long the agents of a batch that failed on a unique index are appended with both probes.
const SUSPECT_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// What a lane knows of the agents it appends for: the last sequence it recorded for each, and
/// which to probe for (see the module documentation). The memory is never ahead of the log
/// while commits are durable: it is set from committed rows only.
#[derive(Debug, Default)]
struct Sequences {
    last: HashMap<Uuid, i64>,
    suspects: HashMap<Uuid, Instant>,
}

impl Sequences {
    /// Agents remembered at most; past this the memory starts again (costing the probes once
    /// per agent), so that a gateway that has seen agents come and go for years stays small.
    const CAPACITY: usize = 1_000_000;

    /// The sequence to number `agent`'s next check-ins from, if the lane can vouch for it.
    fn vouch(&self, agent: Uuid) -> Option<i64> {
        if self
            .suspects
            .get(&agent)
            .is_some_and(|since| since.elapsed() < SUSPECT_FOR)
        {
            return None;
        }
        self.last.get(&agent).copied()
    }

    fn recorded(&mut self, agent: Uuid, sequence: i64) {
        if self.last.len() >= Self::CAPACITY && !self.last.contains_key(&agent) {
            self.last.clear();
        }
        let last = self.last.entry(agent).or_insert(sequence);
        *last = (*last).max(sequence);
    }

    /// `agent` was in a batch that a unique index refused: probe for it for a while.
    fn suspect(&mut self, agent: Uuid) {
        self.last.remove(&agent);
        if self.suspects.len() >= Self::CAPACITY {
            self.suspects
                .retain(|_, since| since.elapsed() < SUSPECT_FOR);
        }
        self.suspects.insert(agent, Instant::now());
    }

    fn forget_all(&mut self) {
        self.last.clear();
    }
}

/// Appends one batch and answers every caller in it.
async fn flush(
    pool: &PgPool,
    mut batch: Vec<Pending>,
    retry: &mpsc::WeakSender<Pending>,
    notifier: &LogNotifier,
    sequences: &mut Sequences,
) {
    let started = Instant::now();
    metrics::histogram!("logbook_ingest_batch_size").record(batch.len() as f64);
    // In agent order (each agent's check-ins keep their order of arrival): the order the rows are
    // inserted in, whichever statement appends them (see `append`).
    batch.sort_by_key(|pending| pending.submission.agent_id.as_uuid());

    // A check-in retried while its first attempt is still queued appears twice; send it once
    // and give both callers the same answer.
    let mut unique: Vec<Pending> = Vec::with_capacity(batch.len());
    let mut echoes: Vec<(usize, Pending)> = Vec::new();
    let mut index: HashMap<(AgentId, CheckinId), usize> = HashMap::with_capacity(batch.len());
    for pending in batch {
        let key = (pending.submission.agent_id, pending.submission.checkin_id);
        match index.get(&key) {
            Some(&i) => echoes.push((i, pending)),
            None => {
                index.insert(key, unique.len());
                unique.push(pending);
            }
        }
    }

    let recorded_at = Utc::now();
    let last: Vec<Option<i64>> = unique
        .iter()
        .map(|p| sequences.vouch(p.submission.agent_id.as_uuid()))
        .collect();
    let vouched = last.iter().any(Option::is_some);
    let attempt = match append(pool, &unique, recorded_at, &last).await {
        Err(e) if vouched && db::is_unique_violation(&e) => {
            // A retried id, or another writer appended for one of these agents: nothing was
            // written; do it again with the probes, and keep probing for these agents.
            metrics::counter!("logbook_ingest_probed_again_batches_total").increment(1);
            for pending in &unique {
                sequences.suspect(pending.submission.agent_id.as_uuid());
            }
            append(pool, &unique, recorded_at, &vec![None; unique.len()]).await
        }
        other => other,
    };
    let outcomes = match attempt {
        Ok(outcomes) => {
            let mut any = false;
            for (pending, outcome) in unique.iter().zip(&outcomes) {
                if let Outcome::Recorded(recorded) = outcome
                    && !recorded.duplicate
                {
                    any = true;
                    sequences.recorded(pending.submission.agent_id.as_uuid(), recorded.sequence);
                }
            }
            if any {
                notifier.notify(Appended::CheckinsOnly);
            }
            outcomes
        }
        Err(e) if db::is_transient_conflict(&e) || db::is_unique_violation(&e) => {
            for pending in &unique {
                sequences.suspect(pending.submission.agent_id.as_uuid());
            }
            tracing::debug!(error = %e, batch = unique.len(), "check-in batch lost a race; retrying it");
            vec![Outcome::Retry; unique.len()]
        }
        Err(e) => {
            let error = if db::is_unavailable(&e) {
                // What this lane remembers may have been lost with the server (a failover, a
                // restore): rely on the log again.
                sequences.forget_all();
                tracing::warn!(error = %e, batch = unique.len(), "check-in batch not recorded: database unavailable");
                IngestError::Unavailable
            } else {
                tracing::error!(error = %e, batch = unique.len(), "check-in batch failed");
                IngestError::Internal
            };
            vec![Outcome::Failed(error); unique.len()]
        }
    };
    metrics::histogram!("logbook_ingest_flush_seconds").record(started.elapsed().as_secs_f64());

    let mut answers: Vec<Option<Result<Recorded, IngestError>>> = vec![None; unique.len()];
    for (i, (pending, outcome)) in unique.into_iter().zip(outcomes).enumerate() {
        let answer = match outcome {
            Outcome::Recorded(recorded) => Ok(recorded),
            Outcome::Failed(error) => Err(error),
            Outcome::Retry if pending.attempts + 1 < MAX_ATTEMPTS => {
                let mut pending = pending;
                pending.attempts += 1;
                metrics::counter!("logbook_ingest_retries_total").increment(1);
                match retry.upgrade() {
                    Some(sender) => match sender.try_send(pending) {
                        Ok(()) => continue,
                        Err(e) => {
                            let pending = match e {
                                mpsc::error::TrySendError::Full(p)
                                | mpsc::error::TrySendError::Closed(p) => p,
                            };
                            let _ = pending.reply.send(Err(IngestError::Overloaded));
                            continue;
                        }
                    },
                    None => {
                        let _ = pending.reply.send(Err(IngestError::ShuttingDown));
                        continue;
                    }
                }
            }
            Outcome::Retry => Err(IngestError::Unavailable),
        };
        metrics::histogram!("logbook_ingest_latency_seconds")
            .record(pending.queued_at.elapsed().as_secs_f64());
        answers[i] = Some(answer.clone());
        let _ = pending.reply.send(answer);
    }
    for (i, echo) in echoes {
        let answer = match &answers[i] {
            Some(Ok(recorded)) => Ok(Recorded {
                duplicate: true,
                ..*recorded
            }),
            Some(Err(e)) => Err(e.clone()),
            None => Err(IngestError::Unavailable),
        };
        let _ = echo.reply.send(answer);
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Recorded(Recorded),
    Failed(IngestError),
    Retry,
}

/// The batch append: authenticate, skip known ids, number, insert, in one statement. Per row,
/// `$16` is the last sequence of its agent when the lane can vouch for it, else null: then, and
/// only then, the row's id is looked up and its agent's maximum probed (see the module
/// documentation). Every per-row step is an index probe (the
/// `LATERAL ... LIMIT 1` keeps the planner from hashing the whole credentials table for a small
/// batch), so its cost follows the batch, not the fleet. The report's fields that the agent list
/// shows arrive as columns of their own (`$6`..`$13`), so that nothing in Postgres parses the
/// report; the payload is stored as the text the gateway serialized (`checkins.payload` is
/// `text`: migration 0012), the metadata checked as JSON.
const APPEND_SQL: &str = "\
WITH authed AS ( \
    SELECT i.* FROM unnest($1::uuid[], $2::bytea[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[], \
                           $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
                           $15::int[], $16::bigint[]) \
        AS i(agent_id, secret_hash, checkin_id, payload, metadata, collected_at, hostname, os_family, os_name, \
             os_version, kernel_version, arch, agent_version, ord, last_sequence) \
     CROSS JOIN LATERAL (SELECT 1 FROM credentials c \
                          WHERE c.secret_hash = i.secret_hash AND c.kind = 'agent' \
                            AND c.subject_id = i.agent_id AND c.revoked_at IS NULL LIMIT 1) c \
), fresh AS ( \
    SELECT a.* FROM authed a \
     WHERE a.last_sequence IS NOT NULL \
        OR NOT EXISTS (SELECT 1 FROM checkins k \
                        WHERE k.checkin_id = a.checkin_id AND k.agent_id = a.agent_id) \
), numbered AS ( \
    SELECT f.*, \
           CASE WHEN f.last_sequence IS NOT NULL THEN f.last_sequence \
                ELSE COALESCE((SELECT max(k.sequence) FROM checkins k WHERE k.agent_id = f.agent_id), 0) END \
           + row_number() OVER (PARTITION BY f.agent_id ORDER BY f.ord) AS seq \
      FROM fresh f \
) \
INSERT INTO checkins (agent_id, sequence, checkin_id, recorded_at, collected_at, hostname, os_family, os_name, \
                      os_version, kernel_version, arch, agent_version, payload, metadata) \
SELECT agent_id, seq, checkin_id, $14, collected_at, hostname, os_family, os_name, os_version, kernel_version, \
       arch, agent_version, payload, metadata::json \
  FROM numbered ORDER BY numbered.agent_id, numbered.ord \
RETURNING agent_id, sequence, checkin_id";

/// The batch append when the lane vouches for every agent of the batch and each agent has one
/// check-in in it, the steady state: `$15` is each row's sequence, numbered by the lane, so the
/// statement neither probes the log nor numbers rows (no window function, no sort: the rows
/// arrive in agent order and are inserted in it). It authenticates each row as [`APPEND_SQL`]
/// does; a row it leaves out leaves no gap, since its agent has no other row in the batch.
/// A sequence or id that another writer took fails the statement on a unique index, as with
/// [`APPEND_SQL`] and its vouched rows.
const APPEND_VOUCHED_SQL: &str = "\
INSERT INTO checkins (agent_id, sequence, checkin_id, recorded_at, collected_at, hostname, os_family, os_name, \
                      os_version, kernel_version, arch, agent_version, payload, metadata) \
SELECT i.agent_id, i.seq, i.checkin_id, $14, i.collected_at, i.hostname, i.os_family, i.os_name, i.os_version, \
       i.kernel_version, i.arch, i.agent_version, i.payload, i.metadata::json \
  FROM unnest($1::uuid[], $2::bytea[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], \
              $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $15::bigint[]) \
       AS i(agent_id, secret_hash, checkin_id, payload, metadata, collected_at, hostname, os_family, os_name, \
            os_version, kernel_version, arch, agent_version, seq) \
 CROSS JOIN LATERAL (SELECT 1 FROM credentials c \
                      WHERE c.secret_hash = i.secret_hash AND c.kind = 'agent' \
                        AND c.subject_id = i.agent_id AND c.revoked_at IS NULL LIMIT 1) c \
RETURNING agent_id, sequence, checkin_id";

/// The append's arguments: at most 16, of which all but one are arrays.
const APPEND_ARGUMENTS: usize = 16;

/// About how many bytes the append's arguments take encoded, besides the metadata: the texts of
/// `text_columns`, each row's fixed-size values (agent and check-in id, 16 bytes each; the
/// credential's hash, 32; the collection time, the sequence, the order and the last sequence, 8
/// each), the 4-byte length sqlx writes before every array element, and each argument's header
/// (24 bytes at most).
fn encoded_size(text_columns: &[&[&str]], rows: usize) -> usize {
    const FIXED_PER_ROW: usize = 16 + 16 + 32 + 8 * 4 + 4 * APPEND_ARGUMENTS;
    let texts: usize = text_columns
        .iter()
        .flat_map(|column| column.iter())
        .map(|text| text.len())
        .sum();
    texts + rows * FIXED_PER_ROW + APPEND_ARGUMENTS * 24
}

/// Why rows were left out of the append. The lookup of each id is a `LATERAL ... LIMIT 1`, an
/// index probe per row whatever the planner thinks of the log's size: a plain join, planned
/// once while the log was small, could hash the whole log for every batch ever after.
const CLASSIFY_SQL: &str = "\
SELECT i.ord, k.sequence AS existing, k.recorded_at AS first_recorded_at, \
       EXISTS (SELECT 1 FROM credentials c \
                WHERE c.secret_hash = i.secret_hash AND c.kind = 'agent' \
                  AND c.subject_id = i.agent_id AND c.revoked_at IS NULL) AS authed \
  FROM unnest($1::uuid[], $2::bytea[], $3::uuid[], $4::int[]) AS i(agent_id, secret_hash, checkin_id, ord) \
  LEFT JOIN LATERAL (SELECT k.sequence, k.recorded_at FROM checkins k \
                      WHERE k.checkin_id = i.checkin_id AND k.agent_id = i.agent_id LIMIT 1) k ON true";

/// Appends `batch`, numbering each check-in from `last` (per check-in, its agent's last
/// sequence when the lane vouches for it) and probing the log where it is `None`, and says what
/// became of each check-in.
async fn append(
    pool: &PgPool,
    batch: &[Pending],
    recorded_at: DateTime<Utc>,
    last: &[Option<i64>],
) -> Result<Vec<Outcome>, sqlx::Error> {
    let n = batch.len();
    let mut agents = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut checkins = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut ords = Vec::with_capacity(n);
    let mut collected = Vec::with_capacity(n);
    let mut hostnames = Vec::with_capacity(n);
    let mut families = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut kernels = Vec::with_capacity(n);
    let mut arches = Vec::with_capacity(n);
    let mut agent_versions = Vec::with_capacity(n);
    for (i, pending) in batch.iter().enumerate() {
        let s = &pending.submission;
        agents.push(s.agent_id.as_uuid());
        hashes.push(s.credential.as_bytes().to_vec());
        checkins.push(s.checkin_id.as_uuid());
        payloads.push(s.payload.as_str());
        let facts = &s.facts;
        collected.push(facts.collected_at);
        hostnames.push(facts.hostname.as_str());
        families.push(facts.os_family.as_str());
        names.push(facts.os_name.as_str());
        versions.push(facts.os_version.as_str());
        kernels.push(facts.kernel_version.as_str());
        arches.push(facts.arch.as_str());
        agent_versions.push(facts.agent_version.as_str());
        let meta = EventMetadata {
            actor: Actor::Agent(s.agent_id),
            correlation_id: logbook_domain::ids::CorrelationId::from(s.checkin_id.as_uuid()),
            request_id: s.request_id.clone(),
            recorded_at,
        };
        metadata.push(meta.to_json());
        ords.push(i as i32);
    }
    // The batch is in agent order (`flush`): an agent with two check-ins has them side by side.
    let vouched: Option<Vec<i64>> = if agents.windows(2).all(|pair| pair[0] != pair[1]) {
        last.iter().map(|last| last.map(|l| l + 1)).collect()
    } else {
        None
    };
    // `$1`..`$14` are the same in both statements; each adds its own after them.
    let sql = if vouched.is_some() {
        metrics::counter!("logbook_ingest_vouched_batches_total").increment(1);
        APPEND_VOUCHED_SQL
    } else {
        APPEND_SQL
    };
    // The statement's arguments are encoded into one buffer, sized here once. Grown as it was
    // filled, a batch's buffer (about 1.5 KiB per check-in) was copied into one twice as large
    // again and again, often into memory the kernel had to zero first: under saturated
    // check-ins the kernel's page zeroing alone was 2.6 % of the gateway's CPU, 0.5 % since
    // (BENCHMARKS.md, the nineteenth machine).
    let mut arguments = PgArguments::default();
    let texts: [&[&str]; 8] = [
        &payloads,
        &hostnames,
        &families,
        &names,
        &versions,
        &kernels,
        &arches,
        &agent_versions,
    ];
    let metadata_bytes: usize = metadata.iter().map(String::len).sum();
    arguments.reserve(APPEND_ARGUMENTS, encoded_size(&texts, n) + metadata_bytes);
    let query = sqlx::query_with(sql, arguments)
        .bind(&agents)
        .bind(&hashes)
        .bind(&checkins)
        .bind(&payloads)
        .bind(&metadata)
        .bind(&collected)
        .bind(&hostnames)
        .bind(&families)
        .bind(&names)
        .bind(&versions)
        .bind(&kernels)
        .bind(&arches)
        .bind(&agent_versions)
        .bind(recorded_at);
    let query = match &vouched {
        Some(sequences) => query.bind(sequences),
        None => query.bind(&ords).bind(last),
    };
    let rows = query.fetch_all(pool).await?;

    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let position: HashMap<(Uuid, Uuid), usize> = agents
        .iter()
        .zip(&checkins)
        .enumerate()
        .map(|(i, (a, c))| ((*a, *c), i))
        .collect();
    for row in rows {
        let agent: Uuid = row.try_get("agent_id")?;
        let key: Uuid = row.try_get("checkin_id")?;
        let sequence: i64 = row.try_get("sequence")?;
        if let Some(&i) = position.get(&(agent, key)) {
            outcomes[i] = Some(Outcome::Recorded(Recorded {
                sequence,
                duplicate: false,
                recorded_at,
            }));
        }
    }

    let missing: Vec<usize> = (0..n).filter(|&i| outcomes[i].is_none()).collect();
    if !missing.is_empty() {
        let rows = sqlx::query(CLASSIFY_SQL)
            .bind(missing.iter().map(|&i| agents[i]).collect::<Vec<_>>())
            .bind(
                missing
                    .iter()
                    .map(|&i| hashes[i].clone())
                    .collect::<Vec<_>>(),
            )
            .bind(missing.iter().map(|&i| checkins[i]).collect::<Vec<_>>())
            .bind(missing.iter().map(|&i| ords[i]).collect::<Vec<_>>())
            .fetch_all(pool)
            .await?;
        for row in rows {
            let i = row.try_get::<i32, _>("ord")? as usize;
            let authed: bool = row.try_get("authed")?;
            let existing: Option<i64> = row.try_get("existing")?;
            let first: Option<DateTime<Utc>> = row.try_get("first_recorded_at")?;
            outcomes[i] = Some(match (authed, existing) {
                (false, _) => Outcome::Failed(IngestError::Unauthorized),
                (true, Some(sequence)) => Outcome::Recorded(Recorded {
                    sequence,
                    duplicate: true,
                    recorded_at: first.unwrap_or(recorded_at),
                }),
                (true, None) => Outcome::Retry,
            });
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Retry))
        .collect())
}
