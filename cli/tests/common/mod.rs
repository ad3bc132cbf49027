//! Shared test setup: the repository's config and key file, with the
//! durability mode chosen per test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::config::Config;
use engine::vault::{OpenOptions, Vault};
use hsm_sim::keyfile::KeyStore;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shipped config, with `durability` set to `mode` ("sync"/"async").
pub fn config(mode: &str) -> (Arc<Config>, KeyStore) {
    let path = repo().join("config/tessera.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replace("durability = \"sync\"", &format!("durability = \"{mode}\""));
    let (cfg, keys) =
        Config::from_toml(&text, "test config", &repo().join("config")).expect("valid config");
    (Arc::new(cfg), keys)
}

pub fn open(dir: &Path, mode: &str) -> Vault {
    let (cfg, keys) = config(mode);
    let (vault, _warnings) = Vault::open(
        dir,
        cfg,
        &keys,
        OpenOptions {
            create: true,
            ..OpenOptions::default()
        },
    )
    .expect("open vault");
    vault
}
