//! Recording the results agents publish. Every gateway pulls from one durable consumer of the
//! results stream, so each result is handled by one of them; a result is acknowledged only
//! after it is recorded (or refused for good), so nothing is lost if a gateway dies mid-way.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use logbook_domain::ids::{AgentId, JobId};
use logbook_proto::agent::v1 as pb;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::ResultOutcome;
use super::transport::Transport;
use crate::commands::Commands;

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
                    _ = shutdown.cancelled() => return Ok::<(), anyhow::Error>(()),
                    Some(()) = handled.next(), if !handled.is_empty() => {}
                    message = messages.next(), if handled.len() < concurrency.max(1) => {
                        let Some(message) = message else { return Ok(()) };
                        let message = message?;
                        let (names, commands) = (names.clone(), commands.clone());
                        handled.push(async move { record(&names, &commands, message).await });
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

async fn record(
    names: &logbook_proto::subjects::Names,
    commands: &Commands,
    message: jetstream::Message,
) {
    let subject_agent = names
        .agent_of_result(&message.subject)
        .and_then(|a| a.parse::<AgentId>().ok());
    let report = pb::JobResultReport::decode(message.payload.clone());
    let (agent, report) = match (subject_agent, report) {
        (Some(agent), Ok(report)) => (agent, report),
        _ => {
            tracing::warn!(subject = %message.subject, "dropping an unreadable result");
            let _ = message.ack().await;
            return;
        }
    };
    let Ok(job) = report.job_id.parse::<JobId>() else {
        tracing::warn!(%agent, "dropping a result without a job id");
        let _ = message.ack().await;
        return;
    };
    let (outcome, result) = crate::convert::job_result(&report);
    match commands
        .record_job_result(agent, job, outcome, result)
        .await
    {
        Ok(ResultOutcome::Recorded) => {
            metrics::counter!("logbook_job_results_total", "outcome" => "recorded").increment(1);
            let _ = message.ack().await;
        }
        Ok(ResultOutcome::Duplicate) => {
            metrics::counter!("logbook_job_results_total", "outcome" => "duplicate").increment(1);
            let _ = message.ack().await;
        }
        Ok(ResultOutcome::Rejected(reason)) => {
            // Another agent's job, an unknown job, or one never claimed: recorded nowhere.
            metrics::counter!("logbook_job_results_total", "outcome" => "rejected").increment(1);
            tracing::warn!(%agent, %job, %reason, "rejected a job result");
            let _ = message.ack().await;
        }
        Err(e) => {
            // Not acknowledged: JetStream redelivers it after the ack wait.
            tracing::warn!(error = %e, %job, "could not record a job result; it will be redelivered");
        }
    }
}
