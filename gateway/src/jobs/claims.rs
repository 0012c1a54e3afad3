//! Answering agents' claims: right before an agent runs a job it asks, on its own claim
//! subject, whether the job may still run. The answer is recorded (`JobStarted`, or
//! `JobExpired`) before it is sent, so the server's word is final and a job runs at most once.
//! A claim names its attempt (a token the agent picks per delivery): asked again by the same
//! attempt, because the answer was lost, a granted claim is granted again; asked by any other,
//! it is answered "already started".
//!
//! Claims are answered in batches: the claims waiting when a batch starts are decided together
//! and recorded with one insert (a group commit, [`Commands::try_execute_batch`]), and up to
//! `concurrency` batches are recorded at the same time. One agent has at most one claim
//! outstanding (its consumer holds one job at a time), so batches never hold two claims of the
//! same agent in practice; if two writers still race on a job, the batch's insert fails as a
//! whole and its claims are decided one by one.
//!
//! Every gateway subscribes in one queue group; each claim is answered by one of them.

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use logbook_domain::ids::{AgentId, JobId};
use logbook_proto::agent::v1 as pb;
use logbook_proto::subjects::Names;
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::{Claim, ClaimRequest, ready_now, valid_attempt};
use crate::commands::Commands;

/// Most claims decided in one batch.
const MAX_BATCH: usize = 512;

/// Answers claims until `shutdown`; batches already taken are finished first.
pub async fn run(
    client: async_nats::Client,
    names: Names,
    commands: Commands,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    loop {
        match client
            .queue_subscribe(names.all_claims(), "gateways".to_string())
            .await
        {
            Ok(mut claims) => {
                let mut in_flight = FuturesUnordered::new();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            while in_flight.next().await.is_some() {}
                            return;
                        }
                        Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                        message = claims.next(), if in_flight.len() < concurrency.max(1) => {
                            let Some(first) = message else { break };
                            let mut batch = vec![first];
                            batch.extend(ready_now(&mut claims, MAX_BATCH - 1));
                            in_flight.push(answer(&client, &names, &commands, batch));
                        }
                    }
                }
                while in_flight.next().await.is_some() {}
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to job claims; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Decides and records a batch of claims, then answers each.
async fn answer(
    client: &async_nats::Client,
    names: &Names,
    commands: &Commands,
    batch: Vec<async_nats::Message>,
) {
    metrics::histogram!("logbook_job_claim_batch_size").record(batch.len() as f64);
    let mut requests = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for message in batch {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        match parse(names, &message) {
            Ok((agent_id, job_id, attempt)) => {
                requests.push(ClaimRequest {
                    agent_id,
                    job_id,
                    attempt,
                });
                replies.push(reply);
            }
            Err(reason) => {
                let response = pb::ClaimResponse {
                    verdict: pb::ClaimVerdict::Refused as i32,
                    reason: reason.to_string(),
                };
                send(client, reply, response).await;
            }
        }
    }
    if requests.is_empty() {
        return;
    }
    let answers = match commands.claim_jobs(requests).await {
        Ok(answers) => answers,
        // The store is unavailable: no answer, the agents ask again later.
        Err(e) => {
            tracing::warn!(error = %e, claims = replies.len(), "could not decide claims");
            return;
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        match answer {
            Ok(claim) => {
                metrics::counter!("logbook_job_claims_total", "verdict" => format!("{claim:?}"))
                    .increment(1);
                let response = pb::ClaimResponse {
                    verdict: verdict_of(claim) as i32,
                    reason: String::new(),
                };
                send(client, reply, response).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not decide a claim"),
        }
    }
}

fn parse(
    names: &Names,
    message: &async_nats::Message,
) -> Result<(AgentId, JobId, Option<String>), &'static str> {
    let agent: AgentId = names
        .agent_of_claim(&message.subject)
        .and_then(|a| a.parse().ok())
        .ok_or("bad subject")?;
    let request =
        pb::ClaimRequest::decode(message.payload.clone()).map_err(|_| "undecodable claim")?;
    let job: JobId = request.job_id.parse().map_err(|_| "bad job id")?;
    let attempt = match request.attempt.as_str() {
        "" => None,
        attempt if valid_attempt(attempt) => Some(request.attempt),
        _ => return Err("bad attempt: at most 64 letters, digits and dashes"),
    };
    Ok((agent, job, attempt))
}

async fn send(
    client: &async_nats::Client,
    reply: async_nats::Subject,
    response: pb::ClaimResponse,
) {
    if let Err(e) = client.publish(reply, response.encode_to_vec().into()).await {
        tracing::debug!(error = %e, "could not answer a claim");
    }
}

fn verdict_of(claim: Claim) -> pb::ClaimVerdict {
    match claim {
        Claim::Run => pb::ClaimVerdict::Run,
        Claim::Cancelled => pb::ClaimVerdict::Cancelled,
        Claim::Expired => pb::ClaimVerdict::Expired,
        Claim::AlreadyStarted => pb::ClaimVerdict::AlreadyStarted,
        Claim::Finished => pb::ClaimVerdict::Finished,
        Claim::Refused => pb::ClaimVerdict::Refused,
    }
}
