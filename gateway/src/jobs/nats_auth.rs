//! NATS identities for agents: each agent connects as its own NATS user, holding a JWT that
//! allows exactly its own job consumer, its acks, its claim and result subjects and its private
//! reply inbox.
//!
//! nats-server runs in operator mode with the Logbook account preloaded (`logbook nats init`
//! writes that configuration). The gateway holds a signing key of the account and signs a user
//! JWT for each agent's own NKey (the agent keeps the seed; only the public key is sent). The
//! server trusts any user signed by the account's signing key, so enrolling an agent never
//! needs a reload or restart of nats-server. JWTs expire; agents renew theirs over HTTP with
//! their credential, which a decommissioned agent no longer has.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use logbook_domain::ids::AgentId;
use logbook_proto::subjects::Names;
use nkeys::KeyPair;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Why an identity could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    /// The signing key file could not be read.
    #[error("reading the account signing key {path}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key is not a valid NKey of the expected kind.
    #[error("{0} is not a valid NKey")]
    BadKey(&'static str),
    /// Signing failed.
    #[error("signing a NATS JWT: {0}")]
    Sign(String),
}

/// Issues agents' NATS user JWTs.
#[derive(Debug)]
pub struct AgentIdentities {
    account_public_key: String,
    signing_key: KeyPair,
    lifetime: Duration,
    names: Names,
}

impl AgentIdentities {
    /// Reads the account signing key (an `SA...` seed) from `seed_file`.
    pub fn from_seed_file(
        account_public_key: &str,
        seed_file: &std::path::Path,
        lifetime: Duration,
        names: Names,
    ) -> Result<Self, NatsAuthError> {
        let seed = std::fs::read_to_string(seed_file).map_err(|source| NatsAuthError::Read {
            path: seed_file.display().to_string(),
            source,
        })?;
        Self::from_seed(account_public_key, seed.trim(), lifetime, names)
    }

    /// Uses the account signing key `seed`.
    pub fn from_seed(
        account_public_key: &str,
        seed: &str,
        lifetime: Duration,
        names: Names,
    ) -> Result<Self, NatsAuthError> {
        let signing_key = KeyPair::from_seed(seed)
            .map_err(|_| NatsAuthError::BadKey("the account signing key"))?;
        if !account_public_key.starts_with('A')
            || KeyPair::from_public_key(account_public_key).is_err()
        {
            return Err(NatsAuthError::BadKey("nats.account_public_key"));
        }
        Ok(Self {
            account_public_key: account_public_key.to_string(),
            signing_key,
            lifetime,
            names,
        })
    }

    /// The subjects one agent may publish to and subscribe to.
    pub fn permissions(names: &Names, agent_id: AgentId) -> (Vec<String>, Vec<String>) {
        let agent = agent_id.to_string();
        let stream = names.jobs_stream(&agent);
        let consumer = names.agent_consumer(&agent);
        let publish = vec![
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
            format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
            format!("$JS.ACK.{stream}.{consumer}.>"),
            names.claims(&agent),
            names.results(&agent),
        ];
        let subscribe = vec![format!("{}.>", names.inbox_prefix(&agent))];
        (publish, subscribe)
    }

    /// A user JWT for the agent's NKey (`U...`).
    pub fn agent_jwt(
        &self,
        agent_id: AgentId,
        user_public_key: &str,
    ) -> Result<String, NatsAuthError> {
        if !user_public_key.starts_with('U') || KeyPair::from_public_key(user_public_key).is_err() {
            return Err(NatsAuthError::BadKey("nats_public_key"));
        }
        let (publish, subscribe) = Self::permissions(&self.names, agent_id);
        let expires = now_secs() + self.lifetime.as_secs() as i64;
        let claims = json!({
            "iss": self.signing_key.public_key(),
            "sub": user_public_key,
            "name": format!("agent-{agent_id}"),
            "exp": expires,
            "nats": {
                "pub": { "allow": publish },
                "sub": { "allow": subscribe },
                "subs": -1, "data": -1, "payload": -1,
                "issuer_account": self.account_public_key,
                "type": "user", "version": 2,
            },
        });
        sign(claims, &self.signing_key)
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Encodes and signs a NATS JWT.
fn sign(mut claims: Value, key: &KeyPair) -> Result<String, NatsAuthError> {
    claims["iat"] = json!(now_secs());
    // The JWT id is a hash of the claims, as nats-server's tools make it.
    let digest = Sha256::digest(claims.to_string().as_bytes());
    claims["jti"] = json!(data_encoding::BASE32_NOPAD.encode(&digest));
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = key
        .sign(signed.as_bytes())
        .map_err(|e| NatsAuthError::Sign(e.to_string()))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// A `.creds` file: a user JWT and its seed, as nats tools and clients read them.
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// Everything an authenticated installation needs, made from fresh keys.
#[derive(Debug, Clone)]
pub struct OperatorSetup {
    /// nats-server configuration (operator mode, Logbook's account preloaded, JetStream on).
    pub server_config: String,
    /// The gateway's own `.creds` (unrestricted user of the Logbook account).
    pub gateway_creds: String,
    /// The Logbook account (`A...`): `nats.account_public_key`.
    pub account_public_key: String,
    /// The account signing key seed (`SA...`): the file `nats.account_signing_key_file`.
    pub account_signing_seed: String,
}

/// Creates an operator, a system account, the Logbook account with a signing key and JetStream
/// enabled, and a user for the gateway.
pub fn init_operator(store_dir: &std::path::Path) -> Result<OperatorSetup, NatsAuthError> {
    let operator = KeyPair::new_operator();
    let system = KeyPair::new_account();
    let account = KeyPair::new_account();
    let signing = KeyPair::new_account();
    let gateway = KeyPair::new_user();
    let operator_jwt = sign(
        json!({
            "iss": operator.public_key(), "sub": operator.public_key(), "name": "logbook",
            "nats": { "type": "operator", "version": 2, "system_account": system.public_key() },
        }),
        &operator,
    )?;
    let system_jwt = sign(
        json!({
            "iss": operator.public_key(), "sub": system.public_key(), "name": "SYS",
            "nats": { "type": "account", "version": 2,
                      "limits": { "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                                  "wildcards": true, "conn": -1, "leaf": -1 } },
        }),
        &operator,
    )?;
    let account_jwt = sign(
        json!({
            "iss": operator.public_key(), "sub": account.public_key(), "name": "LOGBOOK",
            "nats": { "type": "account", "version": 2,
                      "signing_keys": [signing.public_key()],
                      "limits": { "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                                  "wildcards": true, "conn": -1, "leaf": -1,
                                  "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1 } },
        }),
        &operator,
    )?;
    let gateway_jwt = sign(
        json!({
            "iss": signing.public_key(), "sub": gateway.public_key(), "name": "logbook-gateway",
            "nats": { "subs": -1, "data": -1, "payload": -1, "issuer_account": account.public_key(),
                      "type": "user", "version": 2 },
        }),
        &signing,
    )?;
    let seed = |key: &KeyPair| key.seed().map_err(|e| NatsAuthError::Sign(e.to_string()));
    let server_config = format!(
        "# nats-server in operator mode for Logbook (written by `logbook nats init`).\n\
         operator: \"{operator_jwt}\"\n\
         system_account: \"{system}\"\n\
         resolver: MEMORY\n\
         resolver_preload: {{\n  {system}: \"{system_jwt}\"\n  {account}: \"{account_jwt}\"\n}}\n\
         jetstream {{\n  store_dir: \"{store}\"\n}}\n",
        system = system.public_key(),
        account = account.public_key(),
        store = store_dir.display(),
    );
    Ok(OperatorSetup {
        server_config,
        gateway_creds: creds_file(&gateway_jwt, &seed(&gateway)?),
        account_public_key: account.public_key(),
        account_signing_seed: seed(&signing)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_jwt_names_its_subjects_and_verifies() {
        let setup = init_operator(std::path::Path::new("/tmp/js")).expect("setup");
        let identities = AgentIdentities::from_seed(
            &setup.account_public_key,
            &setup.account_signing_seed,
            Duration::from_secs(60),
            Names::default(),
        )
        .expect("issuer");
        let agent = AgentId::from(uuid::Uuid::from_u128(7));
        let user = KeyPair::new_user();
        let jwt = identities
            .agent_jwt(agent, &user.public_key())
            .expect("jwt");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["sub"], user.public_key());
        assert_eq!(claims["nats"]["issuer_account"], setup.account_public_key);
        let allowed = claims["nats"]["pub"]["allow"]
            .as_array()
            .expect("pub allow");
        assert!(
            allowed
                .iter()
                .any(|s| s == &json!(format!("logbook.results.{agent}")))
        );
        assert!(!allowed.iter().any(|s| {
            s.as_str()
                .is_some_and(|s| s.contains('*') && !s.ends_with(".>"))
        }));
        let issuer =
            KeyPair::from_public_key(claims["iss"].as_str().expect("iss")).expect("issuer key");
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
        issuer
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("valid signature");
        assert!(identities.agent_jwt(agent, "not-a-key").is_err());
    }
}
