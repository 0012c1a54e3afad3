//! Application services: each operator or agent action as one function that loads what it
//! needs, asks the domain to decide, and records the outcome (events, and credential changes in
//! the same transaction). HTTP handlers and `logbook admin` both call these, so the two can never
//! behave differently.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use logbook_domain::agent::{Agent, AgentCommand, AgentError, AgentIdentity};
use logbook_domain::api_token::{ApiToken, ApiTokenCommand, ApiTokenError};
use logbook_domain::client::{Client, ClientCommand, ClientError};
use logbook_domain::enrollment::{EnrollmentToken, EnrollmentTokenCommand, EnrollmentTokenError};
use logbook_domain::ids::*;
use logbook_domain::metadata::{Actor, EventMetadata};
use logbook_domain::secret::SecretHash;
use logbook_domain::site::{Site, SiteCommand, SiteError};
use uuid::Uuid;

use crate::credentials;
use crate::notify::LogNotifier;
use crate::secrets::{self, SecretKind};
use crate::store::{Conflicts, EventStore, Loaded, NewEvent, StoreError};
use logbook_projections::runner::Appended;

/// How many times a command is retried after losing an optimistic-concurrency race.
const CONFLICT_RETRIES: usize = 5;

/// How many times a batch of commands is decided and inserted before, having lost every race,
/// each of its commands is run on its own (`Commands::try_execute_batch`).
const BATCH_ATTEMPTS: usize = 3;

/// Who is acting, and on behalf of which request.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Who.
    pub actor: Actor,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// The larger action this belongs to.
    pub correlation_id: CorrelationId,
}

impl Ctx {
    /// A context for `actor` with a fresh correlation id.
    pub fn new(actor: Actor, request_id: impl Into<String>) -> Self {
        Self {
            actor,
            request_id: request_id.into(),
            correlation_id: CorrelationId::from(Uuid::now_v7()),
        }
    }

    pub(crate) fn metadata(&self, now: DateTime<Utc>) -> EventMetadata {
        EventMetadata {
            actor: self.actor.clone(),
            correlation_id: self.correlation_id,
            request_id: self.request_id.clone(),
            recorded_at: now,
        }
    }
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The request is invalid; `field` names the offending input when there is one.
    #[error("{message}")]
    Invalid {
        /// The input field at fault.
        field: Option<&'static str>,
        /// What is wrong.
        message: String,
    },
    /// Something the command refers to does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The command conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The presented secret is not valid for this.
    #[error("{0}")]
    Unauthorized(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CommandError {
    fn from(error: sqlx::Error) -> Self {
        CommandError::Store(error.into())
    }
}

/// How a command ended when it did not succeed.
#[derive(Debug)]
pub(crate) enum Executed<E> {
    /// The domain refused it.
    Rejected(E),
    /// Something else failed.
    Failed(CommandError),
}

impl<E: Rejection> Executed<E> {
    /// The caller's view of the failure.
    pub(crate) fn into_command_error(self) -> CommandError {
        match self {
            Executed::Rejected(e) => e.into_command_error(),
            Executed::Failed(e) => e,
        }
    }
}

/// How a domain rejection reads to a caller.
pub(crate) trait Rejection: std::error::Error {
    fn into_command_error(self) -> CommandError;
}

fn invalid(field: &'static str, e: impl std::fmt::Display) -> CommandError {
    CommandError::Invalid {
        field: Some(field),
        message: format!("{field} {e}"),
    }
}

impl Rejection for ClientError {
    fn into_command_error(self) -> CommandError {
        match self {
            ClientError::NotFound => CommandError::NotFound(self.to_string()),
            ClientError::InvalidName(e) => invalid("name", e),
            ClientError::AlreadyExists | ClientError::Unchanged(_) => {
                CommandError::Conflict(self.to_string())
            }
        }
    }
}

impl Rejection for SiteError {
    fn into_command_error(self) -> CommandError {
        match self {
            SiteError::NotFound => CommandError::NotFound(self.to_string()),
            SiteError::InvalidName(e) => invalid("name", e),
            SiteError::AlreadyExists | SiteError::Unchanged(_) => {
                CommandError::Conflict(self.to_string())
            }
        }
    }
}

impl Rejection for AgentError {
    fn into_command_error(self) -> CommandError {
        match self {
            AgentError::NotFound => CommandError::NotFound(self.to_string()),
            AgentError::InvalidName(e) => invalid("display_name", e),
            AgentError::InvalidHostname => CommandError::Invalid {
                field: Some("hostname"),
                message: self.to_string(),
            },
            AgentError::AlreadyEnrolled
            | AgentError::Decommissioned
            | AgentError::AlreadyInSite(_)
            | AgentError::Unchanged(_) => CommandError::Conflict(self.to_string()),
        }
    }
}

impl Rejection for EnrollmentTokenError {
    fn into_command_error(self) -> CommandError {
        match self {
            EnrollmentTokenError::Unknown
            | EnrollmentTokenError::Expired(_)
            | EnrollmentTokenError::UsedUp(_)
            | EnrollmentTokenError::Revoked => CommandError::Unauthorized(self.to_string()),
            EnrollmentTokenError::ExpiryNotInFuture => invalid("expires_in", "must be positive"),
            EnrollmentTokenError::InvalidMaxUses(_) => CommandError::Invalid {
                field: Some("max_uses"),
                message: self.to_string(),
            },
            EnrollmentTokenError::AlreadyIssued => CommandError::Conflict(self.to_string()),
        }
    }
}

impl Rejection for ApiTokenError {
    fn into_command_error(self) -> CommandError {
        match self {
            ApiTokenError::NotFound => CommandError::NotFound(self.to_string()),
            ApiTokenError::InvalidName(e) => invalid("name", e),
            ApiTokenError::AlreadyIssued | ApiTokenError::AlreadyRevoked => {
                CommandError::Conflict(self.to_string())
            }
        }
    }
}

/// Carries out Logbook's commands.
#[derive(Debug, Clone)]
pub struct Commands {
    store: EventStore,
    notifier: LogNotifier,
}

/// Runs `attempt` again when it loses an optimistic-concurrency race.
async fn retry_on_conflict<T, F, Fut>(mut attempt: F) -> Result<T, CommandError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CommandError>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(CommandError::Store(StoreError::Conflict { .. })) if tries < CONFLICT_RETRIES => {
                tries += 1;
            }
            other => return other,
        }
    }
}

pub(crate) async fn decide<A>(
    loaded: &mut Loaded<A>,
    command: A::Command,
) -> Result<Vec<A::Event>, CommandError>
where
    A: Aggregate<Services = ()>,
    A::Error: Rejection,
{
    loaded
        .decide(command)
        .await
        .map_err(Rejection::into_command_error)
}

/// An advisory-lock key for one aggregate.
fn lock_key(id: Uuid) -> i64 {
    let (high, low) = id.as_u64_pair();
    (high ^ low) as i64
}

/// A new enrollment token, shown once.
#[derive(Debug, Clone)]
pub struct IssuedEnrollmentToken {
    /// Its id.
    pub token_id: EnrollmentTokenId,
    /// The secret to give to agents.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// How many agents it may enroll.
    pub max_uses: u32,
    /// The site it enrolls into.
    pub site_id: SiteId,
    /// The site's client.
    pub client_id: ClientId,
}

/// A newly enrolled agent and its credential, shown once.
#[derive(Debug, Clone)]
pub struct EnrolledAgent {
    /// Its id.
    pub agent_id: AgentId,
    /// Its bearer credential.
    pub credential: String,
    /// Its client.
    pub client_id: ClientId,
    /// Its site.
    pub site_id: SiteId,
}

/// A new API token, shown once.
#[derive(Debug, Clone)]
pub struct IssuedApiToken {
    /// Its id.
    pub token_id: ApiTokenId,
    /// The secret.
    pub token: String,
}

impl Commands {
    /// Commands recorded in `store`; `notifier` hears of every commit.
    pub fn new(store: EventStore, notifier: LogNotifier) -> Self {
        Self { store, notifier }
    }

    /// Commits a transaction that appended events of `event_types` and wakes the log readers
    /// that such a commit concerns ([`Self::notify_appended`]).
    pub(crate) async fn commit<T: AsRef<str>>(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Postgres>,
        event_types: impl IntoIterator<Item = T>,
    ) -> Result<(), CommandError> {
        tx.commit().await?;
        self.notify_appended(event_types);
        Ok(())
    }

    /// Wakes the log readers for committed events of `event_types`: all of them, or, when none
    /// changes a job queue, all but the job dispatcher.
    pub(crate) fn notify_appended<T: AsRef<str>>(&self, event_types: impl IntoIterator<Item = T>) {
        let appended = if event_types
            .into_iter()
            .any(|event_type| crate::jobs::dispatch::acts_on(event_type.as_ref()))
        {
            Appended::Anything
        } else {
            Appended::NoJobQueueChange
        };
        self.notifier.notify(appended);
    }

    /// Records the first events of a new aggregate together with the hash of the secret that
    /// stands for it (`(hash, kind, subject)`), in one transaction: a token exists with its
    /// secret or not at all.
    async fn create_with_credential<A: Aggregate>(
        &self,
        aggregate_id: &str,
        events: &[A::Event],
        metadata: &EventMetadata,
        (hash, kind, subject): (&SecretHash, SecretKind, Uuid),
    ) -> Result<(), CommandError> {
        let mut tx = self.store.pool().begin().await?;
        EventStore::append::<A>(&mut tx, aggregate_id, 0, events, metadata).await?;
        credentials::insert(&mut tx, hash, kind, subject, metadata.recorded_at).await?;
        self.commit(tx, events.iter().map(DomainEvent::event_type))
            .await
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Runs a command against one aggregate and appends its events.
    /// Runs a command against one aggregate and appends its events.
    pub(crate) async fn execute<A>(
        &self,
        ctx: &Ctx,
        id: &str,
        command: A::Command,
    ) -> Result<Vec<A::Event>, CommandError>
    where
        A: Aggregate<Services = ()>,
        A::Command: Clone,
        A::Error: Rejection,
    {
        self.try_execute::<A>(ctx, id, command)
            .await
            .map_err(|e| match e {
                Executed::Rejected(e) => e.into_command_error(),
                Executed::Failed(e) => e,
            })
    }

    /// Like [`Commands::execute`], but hands back the domain's rejection itself.
    pub(crate) async fn try_execute<A>(
        &self,
        ctx: &Ctx,
        id: &str,
        command: A::Command,
    ) -> Result<Vec<A::Event>, Executed<A::Error>>
    where
        A: Aggregate<Services = ()>,
        A::Command: Clone,
    {
        self.try_execute_revoking::<A>(ctx, id, command, None).await
    }

    /// Like [`Commands::try_execute`], and when events were appended, revokes the secrets of
    /// `revoke` (kind, subject) in the same transaction.
    pub(crate) async fn try_execute_revoking<A>(
        &self,
        ctx: &Ctx,
        id: &str,
        command: A::Command,
        revoke: Option<(SecretKind, Uuid)>,
    ) -> Result<Vec<A::Event>, Executed<A::Error>>
    where
        A: Aggregate<Services = ()>,
        A::Command: Clone,
    {
        let mut tries = 0;
        loop {
            let attempt = async {
                let mut loaded = self
                    .store
                    .load::<A>(id)
                    .await
                    .map_err(|e| Executed::Failed(e.into()))?;
                let events = loaded
                    .decide(command.clone())
                    .await
                    .map_err(Executed::Rejected)?;
                let mut tx = self
                    .store
                    .pool()
                    .begin()
                    .await
                    .map_err(|e| Executed::Failed(e.into()))?;
                let now = Utc::now();
                EventStore::append::<A>(&mut tx, id, loaded.version, &events, &ctx.metadata(now))
                    .await
                    .map_err(|e| Executed::Failed(e.into()))?;
                if let Some((kind, subject)) = revoke.filter(|_| !events.is_empty()) {
                    credentials::revoke(&mut tx, kind, subject, now)
                        .await
                        .map_err(|e| Executed::Failed(e.into()))?;
                }
                self.commit(tx, events.iter().map(DomainEvent::event_type))
                    .await
                    .map_err(Executed::Failed)?;
                Ok(events)
            };
            match attempt.await {
                Err(Executed::Failed(CommandError::Store(StoreError::Conflict { .. })))
                    if tries < CONFLICT_RETRIES =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs many commands, each against its own aggregate of type `A`, with one load query and
    /// one insert: the group commit behind the paths agents drive at fleet scale (claims,
    /// results). Commands for the same aggregate are decided in order, each on the state the
    /// previous one left. Every command either takes effect or is answered with its rejection;
    /// when the batch loses a race with another writer its insert fails as a whole, and the
    /// batch is decided again on the state as it now is (the usual race: a claim batch against
    /// the dispatcher's record of the same jobs' dispatch, which takes the sequence the claims
    /// were decided at); only after [`BATCH_ATTEMPTS`] lost races is each command run on its
    /// own. (Run on its own at the first lost race, a batch of claims during a bulk job cost a
    /// load and an insert per claim: a thousand loads of one aggregate each in one bulk job.) `Err` means the store failed: nothing was recorded,
    /// unless the connection broke while the insert was committing (as with any commit).
    pub(crate) async fn try_execute_batch<A>(
        &self,
        commands: Vec<(Ctx, String, A::Command)>,
    ) -> Result<Vec<Result<Vec<A::Event>, Executed<A::Error>>>, CommandError>
    where
        A: Aggregate<Services = ()>,
        A::Command: Clone,
    {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<String> = commands.iter().map(|(_, id, _)| id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        for attempt in 1..=BATCH_ATTEMPTS {
            let mut loaded = self.store.load_many::<A>(&ids).await?;
            let now = Utc::now();
            let mut answers = Vec::with_capacity(commands.len());
            let mut rows = Vec::new();
            for (ctx, id, command) in &commands {
                let aggregate = loaded.entry(id.clone()).or_default();
                match aggregate.decide(command.clone()).await {
                    Ok(events) => {
                        rows.extend(NewEvent::for_aggregate::<A>(
                            id,
                            aggregate.version,
                            &events,
                            &ctx.metadata(now),
                        )?);
                        aggregate.version += events.len() as i64;
                        answers.push(Ok(events));
                    }
                    Err(rejection) => answers.push(Err(Executed::Rejected(rejection))),
                }
            }
            if rows.is_empty() {
                return Ok(answers);
            }
            // Rows in aggregate order, so that two batches touching the same aggregates take
            // their locks in the same order.
            rows.sort_by(|a, b| (&a.aggregate_id, a.sequence).cmp(&(&b.aggregate_id, b.sequence)));
            // One statement, so no explicit transaction: it commits as a whole or not at all,
            // and a claim costs two round trips to Postgres (load, insert) rather than four.
            let mut conn = self.store.pool().acquire().await?;
            match EventStore::append_rows(&mut conn, &rows, Conflicts::Fail).await {
                Ok(_) => {
                    drop(conn);
                    self.notify_appended(rows.iter().map(|row| &row.event_type));
                    return Ok(answers);
                }
                Err(StoreError::Conflict { .. }) if attempt < BATCH_ATTEMPTS => {
                    metrics::counter!("logbook_command_batch_retries_total", "aggregate" => A::TYPE)
                        .increment(1);
                }
                Err(StoreError::Conflict { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        metrics::counter!("logbook_command_batch_fallbacks_total", "aggregate" => A::TYPE)
            .increment(1);
        Ok(self.execute_each::<A>(commands).await)
    }

    /// Runs commands one at a time, each in its own transaction.
    async fn execute_each<A>(
        &self,
        commands: Vec<(Ctx, String, A::Command)>,
    ) -> Vec<Result<Vec<A::Event>, Executed<A::Error>>>
    where
        A: Aggregate<Services = ()>,
        A::Command: Clone,
    {
        let mut answers = Vec::with_capacity(commands.len());
        for (ctx, id, command) in commands {
            answers.push(self.try_execute::<A>(&ctx, &id, command).await);
        }
        answers
    }

    /// Creates a client.
    pub async fn create_client(&self, ctx: &Ctx, name: &str) -> Result<ClientId, CommandError> {
        let client_id = ClientId::from(Uuid::now_v7());
        self.execute::<Client>(
            ctx,
            &client_id.to_string(),
            ClientCommand::CreateClient {
                client_id,
                name: name.to_string(),
            },
        )
        .await?;
        Ok(client_id)
    }

    /// Renames a client.
    pub async fn rename_client(
        &self,
        ctx: &Ctx,
        client_id: ClientId,
        name: &str,
    ) -> Result<(), CommandError> {
        self.execute::<Client>(
            ctx,
            &client_id.to_string(),
            ClientCommand::RenameClient {
                name: name.to_string(),
            },
        )
        .await
        .map(drop)
    }

    /// Creates a site under an existing client.
    pub async fn create_site(
        &self,
        ctx: &Ctx,
        client_id: ClientId,
        name: &str,
    ) -> Result<SiteId, CommandError> {
        let client = self.store.load::<Client>(&client_id.to_string()).await?;
        if !client.state.exists() {
            return Err(CommandError::NotFound(format!(
                "client {client_id} not found"
            )));
        }
        let site_id = SiteId::from(Uuid::now_v7());
        self.execute::<Site>(
            ctx,
            &site_id.to_string(),
            SiteCommand::CreateSite {
                site_id,
                client_id,
                name: name.to_string(),
            },
        )
        .await?;
        Ok(site_id)
    }

    /// Renames a site.
    pub async fn rename_site(
        &self,
        ctx: &Ctx,
        site_id: SiteId,
        name: &str,
    ) -> Result<(), CommandError> {
        self.execute::<Site>(
            ctx,
            &site_id.to_string(),
            SiteCommand::RenameSite {
                name: name.to_string(),
            },
        )
        .await
        .map(drop)
    }

    async fn site_client(&self, site_id: SiteId) -> Result<ClientId, CommandError> {
        let site = self.store.load::<Site>(&site_id.to_string()).await?;
        site.state
            .client_id()
            .ok_or_else(|| CommandError::NotFound(format!("site {site_id} not found")))
    }

    /// Issues an enrollment token for a site.
    pub async fn issue_enrollment_token(
        &self,
        ctx: &Ctx,
        site_id: SiteId,
        expires_in: Duration,
        max_uses: u32,
    ) -> Result<IssuedEnrollmentToken, CommandError> {
        let client_id = self.site_client(site_id).await?;
        let token_id = EnrollmentTokenId::from(Uuid::now_v7());
        let secret = secrets::generate(SecretKind::EnrollmentToken);
        let now = Utc::now();
        let expires_at = now
            + chrono::Duration::from_std(expires_in)
                .map_err(|_| invalid("expires_in", "is too long"))?;
        let mut loaded = Loaded::<EnrollmentToken>::default();
        let events = decide(
            &mut loaded,
            EnrollmentTokenCommand::IssueEnrollmentToken {
                token_id,
                client_id,
                site_id,
                secret_hash: secret.hash,
                expires_at,
                max_uses,
                now,
            },
        )
        .await?;
        self.create_with_credential::<EnrollmentToken>(
            &token_id.to_string(),
            &events,
            &ctx.metadata(now),
            (
                &secret.hash,
                SecretKind::EnrollmentToken,
                token_id.as_uuid(),
            ),
        )
        .await?;
        Ok(IssuedEnrollmentToken {
            token_id,
            token: secret.plaintext,
            expires_at,
            max_uses,
            site_id,
            client_id,
        })
    }

    /// Revokes an enrollment token.
    pub async fn revoke_enrollment_token(
        &self,
        ctx: &Ctx,
        token_id: EnrollmentTokenId,
    ) -> Result<(), CommandError> {
        let revoke = Some((SecretKind::EnrollmentToken, token_id.as_uuid()));
        self.try_execute_revoking::<EnrollmentToken>(
            ctx,
            &token_id.to_string(),
            EnrollmentTokenCommand::RevokeEnrollmentToken,
            revoke,
        )
        .await
        .map(drop)
        .map_err(|e| match e {
            Executed::Rejected(EnrollmentTokenError::Unknown) => {
                CommandError::NotFound(format!("enrollment token {token_id} not found"))
            }
            Executed::Rejected(EnrollmentTokenError::Revoked) => {
                CommandError::Conflict("enrollment token was already revoked".into())
            }
            Executed::Rejected(other) => other.into_command_error(),
            Executed::Failed(e) => e,
        })
    }

    /// Enrolls an agent with an enrollment token: redeems the token, enrolls the agent and
    /// records its credential, all in one transaction.
    pub async fn enroll_agent(
        &self,
        request_id: &str,
        presented_token: &str,
        identity: AgentIdentity,
    ) -> Result<EnrolledAgent, CommandError> {
        let unknown = || CommandError::Unauthorized("unknown enrollment token".to_string());
        let presented = secrets::hash(presented_token);
        let token_id =
            credentials::subject(self.store.pool(), &presented, SecretKind::EnrollmentToken)
                .await?
                .map(EnrollmentTokenId::from)
                .ok_or_else(unknown)?;
        let agent_id = AgentId::from(Uuid::now_v7());
        let credential = secrets::generate(SecretKind::Agent);
        let ctx = Ctx {
            actor: Actor::Enrollment,
            request_id: request_id.to_string(),
            correlation_id: CorrelationId::from(agent_id.as_uuid()),
        };
        retry_on_conflict(|| async {
            // Agents enrolling with the same token at once (a fleet rollout) queue here instead
            // of failing each other's optimistic-concurrency check. Advisory locks are not
            // writes, so the append below is still the transaction's first write.
            let mut tx = self.store.pool().begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock_key(token_id.as_uuid()))
                .execute(&mut *tx)
                .await?;
            let now = Utc::now();
            // On the transaction's connection: the enrollments queued behind this one hold
            // connections of their own, possibly all of the pool's. From the token's newest
            // snapshot: a token used by thousands of agents has a redemption for each.
            let mut token =
                EventStore::load_in_snapshotted::<EnrollmentToken>(&mut tx, &token_id.to_string())
                    .await?;
            let token_events = decide(
                &mut token,
                EnrollmentTokenCommand::RedeemEnrollmentToken {
                    presented,
                    agent_id,
                    now,
                },
            )
            .await?;
            let (client_id, site_id) = token.state.target().ok_or_else(unknown)?;
            let mut agent = Loaded::<Agent>::default();
            let agent_events = decide(
                &mut agent,
                AgentCommand::EnrollAgent {
                    agent_id,
                    client_id,
                    site_id,
                    enrollment_token_id: token_id,
                    credential_hash: credential.hash,
                    identity: identity.clone(),
                },
            )
            .await?;
            let meta = ctx.metadata(now);
            EventStore::append::<EnrollmentToken>(
                &mut tx,
                &token_id.to_string(),
                token.version,
                &token_events,
                &meta,
            )
            .await?;
            EventStore::append::<Agent>(&mut tx, &agent_id.to_string(), 0, &agent_events, &meta)
                .await?;
            // `decide` applied the redemption to the state.
            let before = token.version;
            token.version += token_events.len() as i64;
            EventStore::snapshot_in(&mut tx, &token_id.to_string(), &token, before).await?;
            credentials::insert(
                &mut tx,
                &credential.hash,
                SecretKind::Agent,
                agent_id.as_uuid(),
                now,
            )
            .await?;
            let appended = token_events.iter().map(DomainEvent::event_type);
            self.commit(
                tx,
                appended.chain(agent_events.iter().map(DomainEvent::event_type)),
            )
            .await?;
            Ok(EnrolledAgent {
                agent_id,
                credential: credential.plaintext.clone(),
                client_id,
                site_id,
            })
        })
        .await
    }

    /// Sets an agent's display name.
    pub async fn rename_agent(
        &self,
        ctx: &Ctx,
        agent_id: AgentId,
        display_name: &str,
    ) -> Result<(), CommandError> {
        self.execute::<Agent>(
            ctx,
            &agent_id.to_string(),
            AgentCommand::RenameAgent {
                display_name: display_name.to_string(),
            },
        )
        .await
        .map(drop)
    }

    /// Moves an agent to another site.
    pub async fn move_agent(
        &self,
        ctx: &Ctx,
        agent_id: AgentId,
        to_site_id: SiteId,
    ) -> Result<(), CommandError> {
        let to_client_id = self.site_client(to_site_id).await?;
        self.execute::<Agent>(
            ctx,
            &agent_id.to_string(),
            AgentCommand::MoveAgent {
                to_client_id,
                to_site_id,
            },
        )
        .await
        .map(drop)
    }

    /// Retires an agent; its credential stops working in the same transaction.
    pub async fn decommission_agent(
        &self,
        ctx: &Ctx,
        agent_id: AgentId,
        reason: &str,
    ) -> Result<(), CommandError> {
        let command = AgentCommand::DecommissionAgent {
            reason: reason.to_string(),
        };
        let revoke = Some((SecretKind::Agent, agent_id.as_uuid()));
        self.try_execute_revoking::<Agent>(ctx, &agent_id.to_string(), command, revoke)
            .await
            .map(drop)
            .map_err(Executed::into_command_error)
    }

    /// Issues an API token.
    pub async fn issue_api_token(
        &self,
        ctx: &Ctx,
        name: &str,
    ) -> Result<IssuedApiToken, CommandError> {
        let token_id = ApiTokenId::from(Uuid::now_v7());
        let secret = secrets::generate(SecretKind::ApiToken);
        let mut loaded = Loaded::<ApiToken>::default();
        let events = decide(
            &mut loaded,
            ApiTokenCommand::IssueApiToken {
                token_id,
                name: name.to_string(),
                secret_hash: secret.hash,
            },
        )
        .await?;
        let now = Utc::now();
        self.create_with_credential::<ApiToken>(
            &token_id.to_string(),
            &events,
            &ctx.metadata(now),
            (&secret.hash, SecretKind::ApiToken, token_id.as_uuid()),
        )
        .await?;
        Ok(IssuedApiToken {
            token_id,
            token: secret.plaintext,
        })
    }

    /// Revokes an API token.
    pub async fn revoke_api_token(
        &self,
        ctx: &Ctx,
        token_id: ApiTokenId,
    ) -> Result<(), CommandError> {
        let revoke = Some((SecretKind::ApiToken, token_id.as_uuid()));
        self.try_execute_revoking::<ApiToken>(
            ctx,
            &token_id.to_string(),
            ApiTokenCommand::RevokeApiToken,
            revoke,
        )
        .await
        .map(drop)
        .map_err(Executed::into_command_error)
    }
}
