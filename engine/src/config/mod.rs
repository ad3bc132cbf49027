//! `config/tessera.toml`: vault settings, token and issuer ranges, and the
//! card profiles (which cryptogram scheme and which key labels apply).
//!
//! Everything is checked on load, against the key file too, so that a
//! typo is a start-up error and not a declined transaction at 3 a.m.

use std::collections::BTreeMap;
use std::path::Path;

use hsm_sim::emv::CvnProfile;
use hsm_sim::keyfile::KeyStore;
use serde::Deserialize;

mod api;
mod keys;
mod listener;
mod values;
pub use api::{ApiConfig, IdvPolicy, IssuerPolicy, Operator, Requestor};
pub use keys::{KeyMode, KeysConfig};
pub use listener::{AcquirerAllow, ListenerConfig, ListenerTlsConfig};
use values::invalid;
pub use values::{ConfigError, Range};

/// How durable an acknowledgement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge only once on disk (fdatasync). The default.
    #[default]
    Sync,
    /// Acknowledge at once and flush in the background: a crash can lose
    /// the last few milliseconds of acknowledged changes. Only for those
    /// who accept that risk.
    Async,
}

/// `[vault]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Token BIN ranges tokens are drawn from.
    pub token_ranges: Vec<Range>,
    /// Issuer (PAN) ranges; must not overlap the token ranges.
    pub issuer_ranges: Vec<Range>,
    /// `sync` (default) or `async`.
    #[serde(default)]
    pub durability: DurabilityMode,
    /// Take a snapshot (and truncate the journal) after this many journal
    /// records. 0 = only on demand.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every_records: u64,
    /// Key label of the AES key that encrypts PANs at rest.
    pub data_key: String,
    /// Key label of the AES key of the PAN keyed hash (reverse index, PAR).
    pub index_key: String,
    /// The 4-character BIN Controller Identifier that starts every PAR.
    pub par_bci: String,
    /// Failed authentications in a row (wrong cryptogram or code, expiry
    /// mismatch, ATC replay) after which a token is locked: 1 to 255.
    #[serde(default = "default_max_auth_failures")]
    pub max_auth_failures: u8,
    /// When the journal fails (a write or fdatasync error): drain and exit
    /// non-zero so a supervisor restarts the process (default), or keep
    /// answering (every approval then becomes 96).
    #[serde(default = "default_true")]
    pub exit_on_journal_failure: bool,
    /// The replicated database the vault's state is shared through
    /// (`postgres://USER@HOST:PORT/DB`, several hosts with
    /// `target_session_attrs=read-write`; docs/scale-out.md). Unset: the
    /// embedded vault alone. `tessera serve --backend` overrides it. Keep
    /// passwords out of it (trust or certificate authentication, or
    /// TESSERA_DB_URL).
    #[serde(default)]
    pub backend: Option<String>,
    /// With a backend: this node's name in the shard leases [default:
    /// `tessera-<host name>`].
    #[serde(default)]
    pub node: Option<String>,
    /// With a backend: the virtual shards this node serves, `all` or
    /// ranges (`0-2047,4000`) [default: all].
    #[serde(default)]
    pub shards: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_snapshot_every() -> u64 {
    1_000_000
}

/// Six, as card networks' issuers count wrong cryptograms and codes.
fn default_max_auth_failures() -> u8 {
    6
}

/// A card profile as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    cvn: String,
    imk_ac: Option<String>,
    imk_smi: Option<String>,
    imk_smc: Option<String>,
    imk_cvc3: Option<String>,
    imk_dcvv: Option<String>,
    track2_dd: Option<String>,
    service_code: Option<String>,
}

/// Which cryptogram a profile's cards produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// EMV chip (field 55): an ARQC of this CVN.
    Emv(CvnProfile),
    /// Contactless mag-stripe, Mastercard CVC3 (track 2).
    Cvc3,
    /// Contactless mag-stripe, Visa dCVV (track 2).
    Dcvv,
}

/// A checked card profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Its name (a key of `[profiles]`).
    pub name: String,
    /// The scheme.
    pub scheme: Scheme,
    /// Key labels, by purpose (`imk_ac`, `imk_smi`, ...), all present in
    /// the key file.
    pub keys: BTreeMap<&'static str, String>,
    /// Track 2 discretionary-data template for mag-stripe profiles: `C`
    /// CVC3/dCVV digit, `U` unpredictable-number digit, `A` ATC digit,
    /// literal digits otherwise.
    pub track2_dd: Option<String>,
    /// Service code on track 2 (mag-stripe profiles), default 201.
    pub service_code: String,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[vault]`.
    pub vault: VaultConfig,
    /// `[listener]`.
    pub listener: ListenerConfig,
    /// `[keys]`: where the keys came from, and in which mode.
    pub keys: KeysConfig,
    /// SHA-256 of the configuration file's text, for the audit trail's
    /// record of each start (a changed configuration shows as a new digest).
    pub digest: String,
    /// Profiles, sorted by name.
    pub profiles: Vec<Profile>,
    /// `[api]` (empty when absent: no requestors, no operators).
    pub api: ApiConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    keys: keys::KeysFile,
    vault: VaultConfig,
    #[serde(default)]
    listener: ListenerConfig,
    profiles: BTreeMap<String, ProfileFile>,
    api: Option<api::ApiFile>,
}

impl Config {
    /// Load and check a config file; returns it with the loaded key store.
    pub fn load(path: &Path) -> Result<(Config, KeyStore), ConfigError> {
        Self::load_with_lmk(path, None)
    }

    /// [`Config::load`] with an LMK the command line assembled (custodians'
    /// components, a file descriptor); without one, production mode takes
    /// `$TESSERA_LMK`.
    pub fn load_with_lmk(
        path: &Path,
        lmk: Option<&hsm_sim::lmk::Lmk>,
    ) -> Result<(Config, KeyStore), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_with_lmk(&text, &path.display().to_string(), base, lmk)
    }

    /// Parse and check config text. `base` resolves a relative key file.
    pub fn from_toml(
        text: &str,
        name: &str,
        base: &Path,
    ) -> Result<(Config, KeyStore), ConfigError> {
        Self::from_toml_with_lmk(text, name, base, None)
    }

    fn from_toml_with_lmk(
        text: &str,
        name: &str,
        base: &Path,
        lmk: Option<&hsm_sim::lmk::Lmk>,
    ) -> Result<(Config, KeyStore), ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_owned(),
            message: e.message().to_owned(),
        })?;
        let (keys_config, keys) = keys::load(&file.keys, base, lmk)?;
        check_ranges(&file.vault)?;
        // Every version of both vault keys must be an AES key of its usage
        // (the data key rotates; the vault refuses a second index key).
        for (label, usage) in [(&file.vault.data_key, "D0"), (&file.vault.index_key, "M6")] {
            match keys.all_versions_as(label, usage) {
                Ok(versions) => {
                    for (version, key) in versions {
                        if !matches!(key, hsm_sim::keyfile::StoredKey::Aes(_)) {
                            return Err(invalid(format!(
                                "vault key \"{label}\" version {version} must be an AES key"
                            )));
                        }
                    }
                }
                Err(e) => return Err(invalid(format!("vault: {e}"))),
            }
        }
        if file.vault.par_bci.len() != 4
            || !file
                .vault
                .par_bci
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid("vault.par_bci must be 4 letters or digits"));
        }
        if file.vault.max_auth_failures == 0 {
            return Err(invalid(
                "vault.max_auth_failures must be 1 to 255 (failed authentications before a token is locked)",
            ));
        }
        if file.profiles.len() > 255 {
            return Err(invalid("at most 255 profiles"));
        }
        let profiles = file
            .profiles
            .into_iter()
            .map(|(name, p)| check_profile(name, p, &keys))
            .collect::<Result<Vec<_>, _>>()?;
        if profiles.is_empty() {
            return Err(invalid("no [profiles]"));
        }
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        let api = match file.api {
            Some(a) => a.check(base, &file.vault.issuer_ranges, &names)?,
            None => ApiConfig::default(),
        };
        Ok((
            Config {
                vault: file.vault,
                listener: file.listener,
                keys: keys_config,
                digest: sha256_hex(text),
                profiles,
                api,
            },
            keys,
        ))
    }

    /// In production mode, refuse a data directory group or others can
    /// read, with the command that fixes it. Test mode lets it be.
    pub fn check_data_dir(&self, dir: &Path) -> Result<(), ConfigError> {
        if self.keys.mode == KeyMode::Production && dir.exists() {
            keys::refuse_if_exposed(dir, "data directory")?;
        }
        Ok(())
    }

    /// The index of a profile by name.
    pub fn profile_index(&self, name: &str) -> Option<u8> {
        self.profiles
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as u8)
    }
}

fn check_ranges(v: &VaultConfig) -> Result<(), ConfigError> {
    if v.token_ranges.is_empty() || v.issuer_ranges.is_empty() {
        return Err(invalid(
            "vault.token_ranges and vault.issuer_ranges must not be empty",
        ));
    }
    for r in &v.token_ranges {
        r.check("token range")?;
    }
    for r in &v.issuer_ranges {
        r.check("issuer range")?;
    }
    for t in &v.token_ranges {
        if let Some(i) = v.issuer_ranges.iter().find(|i| i.overlaps(t)) {
            return Err(invalid(format!(
                "token range {}/{} overlaps issuer range {}/{}: a token could equal a PAN",
                t.prefix, t.length, i.prefix, i.length
            )));
        }
    }
    Ok(())
}

fn check_profile(name: String, p: ProfileFile, keys: &KeyStore) -> Result<Profile, ConfigError> {
    let scheme = match p.cvn.as_str() {
        "cvc3" => Scheme::Cvc3,
        "dcvv" => Scheme::Dcvv,
        other => other
            .strip_prefix("cvn_")
            .and_then(CvnProfile::from_name)
            .map(Scheme::Emv)
            .ok_or_else(|| {
                invalid(format!(
                    "profile {name}: cvn \"{other}\" is not one of cvn_visa_cvn10/18/22, cvn_mastercard_cvn16/17/20/21, cvn_interac_cvn133, cvc3, dcvv"
                ))
            })?,
    };
    let needed: &[&'static str] = match scheme {
        Scheme::Emv(_) => &["imk_ac", "imk_smi", "imk_smc"],
        Scheme::Cvc3 => &["imk_cvc3"],
        Scheme::Dcvv => &["imk_dcvv"],
    };
    let given = [
        ("imk_ac", &p.imk_ac),
        ("imk_smi", &p.imk_smi),
        ("imk_smc", &p.imk_smc),
        ("imk_cvc3", &p.imk_cvc3),
        ("imk_dcvv", &p.imk_dcvv),
    ];
    let mut labels = BTreeMap::new();
    for (purpose, label) in given {
        match (needed.contains(&purpose), label) {
            (true, None) => return Err(invalid(format!("profile {name}: needs {purpose}"))),
            (false, Some(_)) => {
                return Err(invalid(format!(
                    "profile {name}: {purpose} does not apply to {}",
                    p.cvn
                )))
            }
            (true, Some(label)) => {
                match keys.get_as(label, purpose_usage(purpose)) {
                    Ok(hsm_sim::keyfile::StoredKey::Tdes(k)) if k.len() == 16 => {}
                    Ok(_) => {
                        return Err(invalid(format!(
                            "profile {name}: key \"{label}\" must be a tdes2 key"
                        )))
                    }
                    Err(e) => return Err(invalid(format!("profile {name}: {e}"))),
                }
                labels.insert(purpose, label.clone());
            }
            (false, None) => {}
        }
    }
    let magstripe = matches!(scheme, Scheme::Cvc3 | Scheme::Dcvv);
    let track2_dd = match (magstripe, p.track2_dd) {
        (true, Some(t)) => {
            check_template(&name, &t, scheme)?;
            Some(t)
        }
        (true, None) => {
            return Err(invalid(format!(
                "profile {name}: mag-stripe profiles need track2_dd"
            )))
        }
        (false, Some(_)) => {
            return Err(invalid(format!(
                "profile {name}: track2_dd applies only to cvc3/dcvv"
            )))
        }
        (false, None) => None,
    };
    let service_code = p.service_code.unwrap_or_else(|| "201".to_owned());
    hsm_sim::types::ServiceCode::new(&service_code)
        .map_err(|e| invalid(format!("profile {name}: {e}")))?;
    Ok(Profile {
        name,
        scheme,
        keys: labels,
        track2_dd,
        service_code,
    })
}

fn check_template(name: &str, t: &str, scheme: Scheme) -> Result<(), ConfigError> {
    let count = |c: char| t.chars().filter(|&x| x == c).count();
    if !t.chars().all(|c| matches!(c, 'C' | 'U' | 'A' | '0'..='9')) || t.is_empty() || t.len() > 20
    {
        return Err(invalid(format!(
            "profile {name}: track2_dd \"{t}\" may hold only C, U, A and digits (1 to 20)"
        )));
    }
    let (c, a) = (count('C'), count('A'));
    let ok = match scheme {
        // At least 2 ATC digits: the full ATC is rebuilt from them and the
        // highest accepted ATC, which needs 10^digits > the replay window.
        Scheme::Cvc3 => (1..=5).contains(&c) && a >= 2 && count('U') >= 1,
        _ => c == 3 && a >= 2,
    };
    if !ok {
        return Err(invalid(format!(
            "profile {name}: track2_dd \"{t}\" needs C digits (CVC3: 1-5, dCVV: 3), at least 2 A digits, and for CVC3 U digits"
        )));
    }
    Ok(())
}

/// The TR-31 key usage a profile key of this purpose must carry.
pub fn purpose_usage(purpose: &str) -> &'static str {
    match purpose {
        "imk_ac" => "E0",
        "imk_smc" => "E1",
        "imk_smi" => "E2",
        // CVC3 and dCVV are dynamic card verification numbers.
        _ => "E4",
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}
