//! Bytes as the state file keeps them: hex strings, and key material that
//! is zeroized on drop and redacted in `Debug`.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Hex (de)serialisation of byte strings.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write bytes as upper-case hex.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode_upper(v))
    }

    /// Read bytes from hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Key material (or other card secrets): zeroized on drop, redacted in
/// `Debug`, hex in the state file.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(pub Zeroizing<Vec<u8>>);

impl KeyBytes {
    /// Wrap bytes.
    pub fn new(b: &[u8]) -> Self {
        Self(Zeroizing::new(b.to_vec()))
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for KeyBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Zeroizing::new(hex::encode_upper(&*self.0)))
    }
}

impl<'de> Deserialize<'de> for KeyBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        let b = hex::decode(&*s).map_err(|_| serde::de::Error::custom("key is not hex"))?;
        Ok(Self(Zeroizing::new(b)))
    }
}
