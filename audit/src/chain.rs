//! The cryptography of the chain: HMAC-SHA-256 links, a running SHA-256
//! digest over whole lines, and Ed25519 signatures over that digest.
//!
//! Two chains, because two kinds of reader check the log. The operator's
//! `audit verify` holds the audit MAC key: each entry's MAC covers the
//! previous entry's MAC and the entry's own bytes, so the first entry
//! that was changed, removed, reordered or inserted is found exactly. An
//! outside auditor holds only the public key: the running digest is
//! public (plain SHA-256) and each checkpoint carries it and signs its own
//! line (MAC included), so anything changed before a checkpoint, or in it,
//! breaks that checkpoint's signature.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The MAC before the first entry, and the digest before the first line.
pub const GENESIS: [u8; 32] = [0; 32];

/// Domain separation for checkpoint signatures.
const CHECKPOINT_CONTEXT: &[u8] = b"tessera-audit-checkpoint-v1\0";

/// The two audit keys, from the key store.
pub struct AuditKeys {
    mac_key: Zeroizing<Vec<u8>>,
    signing: SigningKey,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl AuditKeys {
    /// From the HMAC key (at least 32 bytes) and the 32-byte Ed25519 seed.
    pub fn new(mac_key: &[u8], signing_seed: &[u8]) -> Result<Self, String> {
        if mac_key.len() < 32 {
            return Err(format!(
                "the audit MAC key has {} bytes; HMAC-SHA-256 wants at least 32",
                mac_key.len()
            ));
        }
        let seed: &[u8; 32] = signing_seed.try_into().map_err(|_| {
            format!(
                "the audit signing key has {} bytes; an Ed25519 seed has 32",
                signing_seed.len()
            )
        })?;
        Ok(Self {
            mac_key: Zeroizing::new(mac_key.to_vec()),
            signing: SigningKey::from_bytes(seed),
        })
    }

    /// The MAC key, for verification.
    pub fn mac_key(&self) -> &[u8] {
        &self.mac_key
    }

    /// The public key auditors check checkpoints with.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as 64 hex digits.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.verifying_key().as_bytes())
    }

    /// Sign a checkpoint line up to its `,"sig"` member: every byte of it,
    /// its MAC and the running digest it carries included.
    pub(crate) fn sign_checkpoint(&self, signed: &[u8]) -> [u8; 64] {
        self.signing.sign(&checkpoint_message(signed)).to_bytes()
    }
}

/// Parse a public key file's text: 64 hex digits, surrounding space ignored.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| "a public key is 64 hex digits (32 bytes)".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_owned())
}

/// The link: HMAC-SHA-256 under `key` of the previous MAC and the body.
pub fn link_mac(key: &[u8], prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(prev);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a link.
pub fn link_ok(key: &[u8], prev: &[u8; 32], body: &[u8], mac: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    link_mac(key, prev, body).ct_eq(mac).into()
}

/// The running digest after one more line.
pub fn next_digest(prev: &[u8; 32], line: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(line.as_bytes());
    h.update(b"\n");
    h.finalize().into()
}

fn checkpoint_message(signed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_CONTEXT.len() + signed.len());
    m.extend_from_slice(CHECKPOINT_CONTEXT);
    m.extend_from_slice(signed);
    m
}

/// Check a checkpoint's signature over its line up to `,"sig"`.
pub fn checkpoint_ok(key: &VerifyingKey, signed: &[u8], sig: &[u8; 64]) -> bool {
    key.verify(&checkpoint_message(signed), &Signature::from_bytes(sig))
        .is_ok()
}
