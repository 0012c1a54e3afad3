//! Every NATS subject, stream and consumer name Logbook uses, built here and nowhere else.
//!
//! Names start from a namespace (`logbook` by default) so that several installations, or a
//! benchmark next to a development server, can share one nats-server without meeting.
//!
//! | what | name |
//! |---|---|
//! | jobs streams (work queues), one per shard | `<NS>_JOBS_<shard>`, subjects `<ns>.jobs.<shard>.<agent>` |
//! | one agent's consumer (in its shard's stream) | `agent-<agent>` (filter `<ns>.jobs.<shard>.<agent>`) |
//! | results stream (work queue) | `<NS>_RESULTS`, subjects `<ns>.results.<agent>` |
//! | the gateways' results consumer | `gateways` |
//! | claims (request/reply) | `<ns>.claims.<agent>` |
//! | an agent's reply inbox | `_INBOX_<agent>.>` |
//!
//! Jobs are spread over [`JOB_SHARDS`] streams by a hash of the agent id: nats-server's cost of
//! storing, delivering and removing a work-queue message grows with the consumers and messages
//! of its stream, and one stream holding every agent's consumer made a bulk job to 10,000 agents
//! three times slower than sixteen streams did (docs/adr/0004). The shard of an agent never
//! changes, so the count is fixed: changing it would strand existing consumers.

/// How many jobs streams one installation has.
pub const JOB_SHARDS: u32 = 32;

/// The jobs shard of an agent: FNV-1a of its id, so that every component (and every version)
/// computes the same one.
pub fn job_shard(agent_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in agent_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % JOB_SHARDS
}

/// How an agent asks its consumer for jobs. The agent and the benchmark's simulated agents both
/// use [`JOB_PULL`], so that what is measured is what agents cost nats-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPull {
    /// Jobs one pull request asks for. The consumer still hands out one at a time
    /// (`max_ack_pending` 1); asking for several lets the next follow the acknowledgement at
    /// once, without a new request.
    pub batch: usize,
    /// How long a pull request waits before the agent sends a new one.
    pub expires: std::time::Duration,
    /// How often nats-server tells a waiting pull request that it is still alive; the agent
    /// binds again after two missed, which catches a request the server lost while the
    /// connection stayed up. (After a reconnect the client asks again by itself.)
    pub heartbeat: std::time::Duration,
}

/// The agents' pull settings. Every waiting agent costs nats-server one message per heartbeat
/// and one request per expiry: 1,333 a second for 10,000 idle agents here, against 4,333 with
/// the 10 s expiry and 3 s heartbeat used before. Under load those were also too short
/// (BENCHMARKS.md, the twenty-third machine): while 600,000 jobs went through, the pull streams
/// of 10,000 simulated agents missed two heartbeats and were bound again 97 times, each with a
/// JetStream API request at the server's busiest moment; and in three bulk jobs that came as the
/// fleet's pull requests expired, a few dozen agents had their job 4.6 s after the rest.
pub const JOB_PULL: JobPull = JobPull {
    batch: 16,
    expires: std::time::Duration::from_secs(30),
    heartbeat: std::time::Duration::from_secs(10),
};

/// The names of one installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    namespace: String,
}

impl Default for Names {
    fn default() -> Self {
        Self::new("logbook")
    }
}

impl Names {
    /// Names under `namespace` (letters, digits, `-` and `_`).
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn stream_prefix(&self) -> String {
        self.namespace.to_ascii_uppercase().replace('-', "_")
    }

    /// The stream holding one agent's jobs not yet acknowledged.
    pub fn jobs_stream(&self, agent_id: &str) -> String {
        self.jobs_shard_stream(job_shard(agent_id))
    }

    /// The jobs stream of one shard.
    pub fn jobs_shard_stream(&self, shard: u32) -> String {
        format!("{}_JOBS_{shard:02}", self.stream_prefix())
    }

    /// The subjects of one shard's jobs stream.
    pub fn jobs_shard_subjects(&self, shard: u32) -> String {
        format!("{}.jobs.{shard:02}.*", self.namespace)
    }

    /// Every jobs stream, by shard.
    pub fn jobs_streams(&self) -> impl Iterator<Item = String> + '_ {
        (0..JOB_SHARDS).map(|shard| self.jobs_shard_stream(shard))
    }

    /// The subject of one agent's jobs.
    pub fn jobs(&self, agent_id: &str) -> String {
        format!(
            "{}.jobs.{:02}.{agent_id}",
            self.namespace,
            job_shard(agent_id)
        )
    }

    /// The durable consumer through which one agent receives its jobs.
    pub fn agent_consumer(&self, agent_id: &str) -> String {
        format!("agent-{agent_id}")
    }

    /// The agent id in a consumer name made by [`Names::agent_consumer`].
    pub fn agent_of_consumer<'a>(&self, consumer: &'a str) -> Option<&'a str> {
        consumer.strip_prefix("agent-")
    }

    /// The stream holding results not yet recorded by a gateway.
    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.stream_prefix())
    }

    /// All result subjects.
    pub fn all_results(&self) -> String {
        format!("{}.results.*", self.namespace)
    }

    /// The subject on which one agent reports results.
    pub fn results(&self, agent_id: &str) -> String {
        format!("{}.results.{agent_id}", self.namespace)
    }

    /// The agent id in a result subject.
    pub fn agent_of_result<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(&format!("{}.results.", self.namespace))
    }

    /// The durable consumer through which gateways receive results.
    pub fn results_consumer(&self) -> &'static str {
        "gateways"
    }

    /// The subject on which one agent claims jobs.
    pub fn claims(&self, agent_id: &str) -> String {
        format!("{}.claims.{agent_id}", self.namespace)
    }

    /// All claim subjects (what gateways subscribe to).
    pub fn all_claims(&self) -> String {
        format!("{}.claims.*", self.namespace)
    }

    /// The agent id in a claim subject.
    pub fn agent_of_claim<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(&format!("{}.claims.", self.namespace))
    }

    /// The inbox prefix of one agent, so that replies to it are private to it.
    pub fn inbox_prefix(&self, agent_id: &str) -> String {
        format!("_INBOX_{agent_id}")
    }

    /// The message id that makes a job's publication idempotent.
    pub fn job_msg_id(&self, job_id: &str) -> String {
        job_id.to_string()
    }

    /// The message id that makes a result's publication idempotent.
    pub fn result_msg_id(&self, job_id: &str) -> String {
        format!("{job_id}.result")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_namespaced_and_parse_back() {
        let names = Names::new("bench-1");
        let shard = job_shard("a1");
        assert_eq!(names.jobs_stream("a1"), format!("BENCH_1_JOBS_{shard:02}"));
        assert_eq!(names.jobs("a1"), format!("bench-1.jobs.{shard:02}.a1"));
        assert_eq!(names.jobs_streams().count(), JOB_SHARDS as usize);
        assert_eq!(names.agent_of_result(&names.results("a1")), Some("a1"));
        assert_eq!(names.agent_of_claim(&names.claims("a1")), Some("a1"));
        assert_eq!(names.agent_of_claim("other.claims.a1"), None);
        assert_eq!(Names::default().results_stream(), "LOGBOOK_RESULTS");
    }

    #[test]
    fn shards_are_stable_and_spread_agents() {
        // Fixed values: every release must put an agent in the same shard.
        assert_eq!(job_shard(""), 0x811c_9dc5 % JOB_SHARDS);
        assert_eq!(job_shard("a"), 0xe40c_292c % JOB_SHARDS);
        let mut counts = [0u32; JOB_SHARDS as usize];
        for i in 0..32_000 {
            counts[job_shard(&format!("0190{i:08x}-0000-7000-8000-000000000000")) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1300).contains(&c)),
            "uneven shards: {counts:?}"
        );
    }
}
