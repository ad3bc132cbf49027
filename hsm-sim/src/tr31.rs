//! TR-31 key blocks (ANSI X9.143 / ASC X9 TR-31), versions A, B, C and D.
//!
//! A key block is one printable ASCII string:
//!
//! ```text
//! header (16 chars) || optional blocks || hex(encrypted key data) || hex(MAC)
//! ```
//!
//! The header is version ID (1) ‖ total length (4 decimal digits) ‖ key usage
//! (2) ‖ algorithm (1) ‖ mode of use (1) ‖ key version number (2) ‖
//! exportability (1) ‖ number of optional blocks (2 digits) ‖ reserved `00`.
//! Each optional block is ID (2) ‖ length (2 hex digits, counting ID and
//! length; `00` introduces an extended length: length-of-length (2 hex) then
//! that many bytes of hex length) ‖ data. A `PB` padding block makes the
//! optional blocks a multiple of the cipher block size, because the header is
//! fed whole blocks into the MAC.
//!
//! The clear key data is `key length in bits (2 bytes, big-endian) ‖ key ‖
//! random padding`, up to a multiple of the cipher block. The padding also
//! hides the true key length: by default a key is padded as if it had the
//! maximum length of its algorithm (24 bytes for TDES, 32 for AES).
//!
//! | version | binding | KBEK / KBAK from the KBPK | MAC | encryption |
//! |---|---|---|---|---|
//! | A, C | key variant | `KBPK ⊕ 45…` / `KBPK ⊕ 4D…` | 4 bytes of TDES CBC-MAC (ISO 9797-1 alg. 1, pad 1) over header ‖ ciphertext | TDES-CBC, IV = first 8 header characters |
//! | B | TDES derivation | TDES-CMAC(KBPK, counter ‖ usage ‖ 00 ‖ alg ‖ bits) | TDES-CMAC over header ‖ clear key data, 8 bytes | TDES-CBC, IV = MAC |
//! | D | AES derivation | AES-CMAC, same layout | AES-CMAC over header ‖ clear key data, 16 bytes | AES-CBC, IV = MAC |
//!
//! This follows psec 1.3.0 (`psec.tr31`): the same header format, optional
//! block encoding, default masked key length and checks. Like psec, it does
//! not enforce what the key usage, algorithm or mode of use mean; it only
//! guarantees that the header it returns is the one the MAC covered.
//!
//! Errors never carry key material: neither the KBPK, nor the wrapped key,
//! nor decrypted key data, nor the encrypted key data appear in a message.

use std::fmt;

use zeroize::Zeroizing;

use crate::primitives::ct::ct_eq;
use crate::primitives::mac::{aes_cmac, cbc_mac_tdes, tdes_cmac};
use crate::primitives::padding::Padding;
use crate::primitives::xor_in_place;
use crate::{AesKey, CryptoError, TdesKey};

/// Longest key block the 4-digit length field can express.
const MAX_KEY_BLOCK_LEN: usize = 9999;
/// Most optional blocks the 2-digit count field can express.
const MAX_OPTIONAL_BLOCKS: usize = 99;

/// Everything wrapping or unwrapping a key block can reject.
///
/// Values echoed in messages come from the (public, cleartext) header only,
/// and are shortened; no variant holds key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tr31Error {
    /// The key block has a character outside ASCII.
    #[error("key block must be ASCII, it has a non-ASCII character")]
    NotAscii,
    /// The first 16 characters are not all ASCII letters and digits.
    #[error("key block header (first 16 characters) must be ASCII letters and digits")]
    HeaderNotAlphanumeric,
    /// Fewer than 16 characters.
    #[error("key block header must be at least 16 characters, got {0}")]
    HeaderTooShort(usize),
    /// The version ID is not A, B, C or D.
    #[error("key block version ID {0:?} is not supported (A, B, C or D)")]
    UnsupportedVersion(String),
    /// A header field (named as in the batch input) is malformed.
    #[error("{field} {value:?} is invalid: must be {expected}")]
    InvalidField {
        /// The field, e.g. `key_usage`.
        field: &'static str,
        /// The value given (shortened).
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// The number of optional blocks is not two digits.
    #[error("number of optional blocks {0:?} is invalid: must be 2 digits")]
    BlockCount(String),
    /// Optional block number `index` (from 1) is malformed.
    #[error("optional block {index} ({id:?}): {reason}")]
    OptionalBlock {
        /// Position of the block, counting from 1.
        index: usize,
        /// Its ID, as far as it could be read.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An optional block to wrap is too long for the extended length.
    #[error("optional block {id:?} is too long ({len} characters, at most 65525)")]
    OptionalBlockTooLong {
        /// The block ID.
        id: String,
        /// Its data length.
        len: usize,
    },
    /// More than 99 optional blocks (counting the padding block).
    #[error("number of optional blocks ({0}, with the padding block) exceeds the limit of 99")]
    TooManyBlocks(usize),
    /// The key block would be longer than 9999 characters.
    #[error("total key block length ({0}) exceeds the limit of 9999")]
    TooLong(usize),
    /// The length field is not 4 digits.
    #[error("key block length field {0:?} is malformed: must be 4 digits")]
    LengthField(String),
    /// The length field disagrees with the string.
    #[error("key block length field says {declared} but the key block has {actual} characters")]
    LengthMismatch {
        /// The header's length field.
        declared: usize,
        /// The string's length.
        actual: usize,
    },
    /// The key block length is not a multiple of the cipher block.
    #[error("key block length ({len}) must be a multiple of {block} for version {version}")]
    LengthNotAligned {
        /// The key block length.
        len: usize,
        /// The cipher block size of the version.
        block: usize,
        /// The version.
        version: Tr31Version,
    },
    /// The MAC at the end is missing, short or not hex.
    #[error(
        "key block MAC is malformed: version {version} needs {hex_digits} hex digits at the end"
    )]
    MacMalformed {
        /// The version.
        version: Tr31Version,
        /// How many hex digits its MAC has.
        hex_digits: usize,
    },
    /// The encrypted key data is not hex.
    #[error("encrypted key data is not valid hex")]
    KeyDataHex,
    /// The encrypted key data is not whole cipher blocks.
    #[error("encrypted key data ({len} bytes) must be a non-zero multiple of {block} bytes for version {version}")]
    KeyDataLength {
        /// Its length in bytes.
        len: usize,
        /// The cipher block size.
        block: usize,
        /// The version.
        version: Tr31Version,
    },
    /// The KBPK has a length the version does not allow.
    #[error("KBPK must be {expected} bytes for key block version {version}, got {actual}")]
    KbpkLength {
        /// The version.
        version: Tr31Version,
        /// Allowed lengths, in words.
        expected: &'static str,
        /// The length given.
        actual: usize,
    },
    /// The MAC does not verify: wrong KBPK, or the block was altered.
    #[error("key block MAC does not verify (wrong KBPK, or the key block was altered)")]
    MacMismatch,
    /// The MAC verified but the key length inside is not usable. The value
    /// itself is decrypted data and is deliberately not shown.
    #[error("decrypted key length is invalid (not whole bytes, or longer than the key data)")]
    DecryptedKeyMalformed,
    /// The padding source gave up (or recorded padding had the wrong length).
    #[error("random padding: {0}")]
    Padding(String),
    /// A primitive rejected its input (cannot happen once lengths are
    /// checked; kept typed rather than panicking).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The key block version ID: how the block is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tr31Version {
    /// TDES key variant binding (deprecated; identical to C).
    A,
    /// TDES key derivation binding.
    B,
    /// TDES key variant binding, with clarified header values.
    C,
    /// AES key derivation binding.
    D,
}

impl Tr31Version {
    /// The version for its header character.
    pub fn from_ascii(c: u8) -> Option<Self> {
        match c {
            b'A' => Some(Self::A),
            b'B' => Some(Self::B),
            b'C' => Some(Self::C),
            b'D' => Some(Self::D),
            _ => None,
        }
    }

    /// The header character.
    pub fn as_ascii(self) -> u8 {
        match self {
            Self::A => b'A',
            Self::B => b'B',
            Self::C => b'C',
            Self::D => b'D',
        }
    }

    /// Cipher block size in bytes: 8 for TDES, 16 for AES.
    pub fn block_size(self) -> usize {
        match self {
            Self::A | Self::B | Self::C => 8,
            Self::D => 16,
        }
    }

    /// MAC length in bytes.
    pub fn mac_len(self) -> usize {
        match self {
            Self::A | Self::C => 4,
            Self::B => 8,
            Self::D => 16,
        }
    }
}

impl fmt::Display for Tr31Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", char::from(self.as_ascii()))
    }
}

impl std::str::FromStr for Tr31Version {
    type Err = Tr31Error;

    fn from_str(s: &str) -> Result<Self, Tr31Error> {
        match s.as_bytes() {
            [c] => Self::from_ascii(*c),
            _ => None,
        }
        .ok_or_else(|| Tr31Error::UnsupportedVersion(shown(s)))
    }
}

/// One optional header block (ID and printable ASCII data). The `PB`
/// padding block is never listed: it is added on wrap and dropped on
/// unwrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionalBlock {
    /// Two ASCII letters or digits, e.g. `KS`.
    pub id: [u8; 2],
    /// Printable ASCII (0x20..=0x7E).
    pub data: String,
}

impl OptionalBlock {
    /// The ID as text (`"??"` if it is not ASCII).
    pub fn id_str(&self) -> &str {
        ascii_str(&self.id)
    }
}

/// A TR-31 header: the fixed fields as ASCII bytes and the optional blocks.
///
/// Fields are public; [`Tr31Header::new`] and [`Tr31Header::add_block`]
/// check them, and [`Tr31Header::render`] (so [`wrap`]) checks them again.
#[derive(Clone, PartialEq, Eq)]
pub struct Tr31Header {
    /// How the block is protected.
    pub version: Tr31Version,
    /// Key usage, e.g. `P0` (PIN encryption).
    pub key_usage: [u8; 2],
    /// Algorithm of the wrapped key, e.g. `T` (TDES) or `A` (AES).
    pub algorithm: u8,
    /// Mode of use, e.g. `E` (encrypt only).
    pub mode_of_use: u8,
    /// Key version number (`00` = not used).
    pub key_version_number: [u8; 2],
    /// Exportability, e.g. `N` (not exportable).
    pub exportability: u8,
    /// Optional blocks, in order, at most one per ID.
    pub optional_blocks: Vec<OptionalBlock>,
}

impl fmt::Debug for Tr31Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tr31Header")
            .field("version", &self.version)
            .field("key_usage", &ascii_str(&self.key_usage))
            .field("algorithm", &ascii_str(&[self.algorithm]))
            .field("mode_of_use", &ascii_str(&[self.mode_of_use]))
            .field("key_version_number", &ascii_str(&self.key_version_number))
            .field("exportability", &ascii_str(&[self.exportability]))
            .field("optional_blocks", &self.optional_blocks)
            .finish()
    }
}

impl Tr31Header {
    /// A header without optional blocks, each field checked (ASCII letters
    /// and digits of the right length, as psec requires).
    pub fn new(
        version: Tr31Version,
        key_usage: &str,
        algorithm: &str,
        mode_of_use: &str,
        key_version_number: &str,
        exportability: &str,
    ) -> Result<Self, Tr31Error> {
        Ok(Self {
            version,
            key_usage: alnum_field::<2>("key_usage", key_usage)?,
            algorithm: alnum_field::<1>("algorithm", algorithm)?[0],
            mode_of_use: alnum_field::<1>("mode_of_use", mode_of_use)?[0],
            key_version_number: alnum_field::<2>("key_version_number", key_version_number)?,
            exportability: alnum_field::<1>("exportability", exportability)?[0],
            optional_blocks: Vec::new(),
        })
    }

    /// Add (or, for an ID already present, replace) an optional block.
    /// Replacing keeps psec's semantics, where blocks are a map by ID.
    pub fn add_block(&mut self, id: &str, data: &str) -> Result<(), Tr31Error> {
        let id = alnum_field::<2>("optional block ID", id)?;
        if !is_printable(data.as_bytes()) {
            return Err(Tr31Error::InvalidField {
                field: "optional block data",
                value: shown(data),
                expected: "printable ASCII",
            });
        }
        self.put_block(id, data.to_owned());
        Ok(())
    }

    fn put_block(&mut self, id: [u8; 2], data: String) {
        match self.optional_blocks.iter_mut().find(|b| b.id == id) {
            Some(b) => b.data = data,
            None => self.optional_blocks.push(OptionalBlock { id, data }),
        }
    }

    /// Check the public fields (for headers built field by field).
    pub fn validate(&self) -> Result<(), Tr31Error> {
        let fields: [(&'static str, &[u8]); 5] = [
            ("key_usage", &self.key_usage),
            ("algorithm", &[self.algorithm]),
            ("mode_of_use", &[self.mode_of_use]),
            ("key_version_number", &self.key_version_number),
            ("exportability", &[self.exportability]),
        ];
        for (field, value) in fields {
            if !value.iter().all(u8::is_ascii_alphanumeric) {
                return Err(Tr31Error::InvalidField {
                    field,
                    value: shown(&String::from_utf8_lossy(value)),
                    expected: "ASCII letters or digits",
                });
            }
        }
        for block in &self.optional_blocks {
            if !block.id.iter().all(u8::is_ascii_alphanumeric) {
                return Err(Tr31Error::InvalidField {
                    field: "optional block ID",
                    value: shown(&String::from_utf8_lossy(&block.id)),
                    expected: "2 ASCII letters or digits",
                });
            }
            if !is_printable(block.data.as_bytes()) {
                return Err(Tr31Error::InvalidField {
                    field: "optional block data",
                    value: shown(&block.data),
                    expected: "printable ASCII",
                });
            }
        }
        Ok(())
    }

    /// The key length the clear key data is padded to: `masked_key_len`
    /// if given, else the longest key of the algorithm (`T`/`D`: 24, `A`:
    /// 32, others: the key's own length); never less than the key.
    pub fn masked_key_len(&self, key_len: usize, masked_key_len: Option<usize>) -> usize {
        let wanted = masked_key_len.unwrap_or(match self.algorithm {
            b'T' | b'D' => 24,
            b'A' => 32,
            _ => key_len,
        });
        wanted.max(key_len)
    }

    /// The header as it starts a key block holding a key padded to
    /// `masked_key_len` bytes: the length field counts the whole block, and
    /// a `PB` block is appended when the optional blocks need aligning.
    pub fn render(&self, masked_key_len: usize) -> Result<String, Tr31Error> {
        self.validate()?;
        let block = self.version.block_size();
        let (count, blocks) = self.render_blocks()?;
        // Always 1..=block bytes of padding after `length ‖ key` (a full
        // block when already aligned), as psec counts it.
        let pad_len = block - (2 + masked_key_len % block) % block;
        // Saturating: an absurd masked length must end in `TooLong`, not
        // an overflow.
        let total = (16 + 4 + blocks.len() + 2 * pad_len + 2 * self.version.mac_len())
            .saturating_add(masked_key_len.saturating_mul(2));
        if total > MAX_KEY_BLOCK_LEN {
            return Err(Tr31Error::TooLong(total));
        }
        let mut out = String::with_capacity(16 + blocks.len());
        out.push(char::from(self.version.as_ascii()));
        out.push_str(&format!("{total:04}"));
        out.push_str(ascii_str(&self.key_usage));
        out.push(char::from(self.algorithm));
        out.push(char::from(self.mode_of_use));
        out.push_str(ascii_str(&self.key_version_number));
        out.push(char::from(self.exportability));
        out.push_str(&format!("{count:02}00"));
        out.push_str(&blocks);
        Ok(out)
    }

    /// The optional blocks as text, with a `PB` block if needed, and their
    /// count.
    fn render_blocks(&self) -> Result<(usize, String), Tr31Error> {
        let mut out = String::new();
        for b in &self.optional_blocks {
            out.push_str(b.id_str());
            if b.data.len() + 4 <= 0xFF {
                // Short form: one hex byte counting ID, length and data.
                out.push_str(&format!("{:02X}", b.data.len() + 4));
            } else {
                // Extended form: `00`, length-of-length `02`, then a 2-byte
                // length counting ID, `00`, `02`, the 4 length digits and data.
                let len = b.data.len() + 10;
                if len > 0xFFFF {
                    return Err(Tr31Error::OptionalBlockTooLong {
                        id: b.id_str().to_owned(),
                        len: b.data.len(),
                    });
                }
                out.push_str(&format!("0002{len:04X}"));
            }
            out.push_str(&b.data);
        }
        let block = self.version.block_size();
        let mut count = self.optional_blocks.len();
        if !out.len().is_multiple_of(block) {
            // psec's formula: a PB block whose total length (4 + zeros)
            // brings the blocks to a multiple of the cipher block. When
            // `out.len() + 4` is aligned it adds a full block of zeros.
            let zeros = block - (out.len() + 4) % block;
            out.push_str(&format!("PB{:02X}{}", 4 + zeros, "0".repeat(zeros)));
            count += 1;
        }
        if count > MAX_OPTIONAL_BLOCKS {
            return Err(Tr31Error::TooManyBlocks(count));
        }
        Ok((count, out))
    }

    /// Parse the header at the start of `s` (a header or a whole key
    /// block). Returns the header and its length in characters (16 plus
    /// the optional blocks). The length field is not checked here, since a
    /// header alone does not know the block it heads; [`unwrap`] checks it.
    pub fn parse(s: &str) -> Result<(Self, usize), Tr31Error> {
        let b = s.as_bytes();
        if !b[..b.len().min(16)].iter().all(u8::is_ascii_alphanumeric) {
            return Err(Tr31Error::HeaderNotAlphanumeric);
        }
        if b.len() < 16 {
            return Err(Tr31Error::HeaderTooShort(b.len()));
        }
        // The first 16 bytes are ASCII, so byte indices are char indices.
        let version = Tr31Version::from_ascii(b[0])
            .ok_or_else(|| Tr31Error::UnsupportedVersion(s[..1].to_owned()))?;
        let count =
            digits(&b[12..14]).ok_or_else(|| Tr31Error::BlockCount(s[12..14].to_owned()))?;
        let mut header = Self {
            version,
            key_usage: [b[5], b[6]],
            algorithm: b[7],
            mode_of_use: b[8],
            key_version_number: [b[9], b[10]],
            exportability: b[11],
            optional_blocks: Vec::new(),
        };
        let blocks_len = header.parse_blocks(count, &b[16..])?;
        Ok((header, 16 + blocks_len))
    }

    /// Read `count` optional blocks from the start of `b`; returns how many
    /// bytes they take. Every byte consumed is checked to be ASCII, so the
    /// returned length is a char boundary of the caller's `&str`.
    fn parse_blocks(&mut self, count: usize, b: &[u8]) -> Result<usize, Tr31Error> {
        let mut i = 0;
        for index in 1..=count {
            let err = |id: &[u8], reason| Tr31Error::OptionalBlock {
                index,
                id: shown(&String::from_utf8_lossy(id)),
                reason,
            };
            let id = b
                .get(i..i + 2)
                .ok_or_else(|| err(&b[i..], "block ID is truncated"))?;
            let id = [id[0], id[1]];
            i += 2;
            let len = b
                .get(i..i + 2)
                .and_then(hex_value)
                .ok_or_else(|| err(&id, "length is not 2 hex digits"))?;
            i += 2;
            let data_len = if len == 0 {
                // Extended length: length-of-length (2 hex digits, in bytes),
                // then the length itself, counting the whole block.
                let len_len = b
                    .get(i..i + 2)
                    .and_then(hex_value)
                    .ok_or_else(|| err(&id, "extended length-of-length is not 2 hex digits"))?;
                i += 2;
                if len_len == 0 {
                    return Err(err(&id, "extended length-of-length must not be 0"));
                }
                let digits_len = 2 * len_len as usize;
                let len = b
                    .get(i..i + digits_len)
                    .ok_or_else(|| err(&id, "extended length is truncated"))?;
                // `None` for non-hex digits and for lengths beyond u64, which
                // no 9999-character block could hold anyway.
                let len = hex_value(len)
                    .ok_or_else(|| err(&id, "extended length is malformed or too large"))?;
                i += digits_len;
                len.checked_sub(6 + digits_len as u64)
                    .ok_or_else(|| err(&id, "length does not cover the block ID and length"))?
            } else {
                len.checked_sub(4)
                    .ok_or_else(|| err(&id, "length does not cover the block ID and length"))?
            };
            let data = usize::try_from(data_len)
                .ok()
                .and_then(|n| b.get(i..i.checked_add(n)?))
                .ok_or_else(|| err(&id, "block data is truncated"))?;
            i += data.len();
            if id.eq_ignore_ascii_case(b"PB") {
                // Padding carries no information; psec drops it (without
                // checking its content), and so do we, but only ASCII, so
                // that the header stays a valid prefix of the string.
                if !data.is_ascii() {
                    return Err(err(&id, "padding block data is not ASCII"));
                }
                continue;
            }
            if !id.iter().all(u8::is_ascii_alphanumeric) {
                return Err(err(&id, "block ID must be 2 ASCII letters or digits"));
            }
            if !is_printable(data) {
                return Err(err(&id, "block data must be printable ASCII"));
            }
            // Checked printable above, so this is valid UTF-8.
            let data = String::from_utf8_lossy(data).into_owned();
            self.put_block(id, data);
        }
        Ok(i)
    }
}

/// Wrap `key` under `kbpk` into a TR-31 key block with `header`.
///
/// `masked_key_len` is the key length (bytes) to pad to, hiding the true
/// length; `None` uses the algorithm's longest key (see
/// [`Tr31Header::masked_key_len`]). `random` fills the padding after
/// `length ‖ key`: one call, with the cipher-block padding and the masking
/// padding together. Use [`wrap_random`] for OS randomness; tests pass
/// recorded bytes.
pub fn wrap(
    kbpk: &[u8],
    header: &Tr31Header,
    key: &[u8],
    masked_key_len: Option<usize>,
    random: &mut impl FnMut(&mut [u8]) -> Result<(), Tr31Error>,
) -> Result<String, Tr31Error> {
    let version = header.version;
    let masked = header.masked_key_len(key.len(), masked_key_len);
    // Rendering first checks the header and the 9999 limit, which also
    // bounds the padding asked of `random` below.
    let head = header.render(masked)?;
    let keys = BlockKeys::derive(version, kbpk)?;

    let block = version.block_size();
    let pad_len = block - (2 + masked) % block + (masked - key.len());
    // Cannot fail: `render` kept the block under 9999 characters.
    let bits = u16::try_from(key.len() * 8).map_err(|_| Tr31Error::TooLong(2 * key.len()))?;
    let mut clear = Zeroizing::new(Vec::with_capacity(2 + key.len() + pad_len));
    clear.extend_from_slice(&bits.to_be_bytes());
    clear.extend_from_slice(key);
    clear.resize(2 + key.len() + pad_len, 0);
    random(&mut clear[2 + key.len()..])?;

    let (cipher, mac) = match &keys {
        BlockKeys::Variant { kbek, kbak } => {
            let cipher = kbek.encrypt_cbc(header_iv(&head), &clear)?;
            let mac = variant_mac(kbak, head.as_bytes(), &cipher);
            (cipher, mac.to_vec())
        }
        BlockKeys::Tdes { kbek, kbak } => {
            let mac = tdes_cmac(kbak, &mac_input(&head, &clear))?;
            (kbek.encrypt_cbc(mac, &clear)?, mac.to_vec())
        }
        BlockKeys::Aes { kbek, kbak } => {
            let mac = aes_cmac(kbak, &mac_input(&head, &clear));
            (kbek.encrypt_cbc(mac, &clear)?, mac.to_vec())
        }
    };
    Ok(format!(
        "{head}{}{}",
        hex::encode_upper(cipher),
        hex::encode_upper(mac)
    ))
}

/// [`wrap`] with padding from the operating system's random source.
pub fn wrap_random(
    kbpk: &[u8],
    header: &Tr31Header,
    key: &[u8],
    masked_key_len: Option<usize>,
) -> Result<String, Tr31Error> {
    wrap(
        kbpk,
        header,
        key,
        masked_key_len,
        &mut |buf: &mut [u8]| {
            getrandom::fill(buf)
                .map_err(|e| Tr31Error::Padding(format!("OS random source failed: {e}")))
        },
    )
}

/// Unwrap a TR-31 key block: check its format and MAC under `kbpk` and
/// return the header and the key. Never panics; every malformed input is a
/// [`Tr31Error`].
pub fn unwrap(kbpk: &[u8], key_block: &str) -> Result<(Tr31Header, Zeroizing<Vec<u8>>), Tr31Error> {
    // psec can never accept a non-ASCII block (header characters must be
    // letters/digits, block data printable, the rest hex); rejecting it up
    // front lets everything below index bytes as characters.
    if !key_block.is_ascii() {
        return Err(Tr31Error::NotAscii);
    }
    let (header, header_len) = Tr31Header::parse(key_block)?;
    let kb = key_block.as_bytes();
    let version = header.version;

    // `parse` guarantees at least 16 characters.
    let declared =
        digits(&kb[1..5]).ok_or_else(|| Tr31Error::LengthField(key_block[1..5].to_owned()))?;
    if declared != kb.len() {
        return Err(Tr31Error::LengthMismatch {
            declared,
            actual: kb.len(),
        });
    }
    let block = version.block_size();
    if !kb.len().is_multiple_of(block) {
        return Err(Tr31Error::LengthNotAligned {
            len: kb.len(),
            block,
            version,
        });
    }

    let body = &kb[header_len..];
    let mac_hex = 2 * version.mac_len();
    let mac_err = Tr31Error::MacMalformed {
        version,
        hex_digits: mac_hex,
    };
    let split = body
        .len()
        .checked_sub(mac_hex)
        .ok_or_else(|| mac_err.clone())?;
    let received_mac = hex::decode(&body[split..]).map_err(|_| mac_err)?;
    let data = hex::decode(&body[..split]).map_err(|_| Tr31Error::KeyDataHex)?;

    let keys = BlockKeys::derive(version, kbpk)?;
    if data.len() < block || data.len() % block != 0 {
        return Err(Tr31Error::KeyDataLength {
            len: data.len(),
            block,
            version,
        });
    }
    let head = &key_block[..header_len];

    let clear = match &keys {
        BlockKeys::Variant { kbek, kbak } => {
            // Variant binding MACs the ciphertext: verify before decrypting.
            let mac = variant_mac(kbak, head.as_bytes(), &data);
            if !ct_eq(&mac, &received_mac) {
                return Err(Tr31Error::MacMismatch);
            }
            Zeroizing::new(kbek.decrypt_cbc(header_iv(head), &data)?)
        }
        BlockKeys::Tdes { kbek, kbak } => {
            // Derivation binding MACs the clear data, which is also the IV.
            let iv: [u8; 8] = received_mac
                .as_slice()
                .try_into()
                .map_err(|_| Tr31Error::MacMismatch)?;
            let clear = Zeroizing::new(kbek.decrypt_cbc(iv, &data)?);
            let mac = tdes_cmac(kbak, &mac_input(head, &clear))?;
            if !ct_eq(&mac, &received_mac) {
                return Err(Tr31Error::MacMismatch);
            }
            clear
        }
        BlockKeys::Aes { kbek, kbak } => {
            let iv: [u8; 16] = received_mac
                .as_slice()
                .try_into()
                .map_err(|_| Tr31Error::MacMismatch)?;
            let clear = Zeroizing::new(kbek.decrypt_cbc(iv, &data)?);
            let mac = aes_cmac(kbak, &mac_input(head, &clear));
            if !ct_eq(&mac, &received_mac) {
                return Err(Tr31Error::MacMismatch);
            }
            clear
        }
    };

    // `clear` is at least one cipher block, so it has the 2 length bytes.
    let bits = usize::from(u16::from_be_bytes([clear[0], clear[1]]));
    if bits % 8 != 0 {
        return Err(Tr31Error::DecryptedKeyMalformed);
    }
    let key = clear
        .get(2..2 + bits / 8)
        .ok_or(Tr31Error::DecryptedKeyMalformed)?;
    Ok((header, Zeroizing::new(key.to_vec())))
}

/// The key block encryption and authentication keys of one version.
enum BlockKeys {
    /// A/C: TDES variants of the KBPK.
    Variant { kbek: TdesKey, kbak: TdesKey },
    /// B: TDES keys derived with TDES-CMAC.
    Tdes { kbek: TdesKey, kbak: TdesKey },
    /// D: AES keys derived with AES-CMAC. Boxed: an AES key schedule is
    /// far larger than a DES one, and this enum is built once per block.
    Aes {
        kbek: Box<AesKey>,
        kbak: Box<AesKey>,
    },
}

impl BlockKeys {
    /// Check the KBPK length for `version` and derive KBEK and KBAK.
    fn derive(version: Tr31Version, kbpk: &[u8]) -> Result<Self, Tr31Error> {
        let length_err = |expected| Tr31Error::KbpkLength {
            version,
            expected,
            actual: kbpk.len(),
        };
        match version {
            Tr31Version::A | Tr31Version::C => {
                if !matches!(kbpk.len(), 8 | 16 | 24) {
                    return Err(length_err("8, 16 or 24 (DES or TDES)"));
                }
                let variant = |byte: u8| -> Result<TdesKey, Tr31Error> {
                    let mut k = Zeroizing::new(kbpk.to_vec());
                    xor_in_place(&mut k, &[byte; 24]);
                    Ok(TdesKey::new(&k)?)
                };
                // 'E' (0x45) for encryption, 'M' (0x4D) for MAC.
                Ok(Self::Variant {
                    kbek: variant(0x45)?,
                    kbak: variant(0x4D)?,
                })
            }
            Tr31Version::B => {
                if !matches!(kbpk.len(), 16 | 24) {
                    return Err(length_err("16 or 24 (double or triple length TDES)"));
                }
                let kbpk = TdesKey::new(kbpk)?;
                // Algorithm indicator 0000/0001 for 2-/3-key TDES, length in
                // bits; each CMAC gives 8 bytes, so 2 or 3 counter blocks.
                let (alg, bits, rounds) = if kbpk.len() == 16 {
                    (0u8, 0x0080u16, 2)
                } else {
                    (1, 0x00C0, 3)
                };
                let derive = |usage: u8| -> Result<TdesKey, Tr31Error> {
                    let mut k = Zeroizing::new(Vec::with_capacity(24));
                    for counter in 1..=rounds {
                        let input = kdf_input(counter, usage, alg, bits);
                        k.extend_from_slice(&Zeroizing::new(tdes_cmac(&kbpk, &input)?)[..]);
                    }
                    Ok(TdesKey::new(&k)?)
                };
                Ok(Self::Tdes {
                    kbek: derive(0)?,
                    kbak: derive(1)?,
                })
            }
            Tr31Version::D => {
                if !matches!(kbpk.len(), 16 | 24 | 32) {
                    return Err(length_err("16, 24 or 32 (AES)"));
                }
                let len = kbpk.len();
                let kbpk = AesKey::new(kbpk)?;
                // Algorithm indicator 0002/0003/0004 for AES-128/192/256;
                // each CMAC gives 16 bytes, truncated to the KBPK length.
                let (alg, bits, rounds) = match len {
                    16 => (2u8, 0x0080u16, 1),
                    24 => (3, 0x00C0, 2),
                    _ => (4, 0x0100, 2),
                };
                let derive = |usage: u8| -> Result<Box<AesKey>, Tr31Error> {
                    let mut k = Zeroizing::new(Vec::with_capacity(32));
                    for counter in 1..=rounds {
                        let input = kdf_input(counter, usage, alg, bits);
                        k.extend_from_slice(&Zeroizing::new(aes_cmac(&kbpk, &input))[..]);
                    }
                    k.truncate(len);
                    Ok(Box::new(AesKey::new(&k)?))
                };
                Ok(Self::Aes {
                    kbek: derive(0)?,
                    kbak: derive(1)?,
                })
            }
        }
    }
}

/// Key derivation input of versions B and D: counter ‖ key usage (0000
/// encryption, 0001 MAC) ‖ 00 ‖ algorithm ‖ length in bits.
fn kdf_input(counter: u8, usage: u8, alg: u8, bits: u16) -> [u8; 8] {
    let [hi, lo] = bits.to_be_bytes();
    [counter, 0, usage, 0, 0, alg, hi, lo]
}

/// Versions A/C: 4 leftmost bytes of the TDES CBC-MAC (ISO 9797-1 alg. 1,
/// padding 1) over header ‖ ciphertext.
fn variant_mac(kbak: &TdesKey, head: &[u8], cipher: &[u8]) -> [u8; 4] {
    let mut data = Vec::with_capacity(head.len() + cipher.len());
    data.extend_from_slice(head);
    data.extend_from_slice(cipher);
    let full = cbc_mac_tdes(kbak, &data, Padding::Method1);
    [full[0], full[1], full[2], full[3]]
}

/// Versions A/C: the IV is the first 8 characters of the header.
fn header_iv(head: &str) -> [u8; 8] {
    let mut iv = [0u8; 8];
    // Headers are at least 16 ASCII characters (rendered or parsed).
    iv.copy_from_slice(&head.as_bytes()[..8]);
    iv
}

/// Versions B/D: header ‖ clear key data (zeroized after the MAC).
fn mac_input(head: &str, clear: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut data = Zeroizing::new(Vec::with_capacity(head.len() + clear.len()));
    data.extend_from_slice(head.as_bytes());
    data.extend_from_slice(clear);
    data
}

/// An `N`-character field of ASCII letters and digits.
fn alnum_field<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], Tr31Error> {
    let expected = if N == 1 {
        "1 ASCII letter or digit"
    } else {
        "2 ASCII letters or digits"
    };
    s.as_bytes()
        .try_into()
        .ok()
        .filter(|b: &[u8; N]| b.iter().all(u8::is_ascii_alphanumeric))
        .ok_or_else(|| Tr31Error::InvalidField {
            field,
            value: shown(s),
            expected,
        })
}

/// Printable ASCII, 0x20..=0x7E (an empty string counts, as in psec).
fn is_printable(b: &[u8]) -> bool {
    b.iter().all(|c| (0x20..=0x7E).contains(c))
}

/// The value of decimal digits, `None` if any is not a digit. Only called
/// on 2 or 4 characters, so it cannot overflow.
fn digits(b: &[u8]) -> Option<usize> {
    b.iter().try_fold(0usize, |acc, c| {
        c.is_ascii_digit().then(|| acc * 10 + usize::from(c - b'0'))
    })
}

/// The value of hex digits (either case), `None` if any is not hex, the
/// string is empty, or the value exceeds `u64`.
fn hex_value(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    b.iter().try_fold(0u64, |acc, c| {
        let d = char::from(*c).to_digit(16)?;
        acc.checked_mul(16)?.checked_add(u64::from(d))
    })
}

/// ASCII bytes as `&str`; `"??"` when they are not ASCII (only possible
/// for fields set directly and not validated yet).
fn ascii_str(b: &[u8]) -> &str {
    if b.is_ascii() {
        std::str::from_utf8(b).unwrap_or("??")
    } else {
        "??"
    }
}

/// A header value for an error message: at most 16 characters.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(16).collect();
    if s.chars().count() > 16 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    fn header(version: Tr31Version) -> Tr31Header {
        Tr31Header::new(version, "P0", "T", "E", "00", "N").expect("valid header")
    }

    /// A padding source replaying fixed bytes (length must match).
    fn recorded(bytes: Vec<u8>) -> impl FnMut(&mut [u8]) -> Result<(), Tr31Error> {
        move |buf: &mut [u8]| {
            if buf.len() != bytes.len() {
                return Err(Tr31Error::Padding(format!("need {} bytes", buf.len())));
            }
            buf.copy_from_slice(&bytes);
            Ok(())
        }
    }

    /// psec docstring example (version B, 16-byte key).
    #[test]
    fn psec_docstring_b() {
        let (hd, key) = unwrap(
            &[0xAB; 16],
            "B0096P0TE00N0000471D4FBE35E5865BDE20DBF4C15503161F55D681170BF8DD14D01B6822EF8550CB67C569DE8AC048",
        )
        .expect("unwraps");
        assert_eq!(&key[..], &[0xCD; 16]);
        assert_eq!(hd, header(Tr31Version::B));
    }

    /// psec docstring example with an optional block and a PB block; the
    /// header renders back to the same text.
    #[test]
    fn optional_block_and_padding_block() {
        let kb = "B0120P0TE00N0200TT0EHelloWorldPB0A0000008FE0CA0F00BAA9A1E3695A6C051FAB695FCE07E289BC0151D096909BB87670F63238670402E90A37";
        let (hd, key) = unwrap(b"FFFFFFFFEEEEEEEE", kb).expect("unwraps");
        assert_eq!(&key[..], b"CCCCCCCCDDDDDDDD");
        assert_eq!(hd.optional_blocks.len(), 1);
        assert_eq!(hd.optional_blocks[0].id_str(), "TT");
        assert_eq!(hd.optional_blocks[0].data, "HelloWorld");
        assert_eq!(hd.render(24).expect("renders"), kb[..40]);
    }

    /// Extended lengths (data over 251 characters) render and parse back.
    #[test]
    fn extended_length_block() {
        let mut hd = header(Tr31Version::D);
        let data = "X".repeat(300);
        hd.add_block("KS", &data).expect("valid block");
        let s = hd.render(16).expect("renders");
        assert!(s[16..].starts_with("KS00020136"), "{}", &s[16..30]);
        let (back, len) = Tr31Header::parse(&s).expect("parses");
        assert_eq!(len, s.len());
        assert_eq!(back, hd);
        assert_eq!(len % 16, 0);
    }

    #[test]
    fn wrap_matches_recorded_psec_vector() {
        // Vector rnd-2 of tests/vectors/tr31.jsonl (version C).
        let hd = Tr31Header::new(Tr31Version::C, "B0", "T", "X", "21", "N").expect("valid");
        let kb = wrap(
            &h("3708F4D6B53280CED6493BABF108C71C"),
            &hd,
            &h("B692EFA14AA1C201"),
            Some(8),
            &mut recorded(h("B8D99832A9D7")),
        )
        .expect("wraps");
        assert_eq!(
            kb,
            "C0056B0TX21N0000BF41CEF28116AD1104B493B1976D44D96AACEE9F"
        );
    }

    #[test]
    fn kbpk_length_is_checked_per_version() {
        let key = [0x11; 16];
        for (version, bad) in [
            (Tr31Version::A, 32),
            (Tr31Version::B, 8),
            (Tr31Version::D, 8),
        ] {
            let err =
                wrap_random(&vec![1; bad], &header(version), &key, None).expect_err("bad KBPK");
            assert!(matches!(err, Tr31Error::KbpkLength { .. }), "{err}");
        }
    }

    #[test]
    fn header_fields_are_validated() {
        assert!(Tr31Header::new(Tr31Version::B, "P", "T", "E", "00", "N").is_err());
        assert!(Tr31Header::new(Tr31Version::B, "P0", "*", "E", "00", "N").is_err());
        let mut hd = header(Tr31Version::B);
        assert!(hd.add_block("K", "x").is_err());
        assert!(hd.add_block("KS", "tab\there").is_err());
        hd.key_usage = [b'P', 0xFF];
        assert!(hd.render(16).is_err());
        assert!(format!("{hd:?}").contains("??"));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let kbpk = [0xAB; 16];
        let good = "B0096P0TE00N0000471D4FBE35E5865BDE20DBF4C15503161F55D681170BF8DD14D01B6822EF8550CB67C569DE8AC048";
        // Every truncation, including the empty string and mid-header.
        for n in 0..good.len() {
            assert!(unwrap(&kbpk, &good[..n]).is_err(), "prefix {n}");
        }
        let cases = [
            "B0096P0TE00N0000é71D4FBE35E5865BDE20DBF4C15503161F55D681170BF8DD14D01B6822EF8550CB67C569DE8AC04",
            "ééééééééééééééééé",
            "B0096P0TE00N00",
            "E0096P0TE00N0000471D4FBE35E5865BDE20DBF4C15503161F55D681170BF8DD14D01B6822EF8550CB67C569DE8AC048",
            "B0096P0TE00N0100KS",
            "B0096P0TE00N0100KS00",
            "B0096P0TE00N0100KS0000",
            "B0096P0TE00N0100KS00FF",
            "B0096P0TE00N0100KS0002FFFF",
            "B0096P0TE00N0100KS0003",
            "B0096P0TE00N0100KS01",
            "B0096P0TE00N0100KSZZ",
            "B0024P0TE00N0000XYZXYZXY",
            "B0099P0TE00N0000",
        ];
        for kb in cases {
            assert!(unwrap(&kbpk, kb).is_err(), "{kb}");
        }
        // A huge extended length-of-length is an error, not an overflow.
        let huge = format!("B0096P0TE00N0100KS00FF{}", "F".repeat(600));
        assert!(unwrap(&kbpk, &huge).is_err());
    }

    #[test]
    fn errors_do_not_show_key_data() {
        let kbpk = [0xAB; 16];
        let good = "B0096P0TE00N0000471D4FBE35E5865BDE20DBF4C15503161F55D681170BF8DD14D01B6822EF8550CB67C569DE8AC048";
        let tampered = good.replace("471D4F", "471D4E");
        let err = unwrap(&kbpk, &tampered).expect_err("MAC fails");
        assert_eq!(err, Tr31Error::MacMismatch);
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains("471D") && !msg.contains("CD"), "{msg}");
    }

    fn version_strategy() -> impl Strategy<Value = (Tr31Version, usize)> {
        prop_oneof![
            prop::sample::select(vec![8usize, 16, 24]).prop_map(|n| (Tr31Version::A, n)),
            prop::sample::select(vec![16usize, 24]).prop_map(|n| (Tr31Version::B, n)),
            prop::sample::select(vec![8usize, 16, 24]).prop_map(|n| (Tr31Version::C, n)),
            prop::sample::select(vec![16usize, 24, 32]).prop_map(|n| (Tr31Version::D, n)),
        ]
    }

    /// A wrapped key block for random inputs: KBPK, key, header, block.
    fn wrapped() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Tr31Header, String)> {
        (
            version_strategy(),
            prop::collection::vec(any::<u8>(), 32),
            prop::collection::vec(any::<u8>(), 0..=40),
            prop::option::of(0usize..48),
            prop::collection::vec(any::<u8>(), 1..64),
            prop::collection::vec(("[A-Z0-9]{2}", "[ -~]{0,30}"), 0..3),
        )
            .prop_map(|((version, kbpk_len), kbpk, key, masked, pad, blocks)| {
                let kbpk = kbpk[..kbpk_len].to_vec();
                let mut hd = header(version);
                for (id, data) in blocks.iter().filter(|(id, _)| id != "PB") {
                    hd.add_block(id, data).expect("valid block");
                }
                let mut pad = pad.into_iter().cycle();
                let kb = wrap(&kbpk, &hd, &key, masked, &mut |buf: &mut [u8]| {
                    buf.iter_mut().for_each(|b| *b = pad.next().unwrap_or(0));
                    Ok(())
                })
                .expect("wraps");
                (kbpk, key, hd, kb)
            })
    }

    proptest! {
        #[test]
        fn wrap_then_unwrap_round_trips((kbpk, key, hd, kb) in wrapped()) {
            let (back_hd, back) = unwrap(&kbpk, &kb).expect("unwraps");
            prop_assert_eq!(&back[..], &key[..]);
            prop_assert_eq!(&back_hd, &hd);
            prop_assert_eq!(kb.len() % hd.version.block_size(), 0);
        }

        #[test]
        fn flipped_bit_fails_the_mac((kbpk, _key, _hd, kb) in wrapped(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (_, header_len) = Tr31Header::parse(&kb).expect("parses");
            let mut bytes = h(&kb[header_len..]);
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let tampered = format!("{}{}", &kb[..header_len], hex::encode_upper(&bytes));
            prop_assert_eq!(unwrap(&kbpk, &tampered).map(|_| ()), Err(Tr31Error::MacMismatch));
        }

        #[test]
        fn changed_header_fails_the_mac((kbpk, _key, _hd, kb) in wrapped()) {
            // Key usage P0 -> P1: still a valid header, but not the one MACed.
            let tampered = format!("{}P1{}", &kb[..5], &kb[7..]);
            prop_assert_eq!(unwrap(&kbpk, &tampered).map(|_| ()), Err(Tr31Error::MacMismatch));
        }

        #[test]
        fn unwrap_never_panics(s in "\\PC{0,200}", kbpk in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = unwrap(&kbpk, &s);
        }

        #[test]
        fn unwrap_never_panics_on_near_valid_input(
            (kbpk, _key, _hd, kb) in wrapped(),
            pos in any::<prop::sample::Index>(),
            c in prop::sample::select(b"0123456789ABCDEFPBKSxz \x7F".to_vec()),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = kb.into_bytes();
            let i = pos.index(bytes.len());
            bytes[i] = c;
            bytes.truncate(cut.index(bytes.len() + 1));
            let s = String::from_utf8(bytes).expect("ASCII");
            let _ = unwrap(&kbpk, &s);
        }
    }
}
