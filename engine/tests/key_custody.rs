//! Key custody: production configurations take keys only as TR-31 blocks
//! under an LMK handed over at start, from private files; keys are used
//! only as their headers allow; the test store matches the test keys.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use engine::config::{Config, KeyMode};
use hsm_sim::keyfile::KeyStore;
use hsm_sim::lmk::{read_component_file, Lmk};

fn config_dir() -> PathBuf {
    common::repo().join("config")
}

fn test_lmk() -> Lmk {
    let parts: Vec<_> = (1..=2)
        .map(|i| {
            read_component_file(i, &config_dir().join(format!("test-lmk/component-{i}.hex")))
                .unwrap()
        })
        .collect();
    Lmk::from_components(&parts).unwrap()
}

/// The repository's configuration with its `[keys]` table replaced.
fn with_keys(keys: &str) -> String {
    let text = std::fs::read_to_string(config_dir().join("tessera.toml")).unwrap();
    let start = text.find("[keys]").unwrap();
    let end = start + text[start..].find("\n[vault]").unwrap();
    format!("{}{keys}\n{}", &text[..start], &text[end..])
}

/// A private copy of the test store and a production config naming it.
fn production(dir: &Path) -> PathBuf {
    let store = dir.join("keys.tr31");
    std::fs::copy(config_dir().join("test-keys.tr31"), &store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.join("tessera.toml");
    std::fs::write(
        &cfg,
        with_keys(&format!(
            "[keys]\nmode = \"production\"\nstore = \"{}\"\n",
            store.display()
        )),
    )
    .unwrap();
    cfg
}

fn load_err(path: &Path, lmk: Option<&Lmk>) -> String {
    Config::load_with_lmk(path, lmk).unwrap_err().to_string()
}

#[test]
fn production_loads_the_store_under_the_lmk_given_at_start_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = production(dir.path());
    let (config, keys) = Config::load_with_lmk(&cfg, Some(&test_lmk())).unwrap();
    assert_eq!(config.keys.mode, KeyMode::Production);
    assert!(
        config.keys.warnings.is_empty(),
        "{:?}",
        config.keys.warnings
    );
    assert_eq!(
        config.keys.lmk_kcv.as_deref(),
        Some(test_lmk().kcv().as_str())
    );
    assert!(keys.get_as("visa_cvn10.imk_ac", "E0").is_ok());
}

#[test]
fn production_without_an_lmk_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = production(dir.path());
    // Nothing in this test process sets $TESSERA_LMK.
    let e = load_err(&cfg, None);
    assert!(
        e.contains("no LMK") && e.contains("--lmk-components"),
        "{e}"
    );
}

#[test]
fn production_refuses_clear_key_files_and_component_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        with_keys(&format!(
            "[keys]\nmode = \"production\"\nclear_file = \"{}\"\n",
            config_dir().join("test-keys.json").display()
        )),
    )
    .unwrap();
    let e = load_err(&cfg, None);
    assert!(e.contains("clear key file is for tests only"), "{e}");
    std::fs::write(
        &cfg,
        with_keys(&format!(
            "[keys]\nmode = \"production\"\nstore = \"{}\"\nlmk_components = [\"{}\"]\n",
            config_dir().join("test-keys.tr31").display(),
            config_dir().join("test-lmk/component-1.hex").display()
        )),
    )
    .unwrap();
    let e = load_err(&cfg, None);
    assert!(e.contains("put the LMK on disk in clear"), "{e}");
}

#[test]
fn production_refuses_a_key_store_or_data_directory_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = production(dir.path());
    let store = dir.path().join("keys.tr31");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load_err(&cfg, Some(&test_lmk()));
    assert!(
        e.contains("mode 644") && e.contains(&format!("chmod 600 {}", store.display())),
        "{e}"
    );
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (config, _) = Config::load_with_lmk(&cfg, Some(&test_lmk())).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = config.check_data_dir(&data).unwrap_err().to_string();
    assert!(e.contains(&format!("chmod 700 {}", data.display())), "{e}");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    config.check_data_dir(&data).unwrap();
}

#[test]
fn the_wrong_lmk_is_refused_by_its_kcv() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = production(dir.path());
    let wrong = Lmk::from_hex(&"5A".repeat(32)).unwrap();
    let e = load_err(&cfg, Some(&wrong));
    assert!(
        e.contains("wrong or mistyped components") && e.contains(&wrong.kcv()),
        "{e}"
    );
}

#[test]
fn a_changed_key_block_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = production(dir.path());
    let store = dir.path().join("keys.tr31");
    let text = std::fs::read_to_string(&store).unwrap();
    // Turn the vault data key's block into one that claims usage E0.
    let changed: String = text
        .lines()
        .map(|l| {
            if l.contains("vault.data_key") {
                format!("{}E0{}\n", &l[..5], &l[7..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(changed, text);
    std::fs::write(&store, changed).unwrap();
    let e = load_err(&cfg, Some(&test_lmk()));
    assert!(e.contains("MAC does not verify under the LMK"), "{e}");
}

#[test]
fn a_data_key_named_as_an_issuer_master_key_is_refused_naming_the_label_and_both_usages() {
    let text = std::fs::read_to_string(config_dir().join("tessera.toml"))
        .unwrap()
        .replacen(
            "imk_ac = \"visa_cvn10.imk_ac\"",
            "imk_ac = \"vault.data_key\"",
            1,
        );
    let e = Config::from_toml(&text, "test", &config_dir())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"vault.data_key\" is a D0 key (symmetric data encryption)")
            && e.contains("as E0 (EMV issuer master key: application cryptograms)"),
        "{e}"
    );
}

#[test]
fn test_mode_warns_at_every_load() {
    let (config, _) = common::config("sync");
    assert_eq!(config.keys.mode, KeyMode::Test);
    assert!(
        config
            .keys
            .warnings
            .iter()
            .any(|w| w.contains("component files") && w.contains("never use them with real cards")),
        "{:?}",
        config.keys.warnings
    );
}

#[test]
fn the_test_store_holds_exactly_the_test_keys() {
    let blocks =
        hsm_sim::keyblocks::load(&config_dir().join("test-keys.tr31"), &test_lmk()).unwrap();
    let clear = KeyStore::load(&config_dir().join("test-keys.json")).unwrap();
    assert_eq!(blocks.labels(), clear.labels());
    for (label, meta, key) in clear.entries() {
        let (bmeta, bkey) = blocks.newest(label).unwrap();
        assert_eq!(bkey.kcv(), key.kcv(), "{label}");
        assert_eq!(bmeta.usage, meta.usage, "{label}");
    }
}

#[test]
fn a_second_version_of_the_data_key_loads_for_rotation() {
    // Both versions reach the vault: records under version 1 stay readable
    // and new ones take version 2 (engine/tests/key_rotation.rs).
    let dir = tempfile::tempdir().unwrap();
    let cfg = production(dir.path());
    let lmk = test_lmk();
    let key = [0x42u8; 32];
    let line = hsm_sim::keyblocks::wrap_for_store(
        &lmk,
        &hsm_sim::keyblocks::NewKey {
            label: "vault.data_key",
            usage: "D0",
            algorithm: b'A',
            mode_of_use: b'B',
            exportability: b'N',
            version: 2,
            key: &key,
        },
    )
    .unwrap();
    hsm_sim::keyblocks::append(&dir.path().join("keys.tr31"), &lmk, &line).unwrap();
    let (_, keys) = Config::load_with_lmk(&cfg, Some(&lmk)).unwrap();
    let versions: Vec<u8> = keys
        .all_versions_as("vault.data_key", "D0")
        .unwrap()
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    assert_eq!(versions, vec![1, 2]);
    // A version under another usage is refused, naming the label.
    let line = hsm_sim::keyblocks::wrap_for_store(
        &lmk,
        &hsm_sim::keyblocks::NewKey {
            label: "vault.data_key",
            usage: "M6",
            algorithm: b'A',
            mode_of_use: b'C',
            exportability: b'N',
            version: 3,
            key: &key,
        },
    )
    .unwrap();
    hsm_sim::keyblocks::append(&dir.path().join("keys.tr31"), &lmk, &line).unwrap();
    let e = load_err(&cfg, Some(&lmk));
    assert!(
        e.contains("key \"vault.data_key\" is a M6 key") && e.contains("D0"),
        "{e}"
    );
}
