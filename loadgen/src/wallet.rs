//! A wallet, as the provisioning API sees one: it takes a card to an
//! active token on a device's secure element (eligibility, terms, step-up
//! with the one-time code read from the issuer's outbox, the scripts
//! relayed to the card in batches), and it makes lifecycle calls. The
//! demo and the end-to-end tests drive the API through it, over real
//! HTTP(S).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hsm_sim::perso::runner::CardLink;
use serde_json::{json, Value};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::Agent;

/// A call that did not give what the wallet needed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalletError {
    /// The API answered an error.
    #[error("{call}: HTTP {status} {code}")]
    Api {
        /// The call.
        call: String,
        /// The HTTP status.
        status: u16,
        /// The error code of the body.
        code: String,
    },
    /// Transport, the card, or an answer without a field it must have.
    #[error("{0}")]
    Other(String),
}

impl WalletError {
    /// The API's error code, if the API answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::Other(_) => None,
        }
    }
}

fn other(e: impl std::fmt::Display) -> WalletError {
    WalletError::Other(e.to_string())
}

/// A token the wallet obtained.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The token reference.
    pub token_ref: String,
    /// `approved` or `step_up` (a declined request is an error).
    pub decision: String,
    /// The token's last four digits.
    pub token_last4: String,
    /// The card profile.
    pub profile: String,
    /// Batches relayed to the card.
    pub batches: usize,
}

/// An API client with one key.
#[derive(Debug, Clone)]
pub struct Wallet {
    agent: Agent,
    base: String,
    key: String,
    outbox: Option<PathBuf>,
}

impl Wallet {
    /// A client of the API at `base` (`http://` or `https://`), trusting
    /// only `ca_pem` for HTTPS.
    pub fn new(base: &str, key: &str, ca_pem: Option<&[u8]>) -> Result<Self, WalletError> {
        let mut tls = TlsConfig::builder().provider(TlsProvider::Rustls);
        if let Some(pem) = ca_pem {
            let ca = Certificate::from_pem(pem).map_err(other)?;
            tls = tls.root_certs(RootCerts::Specific(Arc::new(vec![ca])));
        }
        let agent: Agent = Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(40)))
            .build()
            .into();
        Ok(Self {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            outbox: None,
        })
    }

    /// Where this wallet reads one-time codes (the issuer's outbox: the
    /// test's stand-in for the cardholder's phone).
    pub fn with_outbox(mut self, outbox: &Path) -> Self {
        self.outbox = Some(outbox.to_owned());
        self
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// POST a JSON body; the status and the JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), WalletError> {
        let mut r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &self.bearer())
            .send_json(body)
            .map_err(other)?;
        let status = r.status().as_u16();
        let v = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// GET; the status and the JSON answer.
    pub fn get(&self, path: &str) -> Result<(u16, Value), WalletError> {
        let mut r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &self.bearer())
            .call()
            .map_err(other)?;
        let status = r.status().as_u16();
        let v = r.body_mut().read_json::<Value>().unwrap_or(Value::Null);
        Ok((status, v))
    }

    fn expect(&self, call: &str, want: u16, got: (u16, Value)) -> Result<Value, WalletError> {
        if got.0 == want {
            return Ok(got.1);
        }
        Err(WalletError::Api {
            call: call.to_owned(),
            status: got.0,
            code: got.1["error"].as_str().unwrap_or("").to_owned(),
        })
    }

    fn field(v: &Value, name: &str) -> Result<String, WalletError> {
        v[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| other(format!("the answer has no {name}")))
    }

    /// Eligibility, terms and the token request: the token reference and
    /// the decision (`approved`, `step_up`, or the error `DECLINED`).
    pub fn request_token(
        &self,
        pan: &str,
        expiry: &str,
        device_id: &str,
    ) -> Result<(String, String, String, String), WalletError> {
        let e = self.post(
            "/v1/tokens/eligibility",
            &json!({ "pan": pan, "expiry": expiry, "device_id": device_id }),
        )?;
        let e = self.expect("eligibility", 200, e)?;
        let t = self.post(
            "/v1/tokens",
            &json!({
                "eligibility_id": Self::field(&e, "eligibility_id")?,
                "terms_accepted": Self::field(&e, "terms_id")?,
            }),
        )?;
        let t = self.expect("token request", 201, t)?;
        let decision = Self::field(&t, "decision")?;
        if decision == "declined" {
            return Err(WalletError::Api {
                call: "token request".into(),
                status: 201,
                code: "DECLINED".into(),
            });
        }
        Ok((
            Self::field(&t, "token_ref")?,
            decision,
            Self::field(&t, "token_last4")?,
            Self::field(&e, "profile")?,
        ))
    }

    /// Ask for a one-time code and enter it (read from the outbox).
    pub fn step_up(&self, token_ref: &str) -> Result<(), WalletError> {
        let r = self.post(
            &format!("/v1/tokens/{token_ref}/idv/otp"),
            &json!({ "method": "sms" }),
        )?;
        self.expect("otp", 202, r)?;
        let otp = self.read_otp(token_ref)?;
        let v = self.post(
            &format!("/v1/tokens/{token_ref}/idv/verify"),
            &json!({ "otp": otp }),
        )?;
        let v = self.expect("verify", 200, v)?;
        match v["idv"].as_str() {
            Some("verified") => Ok(()),
            other_state => Err(other(format!("ID&V ended {other_state:?}"))),
        }
    }

    /// The last code the outbox holds for a token.
    pub fn read_otp(&self, token_ref: &str) -> Result<String, WalletError> {
        let path = self
            .outbox
            .as_ref()
            .ok_or_else(|| other("no outbox to read the code from"))?;
        let text = std::fs::read_to_string(path).map_err(other)?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["token_ref"] == token_ref)
            .and_then(|v| v["otp"].as_str().map(str::to_owned))
            .ok_or_else(|| other("no code in the outbox"))
    }

    /// Relay the provisioning scripts between the API and the card until
    /// the API says done. The number of batches relayed.
    pub fn personalise(
        &self,
        token_ref: &str,
        card: &mut dyn CardLink,
    ) -> Result<usize, WalletError> {
        let r = self.post(&format!("/v1/tokens/{token_ref}/provision"), &json!({}))?;
        let mut v = self.expect("provision", 201, r)?;
        let session = Self::field(&v, "session_id")?;
        let mut batches = 0;
        loop {
            if v["done"] == true {
                return Ok(batches);
            }
            let responses = relay(card, &v)?;
            batches += 1;
            let r = self.post(
                &format!("/v1/provisioning/{session}"),
                &json!({ "responses": responses }),
            )?;
            v = self.expect("provisioning", 200, r)?;
        }
    }

    /// The whole flow for one card on one device.
    pub fn provision(
        &self,
        pan: &str,
        expiry: &str,
        device_id: &str,
        card: &mut dyn CardLink,
    ) -> Result<Provisioned, WalletError> {
        let (token_ref, decision, token_last4, profile) =
            self.request_token(pan, expiry, device_id)?;
        if decision == "step_up" {
            self.step_up(&token_ref)?;
        }
        let batches = self.personalise(&token_ref, card)?;
        Ok(Provisioned {
            token_ref,
            decision,
            token_last4,
            profile,
            batches,
        })
    }

    /// `POST /v1/tokens/{ref}/{action}`: the state it leaves.
    pub fn lifecycle(&self, token_ref: &str, action: &str) -> Result<String, WalletError> {
        let r = self.post(&format!("/v1/tokens/{token_ref}/{action}"), &json!({}))?;
        let v = self.expect(action, 200, r)?;
        Self::field(&v, "state")
    }

    /// `POST /v1/cards/{action}` (an operator's key): tokens changed.
    pub fn card_lifecycle(&self, pan: &str, action: &str) -> Result<u64, WalletError> {
        let r = self.post(&format!("/v1/cards/{action}"), &json!({ "pan": pan }))?;
        let v = self.expect(action, 200, r)?;
        Ok(v["changed"].as_u64().unwrap_or(0))
    }

    /// `GET /v1/tokens/{ref}`.
    pub fn token(&self, token_ref: &str) -> Result<Value, WalletError> {
        let r = self.get(&format!("/v1/tokens/{token_ref}"))?;
        self.expect("token", 200, r)
    }
}

/// Send a batch (`{"apdus": [hex, ...]}` as the API answers it) to the
/// card; its responses, hex, in order.
pub fn relay(card: &mut dyn CardLink, batch: &Value) -> Result<Vec<String>, WalletError> {
    let apdus = batch["apdus"]
        .as_array()
        .ok_or_else(|| other("the answer has no apdus"))?;
    let mut responses = Vec::with_capacity(apdus.len());
    for a in apdus {
        let apdu = hex::decode(a.as_str().unwrap_or("")).map_err(other)?;
        responses.push(hex::encode_upper(card.transmit(&apdu).map_err(other)?));
    }
    Ok(responses)
}
