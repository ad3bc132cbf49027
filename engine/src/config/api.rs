//! `[api]`: the management API of `tessera serve` (token provisioning and
//! life cycle). Who may call it (token requestors and issuer operators,
//! each known by the SHA-256 of its key, never the key), and what each
//! issuer range decides when a wallet asks for a token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::values::{invalid, parsed, ConfigError, Range};

/// What the issuer decides for a token request in one of its ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdvPolicy {
    /// Approved at once.
    Approve,
    /// Approved once the cardholder proves who they are (a one-time code).
    StepUp,
    /// Declined.
    Decline,
}

/// `[[api.requestors]]`: a token requestor (a wallet).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requestor {
    /// The 11-digit token requestor id.
    pub id: u64,
    /// A name for logs.
    pub name: String,
    /// SHA-256 of its API key, hex.
    #[serde(deserialize_with = "sha256_hex")]
    pub key_sha256: [u8; 32],
}

/// `[[api.operators]]`: an issuer operator (acts on every token).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// A name for logs.
    pub name: String,
    /// SHA-256 of its API key, hex.
    #[serde(deserialize_with = "sha256_hex")]
    pub key_sha256: [u8; 32],
}

/// `[[api.issuers]]`: an issuer range eligible for tokens, the profile its
/// tokens get and what its issuer decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerPolicy {
    /// Leading digits of the PANs.
    pub prefix: String,
    /// Their length.
    pub length: u8,
    /// The card profile of their tokens (a key of `[profiles]`).
    pub profile: String,
    /// `approve`, `step_up` or `decline`.
    pub idv: IdvPolicy,
}

impl IssuerPolicy {
    /// The range as a [`Range`].
    pub fn range(&self) -> Range {
        Range {
            prefix: self.prefix.clone(),
            length: self.length,
        }
    }
}

fn sha256_hex<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let s = String::deserialize(d)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(&s, &mut out)
        .map_err(|_| serde::de::Error::custom("key_sha256 must be 64 hex digits (a SHA-256)"))?;
    Ok(out)
}

/// `[api]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiFile {
    #[serde(default, deserialize_with = "optional_addr")]
    listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    requestors: Vec<Requestor>,
    #[serde(default)]
    operators: Vec<Operator>,
    #[serde(default)]
    issuers: Vec<IssuerPolicy>,
    #[serde(default = "default_max_sessions")]
    max_sessions: usize,
    #[serde(default = "default_session_ttl")]
    session_ttl_secs: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
}

fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parsed(d).map(Some)
}

fn default_max_sessions() -> usize {
    1024
}
fn default_session_ttl() -> u64 {
    300
}
fn default_max_connections() -> usize {
    256
}

/// The checked `[api]`.
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// Where the API listens (`--api` overrides); none = no API.
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain and key for HTTPS (relative paths resolved
    /// against the config file). Without them the API speaks plain HTTP,
    /// which is accepted only on a loopback address.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Token requestors.
    pub requestors: Vec<Requestor>,
    /// Issuer operators.
    pub operators: Vec<Operator>,
    /// Issuer ranges eligible for tokens.
    pub issuers: Vec<IssuerPolicy>,
    /// Provisioning sessions open at once.
    pub max_sessions: usize,
    /// A provisioning session unanswered this long is dropped, seconds.
    pub session_ttl_secs: u64,
    /// HTTP connections at once.
    pub max_connections: usize,
}

impl ApiFile {
    /// Check against the vault's ranges and the profiles.
    pub(super) fn check(
        self,
        base: &Path,
        issuer_ranges: &[Range],
        profile_names: &[&str],
    ) -> Result<ApiConfig, ConfigError> {
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
            (None, None) => None,
            _ => return Err(invalid("api.tls_cert and api.tls_key go together")),
        };
        let mut seen_ids = std::collections::HashSet::new();
        let mut seen_keys = std::collections::HashSet::new();
        for r in &self.requestors {
            if !(10_000_000_000..=99_999_999_999).contains(&r.id) {
                return Err(invalid(format!(
                    "api.requestors: id {} must be 11 digits",
                    r.id
                )));
            }
            if !seen_ids.insert(r.id) {
                return Err(invalid(format!("api.requestors: id {} twice", r.id)));
            }
        }
        let hashes = self.requestors.iter().map(|r| r.key_sha256);
        for h in hashes.chain(self.operators.iter().map(|o| o.key_sha256)) {
            if !seen_keys.insert(h) {
                return Err(invalid("api: two callers share one key"));
            }
        }
        for p in &self.issuers {
            let range = p.range();
            range.check("api.issuers")?;
            if !issuer_ranges
                .iter()
                .any(|r| r.length == range.length && range.prefix.starts_with(&r.prefix))
            {
                return Err(invalid(format!(
                    "api.issuers {}: not inside a vault issuer range",
                    p.prefix
                )));
            }
            if !profile_names.contains(&p.profile.as_str()) {
                return Err(invalid(format!(
                    "api.issuers {}: unknown profile \"{}\"",
                    p.prefix, p.profile
                )));
            }
        }
        if self.max_sessions == 0 || self.max_connections == 0 || self.session_ttl_secs == 0 {
            return Err(invalid(
                "api.max_sessions, api.max_connections and api.session_ttl_secs must be above 0",
            ));
        }
        Ok(ApiConfig {
            listen: self.listen,
            tls,
            requestors: self.requestors,
            operators: self.operators,
            issuers: self.issuers,
            max_sessions: self.max_sessions,
            session_ttl_secs: self.session_ttl_secs,
            max_connections: self.max_connections,
        })
    }
}

impl ApiConfig {
    /// The issuer policy of a PAN: the longest matching prefix.
    pub fn issuer_of(&self, pan_digits: &str) -> Option<&IssuerPolicy> {
        self.issuers
            .iter()
            .filter(|p| p.range().contains(pan_digits))
            .max_by_key(|p| p.prefix.len())
    }
}
