//! `tessera-hsm keys`: a ceremony from an empty store, as two custodians
//! run it, checked through the store itself and the audit trail.

use std::process::{Command, Output};

use hsm_sim::keyblocks;
use hsm_sim::lmk::{read_component_file, Lmk};
use zeroize::Zeroizing;

const C1: &str = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
const C2: &str = "F0E1D2C3B4A5968778695A4B3C2D1E0FF0E1D2C3B4A5968778695A4B3C2D1E0F";

struct Ceremony {
    dir: tempfile::TempDir,
}

impl Ceremony {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c1.hex"), C1).unwrap();
        std::fs::write(dir.path().join("c2.hex"), C2).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `tessera-hsm keys ... <args>` with both custodians' components.
    fn keys(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tessera-hsm"))
            .env("USER", "alice")
            .arg("keys")
            .arg("--store")
            .arg(self.path("keys.tr31"))
            .arg("--data-dir")
            .arg(self.path("data"))
            .args(["--lmk-components", "2", "--lmk-component-file"])
            .arg(self.path("c1.hex"))
            .arg("--lmk-component-file")
            .arg(self.path("c2.hex"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.keys(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn lmk(&self) -> Lmk {
        let parts: Vec<Zeroizing<Vec<u8>>> = ["c1.hex", "c2.hex"]
            .iter()
            .enumerate()
            .map(|(i, f)| read_component_file(i + 1, &self.path(f)).unwrap())
            .collect();
        Lmk::from_components(&parts).unwrap()
    }

    fn trail(&self) -> String {
        let dir = self.path("data/audit");
        let mut text = String::new();
        for (_, p) in tessera_audit::files::list(&dir).unwrap() {
            text.push_str(&std::fs::read_to_string(p).unwrap());
        }
        text
    }
}

fn audit_keys(store: &hsm_sim::keyfile::KeyStore) -> tessera_audit::AuditKeys {
    tessera_audit::AuditKeys::new(
        store.get_as("audit.mac_key", "M7").unwrap().expose_bytes(),
        store
            .get_as("audit.signing_key", "S0")
            .unwrap()
            .expose_bytes(),
    )
    .unwrap()
}

#[test]
fn a_ceremony_generates_lists_exports_and_audits_each_step() {
    let c = Ceremony::new();
    // The two audit keys first: from then on every command is audited.
    let out = c.keys(&["generate", "--usage", "M7", "--label", "audit.mac_key"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Each custodian's KCV, and the LMK's.
    let lmk = c.lmk();
    assert!(
        stderr.contains(&format!("LMK: KCV {}", lmk.kcv())),
        "{stderr}"
    );
    assert!(
        stderr.contains("LMK component 1 of 2: KCV") && stderr.contains("not recorded"),
        "{stderr}"
    );
    c.ok(&["generate", "--usage", "S0", "--label", "audit.signing_key"]);
    let gen = c.ok(&[
        "generate",
        "--usage",
        "E0",
        "--label",
        "visa_cvn10.imk_ac",
        "--exportable",
    ]);
    assert!(
        gen.starts_with("visa_cvn10.imk_ac  version 1  usage E0  KCV "),
        "{gen}"
    );
    // A second version of the label.
    let gen2 = c.ok(&[
        "generate",
        "--usage",
        "E0",
        "--label",
        "visa_cvn10.imk_ac",
        "--exportable",
    ]);
    assert!(gen2.contains("version 2"), "{gen2}");
    c.ok(&[
        "generate",
        "--usage",
        "K0",
        "--label",
        "zmk.acquirer",
        "--algorithm",
        "aes256",
    ]);
    c.ok(&["generate", "--usage", "D0", "--label", "vault.data_key"]);

    let list = c.ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("visa_cvn10.imk_ac") && l.contains(" 2  E0")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("vault.data_key") && l.contains("D0     A    B     N")),
        "{list}"
    );

    // The store holds blocks only: no clear key bytes, and every block
    // opens under the LMK with the header the ceremony gave it.
    let store = keyblocks::load(&c.path("keys.tr31"), &lmk).unwrap();
    let text = std::fs::read_to_string(c.path("keys.tr31")).unwrap();
    for (_, _, key) in store.entries() {
        assert!(!text
            .to_uppercase()
            .contains(&hex::encode_upper(key.expose_bytes())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.path("keys.tr31"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    // Export under the key-exchange key: the receiver gets version 2.
    let block = c.ok(&[
        "export",
        "--label",
        "visa_cvn10.imk_ac",
        "--kek-label",
        "zmk.acquirer",
    ]);
    let kek = store.get_as("zmk.acquirer", "K0").unwrap();
    let (header, key) = keyblocks::import(kek, &block).unwrap();
    assert_eq!(&header.key_usage, b"E0");
    assert_eq!(&header.key_version_number, b"02");
    assert_eq!(
        &key[..],
        store.get("visa_cvn10.imk_ac").unwrap().expose_bytes()
    );

    // A non-exportable key and a key that is no key-exchange key are
    // refused, and the refusals are in the trail too.
    let refused = c.keys(&[
        "export",
        "--label",
        "vault.data_key",
        "--kek-label",
        "zmk.acquirer",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("non-exportable"));
    let refused = c.keys(&[
        "export",
        "--label",
        "visa_cvn10.imk_ac",
        "--kek-label",
        "vault.data_key",
    ]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains(
        "is a D0 key (symmetric data encryption) and cannot be used as a key-exchange key"
    ));

    // A block does not quietly replace a key: an existing label needs
    // --new-version. And no key leaves under itself.
    let out = c.keys(&[
        "import",
        "--tr31",
        block.trim(),
        "--kek-label",
        "zmk.acquirer",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists (2 version(s)): give --new-version")
    );
    let out = c.keys(&[
        "export",
        "--label",
        "zmk.acquirer",
        "--kek-label",
        "zmk.acquirer",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be exported under itself"));
    // The audit trail's keys cannot be replaced under it.
    let out = c.keys(&["generate", "--usage", "M7", "--label", "audit.mac_key"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot change its keys yet"));

    // Import the exported block back under another label.
    c.ok(&[
        "import",
        "--tr31",
        block.trim(),
        "--kek-label",
        "zmk.acquirer",
        "--label",
        "copy.imk_ac",
    ]);
    let store = keyblocks::load(&c.path("keys.tr31"), &lmk).unwrap();
    assert_eq!(
        store.get("copy.imk_ac").unwrap().kcv(),
        store.get("visa_cvn10.imk_ac").unwrap().kcv()
    );
    // It keeps the sender's restriction: exported non-exportable, it stays so.
    assert_eq!(store.newest("copy.imk_ac").unwrap().0.exportability, b'N');

    let trail = c.trail();
    for action in ["keys.generate", "keys.list", "keys.export", "keys.import"] {
        assert!(
            trail.contains(&format!("\"action\":\"{action}\"")),
            "{action}: {trail}"
        );
    }
    // The account the command ran as, whatever $USER says.
    assert!(trail.contains(&format!("\"actor\":\"{}\"", tessera_audit::cli_actor())));
    assert!(!trail.contains("cli:alice"));
    assert!(trail.contains("\"outcome\":\"refused\""));
    // No key bytes in the trail, and it verifies.
    for (_, _, key) in store.entries() {
        assert!(!trail
            .to_lowercase()
            .contains(&hex::encode(key.expose_bytes())));
    }
    let ak = audit_keys(&store);
    let report = tessera_audit::verify(
        &c.path("data/audit"),
        &tessera_audit::VerifyKeys {
            mac_key: Some(ak.mac_key()),
            public_key: Some(ak.verifying_key()),
        },
    )
    .unwrap();
    assert_eq!(report.problem, None);
}

#[test]
fn the_wrong_lmk_and_bad_usages_are_refused() {
    let c = Ceremony::new();
    // A first step refused leaves no store, and says why.
    let out = c.keys(&[
        "generate",
        "--usage",
        "M7",
        "--label",
        "audit.mac_key",
        "--algorithm",
        "aes256",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot have usage M7"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c.path("keys.tr31").exists());
    // Nothing but the audit keys before the audit keys.
    let out = c.keys(&["generate", "--usage", "E0", "--label", "k"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the key store has no audit keys"));
    c.ok(&["generate", "--usage", "M7", "--label", "audit.mac_key"]);
    c.ok(&["generate", "--usage", "S0", "--label", "audit.signing_key"]);
    c.ok(&["generate", "--usage", "E0", "--label", "k"]);
    // One custodian brings the wrong component.
    std::fs::write(c.path("c2.hex"), "11".repeat(32)).unwrap();
    let out = c.keys(&["list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong or mistyped components"));
    std::fs::write(c.path("c2.hex"), C1).unwrap();
    let out = c.keys(&["list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("LMK components 1 and 2 are identical"));
    std::fs::write(c.path("c2.hex"), C2).unwrap();
    for (usage, alg, want) in [
        ("ZZ", None, "unknown \"ZZ\""),
        ("M7", Some("aes256"), "cannot have usage M7"),
        ("D0", Some("tdes2"), "cannot have usage D0"),
    ] {
        let mut args = vec!["generate", "--usage", usage, "--label", "x"];
        if let Some(a) = alg {
            args.extend(["--algorithm", a]);
        }
        let out = c.keys(&args);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{usage}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
