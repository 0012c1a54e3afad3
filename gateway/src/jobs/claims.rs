//! Answering agents' claims: right before an agent runs a job it asks, on its own claim
//! subject, whether the job may still run. The answer is recorded (`JobStarted`, or
//! `JobExpired`) before it is sent, so the server's word is final and a job runs at most once.
//!
//! Every gateway subscribes in one queue group; each claim is answered by one of them.

use std::sync::Arc;

use futures::StreamExt;
use logbook_domain::ids::{AgentId, JobId};
use logbook_proto::agent::v1 as pb;
use logbook_proto::subjects::Names;
use prost::Message;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Claim;
use crate::commands::Commands;

/// Answers claims until `shutdown`.
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
                let slots = Arc::new(Semaphore::new(concurrency.max(1)));
                loop {
                    let message = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        message = claims.next() => message,
                    };
                    let Some(message) = message else { break };
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (client, names, commands) =
                        (client.clone(), names.clone(), commands.clone());
                    tokio::spawn(async move {
                        answer(&client, &names, &commands, message).await;
                        drop(slot);
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to job claims; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

async fn answer(
    client: &async_nats::Client,
    names: &Names,
    commands: &Commands,
    message: async_nats::Message,
) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let verdict = async {
        let agent: AgentId = names
            .agent_of_claim(&message.subject)
            .and_then(|a| a.parse().ok())
            .ok_or("bad subject")?;
        let request =
            pb::ClaimRequest::decode(message.payload.clone()).map_err(|_| "undecodable claim")?;
        let job: JobId = request.job_id.parse().map_err(|_| "bad job id")?;
        Ok::<_, &str>((agent, job))
    }
    .await;
    let response = match verdict {
        Err(reason) => pb::ClaimResponse {
            verdict: pb::ClaimVerdict::Refused as i32,
            reason: reason.to_string(),
        },
        Ok((agent, job)) => match commands
            .claim_job(agent, job, &format!("claim-{job}"))
            .await
        {
            Ok(claim) => {
                metrics::counter!("logbook_job_claims_total", "verdict" => format!("{claim:?}"))
                    .increment(1);
                pb::ClaimResponse {
                    verdict: verdict_of(claim) as i32,
                    reason: String::new(),
                }
            }
            // The store is unavailable: no answer, the agent asks again later.
            Err(e) => {
                tracing::warn!(error = %e, %job, "could not decide a claim");
                return;
            }
        },
    };
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
