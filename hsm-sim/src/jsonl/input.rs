//! Typed access to the `input` object of a request.
//!
//! Every accessor checks the JSON type, hex and length of one field and
//! turns it into the library's typed value, so the ops never handle raw
//! JSON. Keys may be inline hex or `"label:NAME"` naming an entry of the
//! key file.

use serde_json::{Map, Value};

use super::error::{BatchError, InField};
use crate::keyfile::KeyStore;
use crate::{AesKey, TdesKey};

/// The `input` object of one request, with the key store (if any).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    obj: &'a Map<String, Value>,
    keys: Option<&'a KeyStore>,
}

impl<'a> Input<'a> {
    /// Wrap an input object.
    pub fn new(obj: &'a Map<String, Value>, keys: Option<&'a KeyStore>) -> Self {
        Self { obj, keys }
    }

    /// True when the field is present (and not `null`).
    pub fn has(&self, field: &str) -> bool {
        self.obj.get(field).is_some_and(|v| !v.is_null())
    }

    /// A required string field.
    pub fn str(&self, field: &'static str) -> Result<&'a str, BatchError> {
        self.opt_str(field)?.ok_or(BatchError::Missing(field))
    }

    /// An optional string field.
    pub fn opt_str(&self, field: &'static str) -> Result<Option<&'a str>, BatchError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(BatchError::Type {
                field,
                expected: "a string",
            }),
        }
    }

    /// A required hex field of any length.
    pub fn hex(&self, field: &'static str) -> Result<Vec<u8>, BatchError> {
        decode_hex(field, self.str(field)?)
    }

    /// An optional hex field.
    pub fn opt_hex(&self, field: &'static str) -> Result<Option<Vec<u8>>, BatchError> {
        self.opt_str(field)?
            .map(|s| decode_hex(field, s))
            .transpose()
    }

    /// A required hex field of exactly `N` bytes.
    pub fn hex_n<const N: usize>(&self, field: &'static str) -> Result<[u8; N], BatchError> {
        fixed(field, self.hex(field)?)
    }

    /// A required unsigned integer field (a JSON number, or a string of
    /// digits, since some vector files write lengths as text).
    pub fn uint(&self, field: &'static str) -> Result<u64, BatchError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Err(BatchError::Missing(field)),
            Some(Value::Number(n)) => n.as_u64().ok_or(BatchError::Type {
                field,
                expected: "a non-negative integer",
            }),
            Some(_) => Err(BatchError::Type {
                field,
                expected: "a non-negative integer",
            }),
        }
    }

    /// An optional boolean field (absent = false).
    pub fn flag(&self, field: &'static str) -> Result<bool, BatchError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(BatchError::Type {
                field,
                expected: "true or false",
            }),
        }
    }

    /// A required nested object, as an [`Input`] of its own.
    pub fn object(&self, field: &'static str) -> Result<Input<'a>, BatchError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Err(BatchError::Missing(field)),
            Some(Value::Object(o)) => Ok(Input::new(o, self.keys)),
            Some(_) => Err(BatchError::Type {
                field,
                expected: "an object",
            }),
        }
    }

    /// The raw map (for objects whose keys are data, such as TR-31
    /// optional blocks).
    pub fn raw(&self) -> &'a Map<String, Value> {
        self.obj
    }

    /// An optional list of hex strings (absent = empty).
    pub fn hex_list(&self, field: &'static str) -> Result<Vec<Vec<u8>>, BatchError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => decode_hex(field, s),
                    _ => Err(BatchError::Type {
                        field,
                        expected: "a list of hex strings",
                    }),
                })
                .collect(),
            Some(_) => Err(BatchError::Type {
                field,
                expected: "a list of hex strings",
            }),
        }
    }

    /// An optional list of objects (absent = empty).
    pub fn object_list(&self, field: &'static str) -> Result<Vec<Input<'a>>, BatchError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Object(o) => Ok(Input::new(o, self.keys)),
                    _ => Err(BatchError::Type {
                        field,
                        expected: "a list of objects",
                    }),
                })
                .collect(),
            Some(_) => Err(BatchError::Type {
                field,
                expected: "a list of objects",
            }),
        }
    }

    /// The raw bytes of a key field: inline hex, or `label:NAME` looked up
    /// in the key file.
    pub fn key_bytes(
        &self,
        field: &'static str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, BatchError> {
        let s = self.str(field)?;
        if let Some(label) = s.strip_prefix("label:") {
            let store = self.keys.ok_or(BatchError::NoKeyFile(field))?;
            let entry = store.get(label).ok_or_else(|| BatchError::UnknownLabel {
                field,
                label: label.to_owned(),
            })?;
            return Ok(zeroize::Zeroizing::new(entry.expose_bytes().to_vec()));
        }
        Ok(zeroize::Zeroizing::new(decode_hex_secret(field, s)?))
    }

    /// A DES/TDES key (8, 16 or 24 bytes).
    pub fn tdes_key(&self, field: &'static str) -> Result<TdesKey, BatchError> {
        TdesKey::new(&self.key_bytes(field)?).in_field(field)
    }

    /// A double-length TDES key (EMV issuer and card keys).
    pub fn tdes2_key(&self, field: &'static str) -> Result<TdesKey, BatchError> {
        TdesKey::new_double("key", &self.key_bytes(field)?).in_field(field)
    }

    /// An AES key (16, 24 or 32 bytes).
    pub fn aes_key(&self, field: &'static str) -> Result<AesKey, BatchError> {
        AesKey::new(&self.key_bytes(field)?).in_field(field)
    }
}

/// Decode hex (either case) with an error that names the field.
pub fn decode_hex(field: &'static str, s: &str) -> Result<Vec<u8>, BatchError> {
    hex::decode(s).map_err(|e| BatchError::Hex {
        field,
        reason: e.to_string(),
    })
}

/// Decode a key's hex without echoing any of it in the error: `hex`'s
/// messages quote the offending character, which is part of the key.
fn decode_hex_secret(field: &'static str, s: &str) -> Result<Vec<u8>, BatchError> {
    hex::decode(s).map_err(|e| BatchError::Hex {
        field,
        reason: match e {
            hex::FromHexError::OddLength => "odd number of hex digits".to_owned(),
            _ => "a character is not a hex digit".to_owned(),
        },
    })
}

/// A byte vector as an array of exactly `N` bytes.
pub fn fixed<const N: usize>(field: &'static str, v: Vec<u8>) -> Result<[u8; N], BatchError> {
    let len = v.len();
    v.try_into().map_err(|_| {
        BatchError::value(
            field,
            format!("must be {N} bytes ({} hex digits), got {len} bytes", N * 2),
        )
    })
}

/// Upper-case hex, the format of every byte value in the answers.
pub fn hex_upper(b: impl AsRef<[u8]>) -> String {
    hex::encode_upper(b)
}
