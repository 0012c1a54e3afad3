//! Receiving and running jobs.
//!
//! The agent binds its own durable consumer on its shard's jobs stream (one job at a time, in
//! queue order) and, for each job: *claims* it (a NATS request the server answers once, final:
//! run, or do not because it was cancelled or expired), journals that it runs, runs it, journals
//! the result, then publishes the result to its result subject (JetStream, deduplicated by job
//! id) and acknowledges the job, both at once: the journaled result is published again after a
//! restart if it was not confirmed. See [`journal`] for how each crash point is recovered
//! without running a job twice, and docs/adr/0004 for the whole protocol.

pub mod exec;
pub mod journal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use logbook_proto::agent::v1 as pb;
use logbook_proto::subjects::{JOB_PULL, Names};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::client::Server;
use crate::state::{Identity, NatsIdentity, StateDir, StateError};
use exec::Ran;
use journal::{Entry, Journal};

/// Set to `after-job-finished` to make the agent abort right after it journaled a result and
/// before it published it, or to `lose-first-claim-answer` to make it drop the first answer to
/// each claim as a NATS reconnect would: testing hooks for the recovery paths, inert otherwise.
pub const FAILPOINT_ENV: &str = "LOGBOOK_AGENT_FAILPOINT";

/// How jobs are run.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Most bytes kept of each of stdout and stderr.
    pub output_cap: usize,
    /// How long to wait for the server's answer to a claim before asking again. Short: an
    /// answer lost in a NATS reconnect is not coming, and asking again is harmless (the same
    /// attempt's granted claim is granted again, and the job still runs once).
    pub claim_timeout: Duration,
    /// The soonest the NATS identity is renewed after connecting (`jobs.min_identity_renewal`).
    pub min_renewal: Duration,
}

/// The default of `jobs.min_identity_renewal`.
pub const DEFAULT_MIN_RENEWAL: Duration = Duration::from_secs(60);

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            output_cap: 1024 * 1024,
            claim_timeout: Duration::from_secs(3),
            min_renewal: DEFAULT_MIN_RENEWAL,
        }
    }
}

/// Why the job worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The journal is unusable: jobs cannot be run safely.
    #[error(transparent)]
    State(#[from] StateError),
    /// The stored NATS key is invalid.
    #[error("the stored NATS key is invalid")]
    Key,
}

/// Receives and runs jobs until `shutdown`. Reconnects on its own; renews the agent's NATS
/// identity before it expires.
pub async fn run(
    state: StateDir,
    server: Server,
    settings: JobSettings,
    shutdown: CancellationToken,
) -> Result<(), JobsError> {
    let journal = Journal::open(state.journal_dir())?;
    let pruned = journal.prune(Duration::from_secs(32 * 24 * 3600))?;
    if pruned > 0 {
        tracing::debug!(pruned, "pruned settled entries from the job journal");
    }
    loop {
        let Some(identity) = state.identity()? else {
            return Ok(());
        };
        let Some(nats) = identity.nats.clone() else {
            tracing::info!("this agent was enrolled without job delivery; only check-ins run");
            return Ok(());
        };
        let seed = state.nkey_seed()?;
        let renew_in = renewal_delay(&nats.user_jwt, settings.min_renewal);
        let client = match connect(&identity, &nats, seed.as_deref()).await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up the NATS connection; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        let worker = Worker {
            names: Names::new(&nats.namespace),
            agent: identity.agent_id.clone(),
            js: jetstream::new(client.clone()),
            client,
            journal: journal.clone(),
            scratch: state.path().to_path_buf(),
            settings: settings.clone(),
            shutdown: shutdown.clone(),
        };
        // The worker returns when the renewal is due, between jobs: a running job is never cut
        // short for it.
        let renew_at = tokio::time::Instant::now() + renew_in;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            result = worker.serve(renew_at) => result?,
        }
        match server
            .renew_nats(
                &identity.agent_id,
                &identity.credential,
                &public_key(seed.as_deref())?,
            )
            .await
        {
            Ok(access) => {
                let renewed = Identity {
                    nats: Some(NatsIdentity {
                        url: access.url,
                        namespace: access.namespace,
                        user_jwt: access.user_jwt,
                    }),
                    ..identity
                };
                state.save_identity(&renewed)?;
                tracing::info!("renewed this agent's NATS identity");
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the NATS identity yet"),
        }
    }
}

fn public_key(seed: Option<&str>) -> Result<String, JobsError> {
    let seed = seed.ok_or(JobsError::Key)?;
    Ok(nkeys::KeyPair::from_seed(seed)
        .map_err(|_| JobsError::Key)?
        .public_key())
}

/// How long until the JWT should be renewed: two thirds into its life, and not before `floor`
/// (never, without `exp`).
fn renewal_delay(jwt: &str, floor: Duration) -> Duration {
    use base64::Engine;
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|body| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let (Some(iat), Some(exp)) = (
        claims.as_ref().and_then(|c| c["iat"].as_i64()),
        claims.as_ref().and_then(|c| c["exp"].as_i64()),
    ) else {
        return Duration::from_secs(365 * 24 * 3600);
    };
    let renew_at = iat + (exp - iat) * 2 / 3;
    let now = crate::collector::now_unix_ms() / 1000;
    Duration::from_secs(renew_at.saturating_sub(now).max(0) as u64).max(floor)
}

async fn connect(
    identity: &Identity,
    nats: &NatsIdentity,
    seed: Option<&str>,
) -> Result<async_nats::Client, String> {
    let names = Names::new(&nats.namespace);
    let options = if nats.user_jwt.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        let key = Arc::new(
            nkeys::KeyPair::from_seed(seed.ok_or("no NATS key stored")?)
                .map_err(|e| e.to_string())?,
        );
        async_nats::ConnectOptions::with_jwt(nats.user_jwt.clone(), move |nonce| {
            let key = key.clone();
            async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
        })
    };
    options
        .name(format!("logbook-agent {}", identity.agent_id))
        // Replies (pull batches, publish acks, claim answers) come to a prefix only this agent
        // may subscribe to.
        .custom_inbox_prefix(names.inbox_prefix(&identity.agent_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(nats.url.as_str())
        .await
        .map_err(|e| e.to_string())
}

struct Worker {
    names: Names,
    agent: String,
    client: async_nats::Client,
    js: jetstream::Context,
    journal: Journal,
    scratch: std::path::PathBuf,
    settings: JobSettings,
    shutdown: CancellationToken,
}

impl Worker {
    /// Receives and runs jobs until `renew_at`, when it returns (between jobs) so that the NATS
    /// identity can be renewed.
    async fn serve(&self, renew_at: tokio::time::Instant) -> Result<(), JobsError> {
        // Results that finished before a crash or an outage go first.
        for (seq, job, report) in self.journal.unreported() {
            if self.publish_result(&report).await {
                self.journal.put(seq, &job, &Entry::Reported)?;
            }
        }
        let mut retry = Duration::from_millis(500);
        loop {
            let consumer: Result<consumer::PullConsumer, _> = self
                .js
                .get_consumer_from_stream(
                    self.names.agent_consumer(&self.agent),
                    self.names.jobs_stream(&self.agent),
                )
                .await;
            let messages = match consumer {
                // After a NATS restart the client asks again by itself; a pull request the server
                // lost otherwise shows as missed heartbeats, and the worker binds again. A pull
                // asks for several jobs so that the next one follows the acknowledgement at
                // once; the consumer still hands out one at a time (`max_ack_pending` 1), so
                // none waits here while another runs (`JOB_PULL`).
                Ok(consumer) => consumer
                    .stream()
                    .max_messages_per_batch(JOB_PULL.batch)
                    .expires(JOB_PULL.expires)
                    .heartbeat(JOB_PULL.heartbeat)
                    .messages()
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match messages {
                Ok(mut messages) => {
                    retry = Duration::from_millis(500);
                    tracing::info!("receiving jobs");
                    loop {
                        let message = tokio::select! {
                            message = messages.next() => message,
                            _ = tokio::time::sleep_until(renew_at) => return Ok(()),
                        };
                        match message {
                            Some(Ok(message)) => self.handle(message).await?,
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "job stream interrupted; binding again");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot bind the job consumer yet"),
            }
            if tokio::time::Instant::now() + retry >= renew_at {
                return Ok(());
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(Duration::from_secs(10));
        }
    }

    async fn handle(&self, message: jetstream::Message) -> Result<(), JobsError> {
        let Ok(job) = pb::JobDispatch::decode(message.payload.clone()) else {
            tracing::error!("dropping an unreadable job message");
            let _ = message.ack_with(AckKind::Term).await;
            return Ok(());
        };
        let (seq, id) = (job.agent_seq, job.job_id.clone());
        match self.journal.get(seq, &id) {
            Some(Entry::Reported | Entry::Refused { .. }) => {
                // Redelivered after it was settled (the earlier ack was lost).
                self.ack(&message).await;
                return Ok(());
            }
            Some(entry @ Entry::Finished { .. }) => {
                return self.settle(&message, seq, &id, entry.report()).await;
            }
            Some(Entry::Running) => {
                tracing::warn!(job = %id, "the agent stopped while this job ran; it is reported as interrupted, not run again");
                let ran = Ran::failed_without_running(
                    "interrupted: the agent stopped while the job was running; it was not run again",
                );
                return self.finish(&message, &job, ran).await;
            }
            None => {}
        }
        // Jobs run one at a time, so waiting here for the server (through a NATS reconnect, or
        // while no gateway answers) costs nothing; handing the job back instead would put it
        // behind JetStream's redelivery backoff.
        let mut retry = Duration::from_millis(200);
        let claimed = Instant::now();
        // One token for every question about this delivery: if an answer is lost and the
        // server already granted the claim, asking again with it is granted again.
        let attempt = uuid::Uuid::new_v4().simple().to_string();
        let mut lose_answer =
            std::env::var(FAILPOINT_ENV).is_ok_and(|f| f == "lose-first-claim-answer");
        let verdict = loop {
            let answer = self.claim(&id, &attempt).await;
            let answer = match answer {
                Ok(verdict) if lose_answer => {
                    lose_answer = false;
                    tracing::warn!(job = %id, ?verdict, "failpoint lose-first-claim-answer: dropping the answer");
                    Err("answer lost (failpoint)".to_string())
                }
                other => other,
            };
            match answer {
                Ok(verdict) => break verdict,
                Err(e)
                    if claimed.elapsed() < Duration::from_secs(60)
                        && !self.shutdown.is_cancelled() =>
                {
                    tracing::debug!(error = %e, job = %id, "cannot claim the job yet; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(error = %e, job = %id, "cannot claim the job; it will be delivered again");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                        .await;
                    return Ok(());
                }
            }
        };
        match verdict {
            pb::ClaimVerdict::Run => {
                self.journal.put(seq, &id, &Entry::Running)?;
                tracing::info!(job = %id, agent_seq = seq, "running job");
                // Cancelled when the job ends, or if this future is dropped (the agent stops).
                let progress = self.keep_alive(&message).drop_guard();
                let ran = exec::run(&job, &self.scratch, self.settings.output_cap).await;
                drop(progress);
                self.finish(&message, &job, ran).await
            }
            pb::ClaimVerdict::AlreadyStarted => {
                // Claimed by another attempt: this agent before a restart (it never started
                // here, that is journaled first), or another process with this agent's identity
                // (a cloned machine), where it may be running. Either way not here, not again.
                tracing::warn!(job = %id, "the job was claimed by another attempt; it is reported as interrupted, not run");
                let ran = Ran::failed_without_running(
                    "interrupted: the job was claimed before (by this agent before a restart, or by another process with its identity); it was not run again",
                );
                self.finish(&message, &job, ran).await
            }
            other => {
                tracing::info!(job = %id, verdict = ?other, "not running job");
                self.journal.put(
                    seq,
                    &id,
                    &Entry::Refused {
                        verdict: format!("{other:?}"),
                    },
                )?;
                self.ack(&message).await;
                Ok(())
            }
        }
    }

    async fn finish(
        &self,
        message: &jetstream::Message,
        job: &pb::JobDispatch,
        ran: Ran,
    ) -> Result<(), JobsError> {
        let report = ran.report(&job.job_id);
        self.journal
            .put(job.agent_seq, &job.job_id, &Entry::finished(&report))?;
        if std::env::var(FAILPOINT_ENV).is_ok_and(|f| f == "after-job-finished") {
            tracing::error!(job = %job.job_id, "failpoint after-job-finished: aborting");
            std::process::abort();
        }
        self.settle(message, job.agent_seq, &job.job_id, Some(report))
            .await
    }

    /// Publishes a journaled result and acknowledges its job. The two round trips run at once:
    /// the result is already in the journal (fsynced), so if the agent stops after the
    /// acknowledgement and before the result is confirmed, the next start publishes it
    /// ([`Journal::unreported`]); the job is not delivered again, and need not be.
    async fn settle(
        &self,
        message: &jetstream::Message,
        seq: u64,
        id: &str,
        report: Option<pb::JobResultReport>,
    ) -> Result<(), JobsError> {
        let publish = async {
            match &report {
                Some(report) => self.publish_result(report).await,
                None => true,
            }
        };
        let (published, ()) = tokio::join!(publish, self.ack(message));
        // Not published only when the agent is stopping: the result stays unreported, for the
        // next start.
        if published {
            self.journal.put(seq, id, &Entry::Reported)?;
        }
        Ok(())
    }

    async fn claim(&self, job_id: &str, attempt: &str) -> Result<pb::ClaimVerdict, String> {
        let request = pb::ClaimRequest {
            job_id: job_id.to_string(),
            attempt: attempt.to_string(),
        }
        .encode_to_vec();
        let answer = tokio::time::timeout(
            self.settings.claim_timeout,
            self.client
                .request(self.names.claims(&self.agent), request.into()),
        )
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
        let response = pb::ClaimResponse::decode(answer.payload).map_err(|e| e.to_string())?;
        pb::ClaimVerdict::try_from(response.verdict).map_err(|e| e.to_string())
    }

    /// Publishes a result until JetStream acknowledges it (true) or the agent stops (false).
    async fn publish_result(&self, report: &pb::JobResultReport) -> bool {
        let mut retry = Duration::from_millis(200);
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(report.encode_to_vec().into())
                .message_id(self.names.result_msg_id(&report.job_id));
            let sent = match self
                .js
                .send_publish(self.names.results(&self.agent), publish)
                .await
            {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, job = %report.job_id, "result not delivered yet; it is kept and retried")
                }
            }
            if self.shutdown.is_cancelled() {
                return false;
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(Duration::from_secs(10));
        }
    }

    /// Acknowledges a job and waits for JetStream to confirm, retrying through a reconnect:
    /// an acknowledgement lost in a disconnect would otherwise hold the queue until the
    /// redelivery (the journal would settle that redelivery, but later).
    async fn ack(&self, message: &jetstream::Message) {
        let mut retry = Duration::from_millis(100);
        for _ in 0..20 {
            match message.double_ack().await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "job acknowledgement not confirmed yet"),
            }
            if self.shutdown.is_cancelled() {
                return;
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(Duration::from_secs(2));
        }
    }

    /// Tells JetStream the job is still being worked on, so a long job is not redelivered.
    fn keep_alive(&self, message: &jetstream::Message) -> CancellationToken {
        let done = CancellationToken::new();
        let (stop, message) = (done.clone(), message.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    // Well within the consumer's shortest ack wait (10 s).
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        });
        done
    }
}
