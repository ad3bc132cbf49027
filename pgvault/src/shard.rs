//! Virtual shards: what a token's rows are grouped, leased and moved by.

/// Virtual shards tokens map to.
pub const SHARDS: u16 = 4096;

/// The virtual shard of a PAN's keyed hash: its first two bytes modulo
/// [`SHARDS`], so every token of one card lands on one shard.
pub fn shard_of(pan_hmac: &[u8]) -> u16 {
    let hi = pan_hmac.first().copied().unwrap_or(0);
    let lo = pan_hmac.get(1).copied().unwrap_or(0);
    u16::from_be_bytes([hi, lo]) % SHARDS
}
