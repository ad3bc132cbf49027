//! What the management API writes to the audit trail: every call with
//! its caller, every refused key, and each provisioning step's outcome.
//!
//! Only named scalar fields of an answer go into an entry (`decision`,
//! `idv`, `state`, ...): answers also carry APDU scripts and references
//! that have no place in a log.

use engine::audit::{Event, Outcome};
use serde_json::Value;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::service::{Action, Service};

/// Fields of an answer worth recording.
const RECORDED_FIELDS: &[&str] = &[
    "decision",
    "idv",
    "state",
    "done",
    "changed",
    "unchanged",
    "profile",
    "token_last4",
];

/// Refused keys recorded individually per second; beyond it they are
/// counted and the count recorded with the next one. A flood of bad keys
/// must not turn into a flood of fsyncs.
pub const AUTH_FAILURE_AUDIT_PER_SEC: u32 = 20;

/// The actor for a caller: `api:requestor:<id>` or `api:operator:<name>`.
pub fn actor(c: &Caller) -> String {
    match c {
        Caller::Requestor { id } => format!("api:requestor:{id:011}"),
        Caller::Operator { name } => format!("api:operator:{name}"),
    }
}

impl Action {
    /// The audit action of this token life-cycle call.
    pub fn audit_action(self) -> &'static str {
        match self {
            Self::Suspend => "token.suspend",
            Self::Resume => "token.resume",
            Self::Delete => "token.delete",
        }
    }

    /// The audit action of this card-wide call.
    pub fn audit_card_action(self) -> &'static str {
        match self {
            Self::Suspend => "card.suspend",
            Self::Resume => "card.resume",
            Self::Delete => "card.delete",
        }
    }
}

impl Service {
    /// Record a call and how it ended. A failure to record turns the
    /// answer into a 500: nothing is acknowledged that is not audited.
    pub fn audit_call(
        &self,
        who: &Caller,
        action: &str,
        subject: &str,
        result: &Result<Value, ApiError>,
    ) -> Result<(), ApiError> {
        let mut event = Event::new(actor(who), action);
        match result {
            Ok(v) => {
                let subject = if subject.is_empty() {
                    ["token_ref", "card", "eligibility_id"]
                        .iter()
                        .find_map(|k| v.get(*k).and_then(Value::as_str))
                        .unwrap_or_default()
                } else {
                    subject
                };
                event = event.subject(subject);
                for name in RECORDED_FIELDS {
                    match v.get(*name) {
                        Some(Value::String(s)) => event = event.detail(*name, s.as_str()),
                        Some(x @ (Value::Bool(_) | Value::Number(_))) => {
                            event = event.detail(*name, x.to_string())
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                event = event
                    .subject(subject)
                    .outcome(
                        if e.status >= 500 {
                            Outcome::Failed
                        } else {
                            Outcome::Refused
                        },
                        e.code,
                    )
                    .detail("status", e.status.to_string());
            }
        }
        self.vault_ref()
            .audit(event)
            .map_err(|e| ApiError::internal(format!("the audit trail refused the entry: {e}")))
    }

    /// Whether a refused API key may be recorded now (bounded per second):
    /// `Some(refusals not recorded since the last one)`. Cheap, so the
    /// caller asks before handing the write to a blocking thread.
    pub fn auth_failure_recordable(&self) -> Option<u64> {
        self.auth_failures().take(AUTH_FAILURE_AUDIT_PER_SEC)
    }

    /// Record a refused API key that [`Service::auth_failure_recordable`]
    /// let through.
    pub fn audit_auth_failure(&self, action: &str, not_recorded_before: u64) {
        let mut event = Event::new("api:unauthenticated", "security.api_auth")
            .outcome(Outcome::Refused, "UNAUTHORIZED")
            .detail("call", action);
        if not_recorded_before > 0 {
            event = event.detail("not_recorded_before", not_recorded_before.to_string());
        }
        let _ = self.vault_ref().audit(event);
    }
}
