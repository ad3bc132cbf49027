//! The LMK on `tessera`'s command line: assembled once per process (a
//! custodian types a component once), then used by every configuration
//! load of the command.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::Args;
use engine::config::{Config, ConfigError};
use hsm_sim::keyfile::KeyStore;
use hsm_sim::lmk::{Lmk, LmkRequest};

/// Where the LMK comes from (production mode; test mode's configuration
/// names its test components).
#[derive(Debug, Args)]
pub struct LmkArgs {
    /// Assemble the LMK from N components (XORed): each read from a
    /// --lmk-component-file or typed at the terminal (echo off), each one's
    /// KCV shown for its custodian. Else --lmk-fd, else $TESSERA_LMK.
    #[arg(long, global = true, value_name = "N")]
    lmk_components: Option<usize>,
    /// A file holding one LMK component (64 hex digits); repeat per component.
    #[arg(long = "lmk-component-file", global = true, value_name = "FILE")]
    lmk_component_files: Vec<PathBuf>,
    /// Read the whole LMK (64 hex digits) from this open file descriptor
    /// (a secrets manager's pipe).
    #[arg(long, global = true, value_name = "FD")]
    lmk_fd: Option<u32>,
}

static LMK: OnceLock<Option<Lmk>> = OnceLock::new();

impl LmkArgs {
    /// Assemble the LMK if one was asked for; call once, before any load.
    pub fn resolve(&self) -> Result<(), String> {
        let req = LmkRequest {
            components: self.lmk_components,
            component_files: self.lmk_component_files.clone(),
            fd: self.lmk_fd,
        };
        // $TESSERA_LMK is left to the configuration load, which reads it
        // only in production mode.
        let lmk = if req.components.is_some() || !req.component_files.is_empty() || req.fd.is_some()
        {
            req.resolve(&mut std::io::stderr())
                .map_err(|e| e.to_string())?
        } else {
            None
        };
        let _ = LMK.set(lmk);
        Ok(())
    }
}

/// Load the configuration with the command line's LMK, if any.
pub fn load_config(path: &Path) -> Result<(Config, KeyStore), ConfigError> {
    Config::load_with_lmk(path, LMK.get().and_then(Option::as_ref))
}
