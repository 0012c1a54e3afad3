//! Recording the results agents publish. Every gateway pulls from one durable consumer of the
//! results stream, so each result is handled by one of them; a result is acknowledged only
//! after it is recorded (or refused for good), so nothing is lost if a gateway dies mid-way.
//!
//! Results are recorded in batches, like claims: those received when a batch starts are
//! recorded with one insert, with up to `concurrency` batches at the same time.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use logbook_domain::ids::{AgentId, JobId};
use logbook_proto::agent::v1 as pb;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::transport::Transport;
use super::{ReportedResult, ResultOutcome, ready_now};
use crate::commands::Commands;

/// Most results recorded in one batch.
const MAX_BATCH: usize = 512;

/// Records results until `shutdown`.
pub async fn run(
    transport: std::sync::Arc<Transport>,
    commands: Commands,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    loop {
        let consumed = async {
            let names = transport.names();
            let consumer: consumer::PullConsumer = transport
                .jetstream()
                .create_consumer_on_stream(
                    consumer::pull::Config {
                        durable_name: Some(names.results_consumer().to_string()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(30),
                        max_deliver: -1,
                        max_ack_pending: 1000,
                        ..Default::default()
                    },
                    names.results_stream(),
                )
                .await?;
            let mut messages = consumer
                .stream()
                .expires(Duration::from_secs(10))
                .heartbeat(Duration::from_secs(3))
                .messages()
                .await?;
            let mut handled = futures::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        while handled.next().await.is_some() {}
                        return Ok::<(), anyhow::Error>(());
                    }
                    Some(()) = handled.next(), if !handled.is_empty() => {}
                    message = messages.next(), if handled.len() < concurrency.max(1) => {
                        let Some(message) = message else { return Ok(()) };
                        let mut batch = vec![message?];
                        for message in ready_now(&mut messages, MAX_BATCH - 1) {
                            match message {
                                Ok(message) => batch.push(message),
                                Err(e) => tracing::debug!(error = %e, "results stream hiccup"),
                            }
                        }
                        let (names, commands) = (names.clone(), commands.clone());
                        handled.push(async move { record(&names, &commands, batch).await });
                    }
                }
            }
        }
        .await;
        match consumed {
            Ok(()) if shutdown.is_cancelled() => return,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "results consumer interrupted; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Records a batch of results, then acknowledges each one that is settled.
async fn record(
    names: &logbook_proto::subjects::Names,
    commands: &Commands,
    batch: Vec<jetstream::Message>,
) {
    metrics::histogram!("logbook_job_result_batch_size").record(batch.len() as f64);
    let mut reported = Vec::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    for message in batch {
        match parse(names, &message) {
            Some(result) => {
                reported.push(result);
                messages.push(message);
            }
            None => {
                let _ = message.ack().await;
            }
        }
    }
    if reported.is_empty() {
        return;
    }
    let jobs: Vec<(AgentId, JobId)> = reported.iter().map(|r| (r.agent_id, r.job_id)).collect();
    let answers = match commands.record_job_results(reported).await {
        Ok(answers) => answers,
        Err(e) => {
            // Not acknowledged: JetStream redelivers them after the ack wait.
            tracing::warn!(error = %e, results = messages.len(), "could not record job results; they will be redelivered");
            return;
        }
    };
    for ((message, answer), (agent, job)) in messages.into_iter().zip(answers).zip(jobs) {
        match answer {
            Ok(ResultOutcome::Recorded) => {
                metrics::counter!("logbook_job_results_total", "outcome" => "recorded")
                    .increment(1);
                let _ = message.ack().await;
            }
            Ok(ResultOutcome::Duplicate) => {
                metrics::counter!("logbook_job_results_total", "outcome" => "duplicate")
                    .increment(1);
                let _ = message.ack().await;
            }
            Ok(ResultOutcome::Rejected(reason)) => {
                // Another agent's job, an unknown job, or one never claimed: recorded nowhere.
                metrics::counter!("logbook_job_results_total", "outcome" => "rejected")
                    .increment(1);
                tracing::warn!(%agent, %job, %reason, "rejected a job result");
                let _ = message.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, %job, "could not record a job result; it will be redelivered");
            }
        }
    }
}

/// The result a message carries, or `None` (logged) when it is unreadable.
fn parse(
    names: &logbook_proto::subjects::Names,
    message: &jetstream::Message,
) -> Option<ReportedResult> {
    let subject_agent = names
        .agent_of_result(&message.subject)
        .and_then(|a| a.parse::<AgentId>().ok());
    let report = pb::JobResultReport::decode(message.payload.clone());
    let (agent_id, report) = match (subject_agent, report) {
        (Some(agent), Ok(report)) => (agent, report),
        _ => {
            tracing::warn!(subject = %message.subject, "dropping an unreadable result");
            return None;
        }
    };
    let Ok(job_id) = report.job_id.parse::<JobId>() else {
        tracing::warn!(agent = %agent_id, "dropping a result without a job id");
        return None;
    };
    let (outcome, result) = crate::convert::job_result(&report);
    Some(ReportedResult {
        agent_id,
        job_id,
        outcome,
        result,
    })
}
