//! Every NATS subject, stream and consumer name Logbook uses, built here and nowhere else.
//!
//! Names start from a namespace (`logbook` by default) so that several installations, or a
//! benchmark next to a development server, can share one nats-server without meeting.
//!
//! | what | name |
//! |---|---|
//! | jobs stream (work queue) | `<NS>_JOBS`, subjects `<ns>.jobs.<agent>` |
//! | one agent's consumer | `agent-<agent>` (filter `<ns>.jobs.<agent>`) |
//! | results stream (work queue) | `<NS>_RESULTS`, subjects `<ns>.results.<agent>` |
//! | the gateways' results consumer | `gateways` |
//! | claims (request/reply) | `<ns>.claims.<agent>` |
//! | an agent's reply inbox | `_INBOX_<agent>.>` |

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

    /// The stream holding jobs not yet acknowledged by their agent.
    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.stream_prefix())
    }

    /// All job subjects (the jobs stream's subjects).
    pub fn all_jobs(&self) -> String {
        format!("{}.jobs.*", self.namespace)
    }

    /// The subject of one agent's jobs.
    pub fn jobs(&self, agent_id: &str) -> String {
        format!("{}.jobs.{agent_id}", self.namespace)
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
        assert_eq!(names.jobs_stream(), "BENCH_1_JOBS");
        assert_eq!(names.jobs("a1"), "bench-1.jobs.a1");
        assert_eq!(names.agent_of_result(&names.results("a1")), Some("a1"));
        assert_eq!(names.agent_of_claim(&names.claims("a1")), Some("a1"));
        assert_eq!(names.agent_of_claim("other.claims.a1"), None);
        assert_eq!(Names::default().results_stream(), "LOGBOOK_RESULTS");
    }
}
