//! `[keys]`: where the engine's keys come from, and the rules that keep
//! clear keys out of production.
//!
//! - `mode = "production"`: keys only from a key store (TR-31 blocks under
//!   the LMK), the LMK only from the command line (`--lmk-components N`,
//!   `--lmk-fd`) or `$TESSERA_LMK`, and the store file (and data
//!   directories, [`super::Config::check_data_dir`]) private to the
//!   service account.
//! - `mode = "test"`: also a clear JSON key file, or LMK component files
//!   named here (the repository's test components). A warning is printed
//!   at every start.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hsm_sim::keyblocks;
use hsm_sim::keyfile::KeyStore;
use hsm_sim::lmk::{self, Lmk};
use serde::Deserialize;

use super::values::{invalid, ConfigError};

/// Test or production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// Test keys allowed (clear file, component files); warned about.
    Test,
    /// Key store under an LMK from custodians or a secrets manager only.
    Production,
}

/// `[keys]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysFile {
    mode: KeyMode,
    store: Option<PathBuf>,
    clear_file: Option<PathBuf>,
    #[serde(default)]
    lmk_components: Vec<PathBuf>,
}

/// `[keys]`, checked.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// Test or production.
    pub mode: KeyMode,
    /// The key store (TR-31 blocks under the LMK), if keys come from one.
    pub store: Option<PathBuf>,
    /// The clear key file, test mode only.
    pub clear_file: Option<PathBuf>,
    /// KCV of the LMK the store was opened with.
    pub lmk_kcv: Option<String>,
    /// What to warn about at start (test mode).
    pub warnings: Vec<String>,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The LMK a secrets manager put in `$TESSERA_LMK`, read once per process
/// (the variable is removed from the environment when read).
fn env_lmk() -> Result<Option<&'static Lmk>, ConfigError> {
    static ENV_LMK: OnceLock<Option<Lmk>> = OnceLock::new();
    if let Some(l) = ENV_LMK.get() {
        return Ok(l.as_ref());
    }
    let l = lmk::from_env(lmk::LMK_ENV).map_err(|e| invalid(e.to_string()))?;
    Ok(ENV_LMK.get_or_init(|| l).as_ref())
}

/// Load the keys `[keys]` names. `given` is an LMK from the command line.
pub(super) fn load(
    file: &KeysFile,
    base: &Path,
    given: Option<&Lmk>,
) -> Result<(KeysConfig, KeyStore), ConfigError> {
    let store = file.store.as_deref().map(|p| resolve(base, p));
    let clear = file.clear_file.as_deref().map(|p| resolve(base, p));
    let mut warnings = Vec::new();
    if file.mode == KeyMode::Production {
        if clear.is_some() {
            return Err(invalid(
                "keys.clear_file: a clear key file is for tests only (keys.mode = \"test\"); in production keys are \
                 TR-31 blocks under the LMK in keys.store (tessera-hsm keys import moves them there)",
            ));
        }
        if !file.lmk_components.is_empty() {
            return Err(invalid(
                "keys.lmk_components: component files put the LMK on disk in clear; in production the custodians \
                 enter them at start (--lmk-components N) or a secrets manager hands the LMK over (--lmk-fd, $TESSERA_LMK)",
            ));
        }
    }
    let (keys, lmk_kcv) = match (&store, &clear) {
        (Some(_), Some(_)) => return Err(invalid("keys: give store or clear_file, not both")),
        (None, None) => return Err(invalid("keys: no store (TR-31 key blocks under the LMK)")),
        (None, Some(path)) => {
            warnings.push(format!(
                "keys.mode = \"test\": keys in clear from {}; test keys protect nothing, never use them with real cards",
                path.display()
            ));
            (
                KeyStore::load(path).map_err(|e| invalid(e.to_string()))?,
                None,
            )
        }
        (Some(path), None) => {
            if file.mode == KeyMode::Production {
                refuse_if_exposed(path, "key store")?;
            }
            let from_files;
            let lmk = match given {
                Some(l) => l,
                None if !file.lmk_components.is_empty() => {
                    let parts = file
                        .lmk_components
                        .iter()
                        .enumerate()
                        .map(|(i, p)| lmk::read_component_file(i + 1, &resolve(base, p)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| invalid(format!("keys.lmk_components: {e}")))?;
                    from_files = Lmk::from_components(&parts).map_err(|e| invalid(e.to_string()))?;
                    warnings.push(format!(
                        "keys.mode = \"test\": the LMK is made from the configuration's component files ({} components, KCV {}); \
                         test keys protect nothing, never use them with real cards",
                        parts.len(),
                        from_files.kcv()
                    ));
                    &from_files
                }
                None => env_lmk()?.ok_or_else(|| {
                    invalid(format!(
                        "no LMK for the key store {}: give --lmk-components N (custodians' components), --lmk-fd FD, \
                         or ${}",
                        path.display(),
                        lmk::LMK_ENV
                    ))
                })?,
            };
            let keys = keyblocks::load(path, lmk)
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            (keys, Some(lmk.kcv()))
        }
    };
    if file.mode == KeyMode::Test && warnings.is_empty() {
        warnings
            .push("keys.mode = \"test\": never use this configuration with real cards".to_owned());
    }
    let config = KeysConfig {
        mode: file.mode,
        store,
        clear_file: clear,
        lmk_kcv,
        warnings,
    };
    Ok((config, keys))
}

/// Refuse a file or directory group or others can read, saying how to fix it.
pub(super) fn refuse_if_exposed(path: &Path, what: &str) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid(format!("{what} {}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let fix = if meta.is_dir() { "700" } else { "600" };
            return Err(invalid(format!(
                "{what} {} is readable by group or others (mode {mode:03o}), which keys.mode = \"production\" refuses: \
                 chmod {fix} {}",
                path.display(),
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
    Ok(())
}
