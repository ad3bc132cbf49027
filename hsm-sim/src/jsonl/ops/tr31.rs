//! Op for TR-31 key blocks: wrap when the input has `key`, unwrap when it
//! has `key_block`.

use serde_json::{json, Map, Value};

use crate::jsonl::error::BatchError;
use crate::jsonl::input::hex_upper;
use crate::jsonl::input::Input;
use crate::primitives::ct::ct_eq;
use crate::tr31::{self, Tr31Error, Tr31Header, Tr31Version};

pub fn tr31(i: &Input) -> Result<Value, BatchError> {
    match (i.has("key"), i.has("key_block")) {
        (true, false) => wrap(i),
        (false, true) => unwrap(i),
        (true, true) => Err(BatchError::value(
            "key",
            "give either \"key\" (to wrap) or \"key_block\" (to unwrap), not both",
        )),
        (false, false) => Err(BatchError::Missing("key_block")),
    }
}

fn unwrap(i: &Input) -> Result<Value, BatchError> {
    let kbpk = i.key_bytes("kbpk")?;
    let (header, key) =
        tr31::unwrap(&kbpk, i.str("key_block")?).map_err(|e| in_field("key_block", e))?;
    let mut out = header_json(&header);
    out.insert("key".to_owned(), json!(hex_upper(&*key)));
    Ok(Value::Object(out))
}

fn wrap(i: &Input) -> Result<Value, BatchError> {
    let kbpk = i.key_bytes("kbpk")?;
    let key = i.key_bytes("key")?;
    let header = header_from(i)?;
    let masked = masked_key_len(i)?;
    let kb = match i.opt_hex("random_padding")? {
        // Recorded padding (vectors, reproducible tests): must be exactly
        // as long as the padding this key block needs.
        Some(recorded) => tr31::wrap(&kbpk, &header, &key, masked, &mut |buf: &mut [u8]| {
            if buf.len() != recorded.len() {
                return Err(Tr31Error::Padding(format!(
                    "random_padding is {} bytes, this key block needs {}",
                    recorded.len(),
                    buf.len()
                )));
            }
            buf.copy_from_slice(&recorded);
            Ok(())
        }),
        None => tr31::wrap_random(&kbpk, &header, &key, masked),
    }
    .map_err(|e| in_field("key", e))?;

    // Cheap self-check: the block must unwrap to the key it was given.
    let (_, back) = tr31::unwrap(&kbpk, &kb).map_err(|e| in_field("key_block", e))?;
    if !ct_eq(&back, &key) {
        return Err(BatchError::value(
            "key",
            "internal error: the key block does not unwrap to the key",
        ));
    }
    Ok(json!({ "key_block": kb }))
}

/// The header from `version_id`, `key_usage`, `algorithm`, `mode_of_use`,
/// `key_version_number`, `exportability` and `optional_blocks`.
///
/// `optional_blocks` is a JSON object, so blocks come in the order the JSON
/// map gives (serde_json without `preserve_order` sorts them by ID).
fn header_from(i: &Input) -> Result<Tr31Header, BatchError> {
    let version: Tr31Version = i
        .str("version_id")?
        .parse()
        .map_err(|e| in_field("version_id", e))?;
    let mut header = Tr31Header::new(
        version,
        i.str("key_usage")?,
        i.str("algorithm")?,
        i.str("mode_of_use")?,
        i.str("key_version_number")?,
        i.str("exportability")?,
    )
    .map_err(|e| in_field("header", e))?;
    if i.has("optional_blocks") {
        for (id, data) in i.object("optional_blocks")?.raw() {
            let data = data.as_str().ok_or(BatchError::Type {
                field: "optional_blocks",
                expected: "an object of block ID to string data",
            })?;
            header
                .add_block(id, data)
                .map_err(|e| in_field("optional_blocks", e))?;
        }
    }
    Ok(header)
}

/// `masked_key_len`: a number, a digit string, or absent. Any other string
/// (the vectors write `"default(max for algorithm)"`) means the default.
fn masked_key_len(i: &Input) -> Result<Option<usize>, BatchError> {
    const FIELD: &str = "masked_key_len";
    let bad = BatchError::Type {
        field: FIELD,
        expected: "a non-negative integer",
    };
    match i.raw().get(FIELD) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or(bad),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => {
            s.parse().map(Some).map_err(|_| bad)
        }
        Some(Value::String(_)) => Ok(None),
        Some(_) => Err(bad),
    }
}

/// The header fields of an unwrapped block, named as the wrap inputs.
fn header_json(h: &Tr31Header) -> Map<String, Value> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let blocks: Map<String, Value> = h
        .optional_blocks
        .iter()
        .map(|b| (b.id_str().to_owned(), json!(b.data)))
        .collect();
    let mut out = Map::new();
    out.insert("version_id".to_owned(), json!(h.version.to_string()));
    out.insert("key_usage".to_owned(), json!(text(&h.key_usage)));
    out.insert("algorithm".to_owned(), json!(text(&[h.algorithm])));
    out.insert("mode_of_use".to_owned(), json!(text(&[h.mode_of_use])));
    out.insert(
        "key_version_number".to_owned(),
        json!(text(&h.key_version_number)),
    );
    out.insert("exportability".to_owned(), json!(text(&[h.exportability])));
    out.insert("optional_blocks".to_owned(), Value::Object(blocks));
    out
}

/// A TR-31 error as a request error. A wrong KBPK length is about `kbpk`
/// whatever the operation; a bad header field names its own field.
fn in_field(field: &'static str, e: Tr31Error) -> BatchError {
    let field = match &e {
        Tr31Error::KbpkLength { .. } => "kbpk",
        Tr31Error::InvalidField { field, .. } if field.starts_with("optional block") => {
            "optional_blocks"
        }
        Tr31Error::InvalidField { field, .. } => field,
        Tr31Error::Padding(_) => "random_padding",
        _ => field,
    };
    BatchError::value(field, e.to_string())
}
