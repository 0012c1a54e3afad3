//! The JetStream side of jobs: the streams, each agent's consumer, publishing jobs.
//!
//! Stream and consumer settings are explained in docs/adr/0004. Names come from
//! `logbook_proto::subjects`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::{StreamExt, TryStreamExt};
use logbook_domain::ids::{AgentId, JobId};
use logbook_proto::subjects::{JOB_SHARDS, Names};
use prost::Message as _;

/// Why the transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A JetStream API call failed.
    #[error("JetStream {action} failed: {message}")]
    JetStream {
        /// What was being done.
        action: &'static str,
        /// What the server or client said.
        message: String,
    },
}

fn js_error(action: &'static str) -> impl Fn(&dyn std::fmt::Display) -> TransportError {
    move |e| TransportError::JetStream {
        action,
        message: e.to_string(),
    }
}

/// Deliveries of one job before JetStream gives up (with the backoff's last step of 5 minutes,
/// over a month: longer than a job is kept).
const MAX_DELIVER: i64 = 10_000;

/// Jobs published before their acknowledgements are awaited.
const PUBLISH_WINDOW: usize = 1024;

/// Consumer creations in flight at once when many agents need one.
const CONCURRENT_CREATES: usize = 16;

/// How long things are kept and retried.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// Longest a job waits in the stream for its agent (at least the longest deadline).
    pub job_max_age: Duration,
    /// Longest a result waits for a gateway.
    pub result_max_age: Duration,
    /// How long a redelivered job waits for its agent's acknowledgement, step by step.
    pub redelivery_backoff: Vec<Duration>,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            job_max_age: Duration::from_secs(31 * 24 * 3600),
            result_max_age: Duration::from_secs(14 * 24 * 3600),
            redelivery_backoff: vec![
                Duration::from_secs(10),
                Duration::from_secs(30),
                Duration::from_secs(60),
                Duration::from_secs(120),
                Duration::from_secs(300),
            ],
        }
    }
}

/// Streams and consumers of one installation.
#[derive(Debug)]
pub struct Transport {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    settings: TransportSettings,
    ensured: Mutex<HashSet<AgentId>>,
    /// Whether [`Transport::ensure_streams`] has succeeded.
    streams_ready: tokio::sync::watch::Sender<bool>,
}

impl Transport {
    /// A transport over `client`.
    pub fn new(client: async_nats::Client, names: Names, settings: TransportSettings) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            client,
            js,
            names,
            settings,
            ensured: Mutex::new(HashSet::new()),
            streams_ready: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Waits until the streams exist (see [`Transport::ensure_streams`]), at most `timeout`;
    /// returns whether they do.
    pub async fn streams_ready(&self, timeout: Duration) -> bool {
        let mut ready = self.streams_ready.subscribe();
        tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Creates the jobs streams (one per shard) and the results stream if they do not exist.
    pub async fn ensure_streams(&self) -> Result<(), TransportError> {
        let jobs = (0..JOB_SHARDS).map(|shard| {
            (
                self.names.jobs_shard_stream(shard),
                self.names.jobs_shard_subjects(shard),
                self.settings.job_max_age,
            )
        });
        let results = (
            self.names.results_stream(),
            self.names.all_results(),
            self.settings.result_max_age,
        );
        for (name, subjects, max_age) in jobs.chain([results]) {
            // Work queues: a message stays only until it is acknowledged (docs/adr/0004).
            self.js
                .get_or_create_stream(stream::Config {
                    name,
                    subjects: vec![subjects],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    max_age,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(|e| js_error("creating a stream")(&e))?;
        }
        self.streams_ready.send_replace(true);
        Ok(())
    }

    /// The consumer settings of one agent's job queue (docs/adr/0004).
    fn agent_consumer_config(&self, agent_id: AgentId) -> consumer::pull::Config {
        let agent = agent_id.to_string();
        consumer::pull::Config {
            durable_name: Some(self.names.agent_consumer(&agent)),
            description: Some(format!("jobs of agent {agent}")),
            filter_subject: self.names.jobs(&agent),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            // One job at a time, in order.
            max_ack_pending: 1,
            ack_wait: self
                .settings
                .redelivery_backoff
                .first()
                .copied()
                .unwrap_or(Duration::from_secs(30)),
            backoff: self.settings.redelivery_backoff.clone(),
            // Never give up on a job in practice: the agent's journal makes a redelivery harmless,
            // and a low limit would silently drop jobs of an agent that keeps crashing. JetStream
            // needs a limit when backoff is set; at the last backoff step this one outlasts the
            // stream's retention.
            max_deliver: MAX_DELIVER,
            ..Default::default()
        }
    }

    /// Learns which agents already have a consumer, so that a restarted gateway does not ask
    /// JetStream to create them again before their next job (with thousands of consumers on a
    /// stream each create costs the server milliseconds). Returns how many there are.
    pub async fn learn_existing_consumers(&self) -> Result<usize, TransportError> {
        let mut found = Vec::new();
        for stream_name in self.names.jobs_streams() {
            let stream = self
                .js
                .get_stream(stream_name)
                .await
                .map_err(|e| js_error("opening a jobs stream")(&e))?;
            let mut names = stream.consumer_names();
            while let Some(name) = names.next().await {
                let name = name.map_err(|e| js_error("listing the agents' consumers")(&e))?;
                if let Some(agent) = self
                    .names
                    .agent_of_consumer(&name)
                    .and_then(|id| id.parse::<AgentId>().ok())
                {
                    found.push(agent);
                }
            }
        }
        let count = found.len();
        if let Ok(mut set) = self.ensured.lock() {
            set.extend(found);
        }
        Ok(count)
    }

    /// Creates the consumers of those agents that this process has not seen to yet, a few at a
    /// time.
    pub async fn ensure_agent_consumers(
        &self,
        agents: impl IntoIterator<Item = AgentId>,
    ) -> Result<(), TransportError> {
        let missing: HashSet<AgentId> = {
            let set = self.ensured.lock().map(|s| s.clone()).unwrap_or_default();
            agents.into_iter().filter(|a| !set.contains(a)).collect()
        };
        futures::stream::iter(missing)
            .map(|agent| self.ensure_agent_consumer(agent))
            .buffer_unordered(CONCURRENT_CREATES)
            .try_collect::<()>()
            .await
    }

    /// Creates the agent's consumer unless this process already did.
    pub async fn ensure_agent_consumer(&self, agent_id: AgentId) -> Result<(), TransportError> {
        if self
            .ensured
            .lock()
            .map(|set| set.contains(&agent_id))
            .unwrap_or(false)
        {
            return Ok(());
        }
        self.js
            .create_consumer_on_stream(
                self.agent_consumer_config(agent_id),
                self.names.jobs_stream(&agent_id.to_string()),
            )
            .await
            .map_err(|e| js_error("creating an agent's consumer")(&e))?;
        if let Ok(mut set) = self.ensured.lock() {
            set.insert(agent_id);
        }
        Ok(())
    }

    /// Removes a decommissioned agent's consumer.
    pub async fn remove_agent_consumer(&self, agent_id: AgentId) -> Result<(), TransportError> {
        if let Ok(mut set) = self.ensured.lock() {
            set.remove(&agent_id);
        }
        self.js
            .delete_consumer_from_stream(
                self.names.agent_consumer(&agent_id.to_string()),
                self.names.jobs_stream(&agent_id.to_string()),
            )
            .await
            .map(drop)
            .map_err(|e| js_error("deleting an agent's consumer")(&e))
    }

    /// Publishes jobs (in order, pipelined) and returns each one's stream sequence.
    pub async fn publish_jobs(
        &self,
        jobs: Vec<(AgentId, JobId, Vec<u8>)>,
    ) -> Vec<Result<u64, TransportError>> {
        let mut results = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter().peekable();
        while jobs.peek().is_some() {
            results.extend(
                self.publish_window(jobs.by_ref().take(PUBLISH_WINDOW))
                    .await,
            );
        }
        results
    }

    /// Sends up to [`PUBLISH_WINDOW`] jobs, then awaits their acknowledgements (the JetStream
    /// context admits 5,000 unacknowledged publishes and makes a publish beyond that wait for
    /// room, which only awaiting the earlier acknowledgements makes).
    async fn publish_window(
        &self,
        jobs: impl Iterator<Item = (AgentId, JobId, Vec<u8>)>,
    ) -> Vec<Result<u64, TransportError>> {
        let mut pending = Vec::with_capacity(PUBLISH_WINDOW);
        for (agent_id, job_id, payload) in jobs {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(self.names.job_msg_id(&job_id.to_string()));
            pending.push(
                self.js
                    .send_publish(self.names.jobs(&agent_id.to_string()), publish)
                    .await
                    .map_err(|e| js_error("publishing a job")(&e)),
            );
        }
        let mut results = Vec::with_capacity(pending.len());
        for sent in pending {
            results.push(match sent {
                Ok(ack) => ack
                    .await
                    .map(|a| a.sequence)
                    .map_err(|e| js_error("publishing a job")(&e)),
                Err(e) => Err(e),
            });
        }
        results
    }

    /// The jobs stream that holds an agent's jobs (without asking for its state).
    async fn agent_jobs_stream(
        &self,
        agent_id: AgentId,
    ) -> Result<jetstream::stream::Stream<()>, TransportError> {
        self.js
            .get_stream_no_info(self.names.jobs_stream(&agent_id.to_string()))
            .await
            .map_err(|e| js_error("opening the jobs stream")(&e))
    }

    /// Whether the job is still in its agent's stream at `stream_seq`: false once the agent has
    /// acknowledged it, or if nats-server lost it (a sequence reused after such a loss holds
    /// another job, which also answers false).
    pub async fn holds_job(
        &self,
        agent_id: AgentId,
        job_id: JobId,
        stream_seq: u64,
    ) -> Result<bool, TransportError> {
        let stream = self.agent_jobs_stream(agent_id).await?;
        match stream.get_raw_message(stream_seq).await {
            Ok(message) => Ok(logbook_proto::agent::v1::JobDispatch::decode(
                message.payload.as_ref(),
            )
            .is_ok_and(|job| job.job_id == job_id.to_string())),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(js_error("reading a job back")(&e)),
        }
    }

    /// Removes a job from its agent's queue (after a cancel or expiry); false when it was no
    /// longer there.
    pub async fn remove_job(
        &self,
        agent_id: AgentId,
        stream_seq: u64,
    ) -> Result<bool, TransportError> {
        let stream = self.agent_jobs_stream(agent_id).await?;
        match stream.delete_message(stream_seq).await {
            Ok(deleted) => Ok(deleted),
            Err(e) if e.to_string().contains("no message found") => Ok(false),
            Err(e) => Err(js_error("removing a job")(&e)),
        }
    }
}
