//! `tessera-hsm keys`: the key ceremony. Keys are generated, imported and
//! exported only through here, and only ever stored as TR-31 blocks under
//! the LMK; each command is written to the audit trail.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use hsm_sim::key_usage;
use hsm_sim::keyblocks::{self, NewKey};
use hsm_sim::keyfile::{KeyStore, StoredKey};
use hsm_sim::lmk::{self, Lmk, LmkRequest};
use tessera_audit::{AuditKeys, AuditLog, AuditOptions, Event, Outcome};
use zeroize::Zeroizing;

/// Where the LMK comes from.
#[derive(Args, Debug)]
pub struct LmkArgs {
    /// Assemble the LMK from N components (XORed), each read from a
    /// --lmk-component-file or typed at the terminal; each one's KCV is shown.
    #[arg(long, global = true, value_name = "N")]
    pub lmk_components: Option<usize>,
    /// A file holding one component (64 hex digits); repeat per component.
    #[arg(long = "lmk-component-file", global = true, value_name = "FILE")]
    pub lmk_component_files: Vec<PathBuf>,
    /// Read the whole LMK (64 hex digits) from this open file descriptor.
    #[arg(long, global = true, value_name = "FD")]
    pub lmk_fd: Option<u32>,
}

impl LmkArgs {
    /// The LMK, or an error that says how to give it.
    pub fn lmk(&self) -> Result<Lmk, String> {
        let req = LmkRequest {
            components: self.lmk_components,
            component_files: self.lmk_component_files.clone(),
            fd: self.lmk_fd,
        };
        req.resolve(&mut std::io::stderr())
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no LMK: give --lmk-components N (with --lmk-component-file per component, or typed), \
                     --lmk-fd FD, or ${}",
                    lmk::LMK_ENV
                )
            })
    }
}

/// `tessera-hsm keys ...`.
#[derive(Args, Debug)]
pub struct KeysArgs {
    /// The key store: TR-31 key blocks under the LMK, one per line.
    #[arg(long, value_name = "FILE")]
    pub store: PathBuf,
    /// Data directory whose audit trail records each command (DIR/audit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub lmk: LmkArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The ceremony commands.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a random key and append its block (version: the label's newest + 1).
    Generate {
        /// TR-31 key usage: E0 E1 E2 E4 E5 C0 D0 M6 M7 S0 K0 K1.
        #[arg(long)]
        usage: String,
        /// The key's label (as the engine's configuration names it).
        #[arg(long)]
        label: String,
        /// tdes2, tdes3, aes128, aes192, aes256, hmac or ed25519 (default by usage).
        #[arg(long)]
        algorithm: Option<String>,
        /// Allow `keys export` of this key under a key-exchange key.
        #[arg(long)]
        exportable: bool,
    },
    /// Import a clear key from components, a TR-31 block under a transport
    /// key in the store, or (test set-up) a clear JSON key file.
    Import {
        /// Label for the imported key (from components or a block).
        #[arg(long)]
        label: Option<String>,
        /// TR-31 key usage (from components; a block brings its own).
        #[arg(long)]
        usage: Option<String>,
        /// Algorithm (from components).
        #[arg(long)]
        algorithm: Option<String>,
        /// Number of clear key components to read and XOR.
        #[arg(long, value_name = "N")]
        components: Option<usize>,
        /// A file holding one clear key component; repeat per component.
        #[arg(long = "component-file", value_name = "FILE")]
        component_files: Vec<PathBuf>,
        /// A TR-31 key block, under the transport key --kek-label.
        #[arg(long, value_name = "BLOCK")]
        tr31: Option<String>,
        /// Label of the transport key (usage K0 or K1) in the store.
        #[arg(long)]
        kek_label: Option<String>,
        /// Every key of a clear JSON key file (its usages kept): for
        /// turning config/test-keys.json into a store. Test set-up only.
        #[arg(long, value_name = "FILE")]
        from_key_file: Option<PathBuf>,
        /// Allow export of the imported key (a block keeps its own
        /// restriction: a non-exportable block stays non-exportable).
        #[arg(long)]
        exportable: bool,
        /// Add the key as a new version of a label that exists (without
        /// it, an existing label is refused: an imported block must not
        /// quietly replace a key).
        #[arg(long)]
        new_version: bool,
    },
    /// Print a key as a TR-31 block under a key-exchange key in the store.
    Export {
        /// The key to export.
        #[arg(long)]
        label: String,
        /// The key-exchange key (usage K0 or K1).
        #[arg(long)]
        kek_label: String,
    },
    /// Labels, versions, usages, modes, exportability and KCVs.
    List,
}

fn actor() -> String {
    tessera_audit::cli_actor()
}

/// Run a keys command; returns what to print on stdout.
pub fn run(args: &KeysArgs) -> Result<String, String> {
    for w in lmk::harden_process() {
        eprintln!("tessera-hsm: warning: {w}");
    }
    let lmk = args.lmk.lmk()?;
    let store = if args.store.exists() {
        keyblocks::load(&args.store, &lmk).map_err(|e| e.to_string())?
    } else {
        KeyStore::default()
    };
    // The trail is opened (and locked) before anything is done: a step
    // that cannot be recorded is not taken. Only a store without audit
    // keys yet may be worked on unrecorded, and only to create them.
    let log = open_trail(args, &store)?;
    if log.is_none() && !args.command.bootstraps() {
        return Err(format!(
            "the key store has no audit keys: create {} (--usage M7) and {} (--usage S0) first, so that this \
             and every later command is recorded",
            tessera_audit::MAC_KEY_LABEL,
            tessera_audit::SIGNING_KEY_LABEL
        ));
    }
    let result = match &args.command {
        KeysCommand::Generate {
            usage,
            label,
            algorithm,
            exportable,
        } => generate(
            args,
            &lmk,
            &store,
            usage,
            label,
            algorithm.as_deref(),
            *exportable,
        ),
        KeysCommand::Import {
            label,
            usage,
            algorithm,
            components,
            component_files,
            tr31,
            kek_label,
            from_key_file,
            exportable,
            new_version,
        } => (|| {
            if let Some(file) = from_key_file {
                import_key_file(args, &lmk, &store, file, *exportable)
            } else if let Some(block) = tr31 {
                let kek = kek_label.as_deref().ok_or("--tr31 needs --kek-label")?;
                import_block(
                    args,
                    &lmk,
                    &store,
                    block,
                    kek,
                    label.as_deref(),
                    (*exportable, *new_version),
                )
            } else {
                let label = label.as_deref().ok_or("import needs --label")?;
                let usage = usage
                    .as_deref()
                    .ok_or("import from components needs --usage")?;
                let n = components.unwrap_or(component_files.len());
                let clear = read_clear_components(n, component_files)?;
                let alg = algorithm_for(usage, algorithm.as_deref(), clear.len())?;
                refuse_existing(&store, label, *new_version)?;
                put(
                    args,
                    &lmk,
                    &store,
                    label,
                    usage,
                    alg,
                    (None, exportability(*exportable)),
                    &clear,
                    "keys.import",
                )
            }
        })(),
        KeysCommand::Export { label, kek_label } => export(&store, label, kek_label),
        KeysCommand::List => Ok((
            list(&store),
            Event::new(actor(), "keys.list").detail("keys", store.entries().len().to_string()),
        )),
    };
    let (event, outcome) = match result {
        Ok((out, event)) => (event, Ok(out)),
        // A refused ceremony step is a security event too.
        Err(msg) => (
            Event::new(actor(), args.command.action())
                .subject(args.command.label().unwrap_or_default())
                .outcome(Outcome::Refused, "refused")
                .detail("error", msg.as_str()),
            Err(msg),
        ),
    };
    // While bootstrapping, the trail exists once both audit keys do: the
    // step that creates the second is its first entry.
    let log = match log {
        Some(l) => Some(l),
        // A first step that failed may have left no store at all.
        None if !args.store.exists() => None,
        None => open_trail(
            args,
            &keyblocks::load(&args.store, &lmk).map_err(|e| e.to_string())?,
        )?,
    };
    match log {
        Some(log) => {
            log.record(event).map_err(|e| e.to_string())?;
            log.close().map_err(|e| e.to_string())?;
        }
        None => eprintln!(
            "tessera-hsm: warning: not recorded: the key store has no {} (M7) and {} (S0) yet",
            tessera_audit::MAC_KEY_LABEL,
            tessera_audit::SIGNING_KEY_LABEL
        ),
    }
    outcome
}

impl KeysCommand {
    /// What may run before the audit keys exist: creating them, and
    /// (test set-up) loading a whole clear key file that holds them.
    fn bootstraps(&self) -> bool {
        match self {
            Self::Generate { usage, .. } => usage == "M7" || usage == "S0",
            Self::Import { from_key_file, .. } => from_key_file.is_some(),
            _ => false,
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Self::Generate { .. } => "keys.generate",
            Self::Import { .. } => "keys.import",
            Self::Export { .. } => "keys.export",
            Self::List => "keys.list",
        }
    }

    fn label(&self) -> Option<String> {
        match self {
            Self::Generate { label, .. } | Self::Export { label, .. } => Some(label.clone()),
            Self::Import { label, .. } => label.clone(),
            Self::List => None,
        }
    }
}

/// The audit trail in DATA_DIR/audit under the store's audit keys, or
/// `None` while the store has none. A running engine holds the trail's
/// lock: the ceremony waits for it to stop.
fn open_trail(args: &KeysArgs, store: &KeyStore) -> Result<Option<AuditLog>, String> {
    let (Ok(mac), Ok(sign)) = (
        store.get_as(tessera_audit::MAC_KEY_LABEL, "M7"),
        store.get_as(tessera_audit::SIGNING_KEY_LABEL, "S0"),
    ) else {
        return Ok(None);
    };
    let keys = AuditKeys::new(mac.expose_bytes(), sign.expose_bytes())?;
    AuditLog::open(
        &tessera_audit::audit_dir(&args.data_dir),
        keys,
        AuditOptions::default(),
    )
    .map(Some)
    .map_err(|e| e.to_string())
}

fn algorithm_for(usage: &str, given: Option<&str>, len: usize) -> Result<(u8, usize), String> {
    let name = match given {
        Some(a) => a,
        None => match usage {
            "M7" => "hmac",
            "S0" => "ed25519",
            "D0" | "M6" | "K1" => "aes256",
            _ if len == 32 => "aes256",
            _ if len == 24 => "tdes3",
            _ => "tdes2",
        },
    };
    let (alg, n) = match name {
        "tdes2" => (b'T', 16),
        "tdes3" => (b'T', 24),
        "aes128" => (b'A', 16),
        "aes192" => (b'A', 24),
        "aes256" => (b'A', 32),
        "hmac" => (b'H', 32),
        "ed25519" => (b'E', 32),
        other => {
            return Err(format!(
                "--algorithm: unknown \"{other}\" (tdes2 tdes3 aes128 aes192 aes256 hmac ed25519)"
            ))
        }
    };
    if !key_usage::algorithm_fits(usage, alg) {
        return Err(format!(
            "a {name} key cannot have usage {usage} ({})",
            key_usage::describe(usage)
        ));
    }
    Ok((alg, n))
}

fn exportability(exportable: bool) -> u8 {
    if exportable {
        b'E'
    } else {
        b'N'
    }
}

fn refuse_existing(store: &KeyStore, label: &str, new_version: bool) -> Result<(), String> {
    match store.versions(label) {
        0 => Ok(()),
        _ if new_version => Ok(()),
        n => Err(format!(
            "key \"{label}\" exists ({n} version(s)): give --new-version to add this one as its newest"
        )),
    }
}

fn check_usage(usage: &str) -> Result<u8, String> {
    key_usage::default_mode(usage).ok_or_else(|| {
        let known: Vec<String> = key_usage::all()
            .map(|(u, d)| format!("{u} ({d})"))
            .collect();
        format!(
            "--usage: unknown \"{usage}\"; Tessera's usages: {}",
            known.join(", ")
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn put(
    args: &KeysArgs,
    lmk: &Lmk,
    store: &KeyStore,
    label: &str,
    usage: &str,
    (alg, len): (u8, usize),
    (mode, exportability): (Option<u8>, u8),
    key: &[u8],
    action: &str,
) -> Result<(String, Event), String> {
    let default_mode = check_usage(usage)?;
    let mode = mode.unwrap_or(default_mode);
    if !key_usage::algorithm_fits(usage, alg) {
        return Err(format!(
            "a key of algorithm {} cannot have usage {usage} ({})",
            char::from(alg),
            key_usage::describe(usage)
        ));
    }
    if [
        tessera_audit::MAC_KEY_LABEL,
        tessera_audit::SIGNING_KEY_LABEL,
    ]
    .contains(&label)
        && store.versions(label) > 0
    {
        return Err(format!(
            "\"{label}\" exists: the audit trail cannot change its keys yet (its entries name no key version)"
        ));
    }
    if key.len() != len {
        return Err(format!(
            "the key has {} bytes; the algorithm needs {len}",
            key.len()
        ));
    }
    let version = store.newest(label).map_or(1, |(m, _)| m.version + 1);
    let nk = NewKey {
        label,
        usage,
        algorithm: alg,
        mode_of_use: mode,
        exportability,
        version,
        key,
    };
    let line = keyblocks::wrap_for_store(lmk, &nk).map_err(|e| e.to_string())?;
    keyblocks::append(&args.store, lmk, &line).map_err(|e| e.to_string())?;
    let kcv = hex::encode_upper(keyblocks::stored_key(alg, key)?.kcv());
    let out = format!("{label}  version {version}  usage {usage}  KCV {kcv}\n");
    let event = Event::new(actor(), action)
        .subject(label)
        .detail("version", version.to_string())
        .detail("usage", usage)
        .detail("kcv", kcv);
    Ok((out, event))
}

fn generate(
    args: &KeysArgs,
    lmk: &Lmk,
    store: &KeyStore,
    usage: &str,
    label: &str,
    algorithm: Option<&str>,
    exportable: bool,
) -> Result<(String, Event), String> {
    let (alg, len) = algorithm_for(usage, algorithm, 0)?;
    let mut key = Zeroizing::new(vec![0u8; len]);
    getrandom::fill(&mut key).map_err(|e| format!("OS random source failed: {e}"))?;
    if alg == b'T' {
        // DES keys carry odd parity by convention.
        for b in key.iter_mut() {
            *b = (*b & 0xFE) | u8::from(b.count_ones() % 2 == 0);
        }
    }
    put(
        args,
        lmk,
        store,
        label,
        usage,
        (alg, len),
        (None, exportability(exportable)),
        &key,
        "keys.generate",
    )
}

fn read_clear_components(n: usize, files: &[PathBuf]) -> Result<Zeroizing<Vec<u8>>, String> {
    if n == 0 {
        return Err("import needs --components N (or --component-file per component), --tr31 or --from-key-file".into());
    }
    let mut out: Option<Zeroizing<Vec<u8>>> = None;
    for i in 1..=n {
        let text = match files.get(i - 1) {
            Some(p) => Zeroizing::new(
                std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            None => lmk::read_secret_line(
                &format!("key component {i} of {n} (hex): "),
                &mut std::io::stderr(),
            )
            .map_err(|e| e.to_string())?,
        };
        let digits: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| c.is_ascii_hexdigit()).collect());
        let c = Zeroizing::new(
            hex::decode(digits.as_bytes()).map_err(|_| format!("component {i}: not hex"))?,
        );
        eprintln!("key component {i} of {n}: KCV {}", component_kcv(&c));
        match &mut out {
            None => out = Some(c),
            Some(acc) if acc.len() == c.len() => {
                acc.iter_mut().zip(c.iter()).for_each(|(a, b)| *a ^= b)
            }
            Some(_) => return Err(format!("component {i} is not as long as component 1")),
        }
    }
    out.ok_or_else(|| "no components".into())
}

fn component_kcv(c: &[u8]) -> String {
    match c.len() {
        16 | 24 => hsm_sim::TdesKey::new(c)
            .map(|k| hex::encode_upper(hsm_sim::primitives::kcv::des_kcv(&k, 3)))
            .unwrap_or_else(|_| "------".into()),
        _ => lmk::component_kcv(c),
    }
}

fn import_block(
    args: &KeysArgs,
    lmk: &Lmk,
    store: &KeyStore,
    block: &str,
    kek_label: &str,
    label: Option<&str>,
    (exportable, new_version): (bool, bool),
) -> Result<(String, Event), String> {
    let kek = transport_key(store, kek_label)?;
    let (header, key) = keyblocks::import(kek, block)?;
    let usage = String::from_utf8_lossy(&header.key_usage).into_owned();
    let from_block = header
        .optional_blocks
        .iter()
        .find(|b| b.id_str() == "LB")
        .map(|b| b.data.clone());
    let label = label
        .map(str::to_owned)
        .or(from_block)
        .ok_or("the block has no label: give --label")?;
    refuse_existing(store, &label, new_version)?;
    let len = key.len();
    // The sender's restrictions stay: its mode of use, and export only if
    // the block allowed it and the ceremony asks for it.
    let export = if header.exportability == b'E' && exportable {
        b'E'
    } else {
        b'N'
    };
    let (res, ev) = put(
        args,
        lmk,
        store,
        &label,
        &usage,
        (header.algorithm, len),
        (Some(header.mode_of_use), export),
        &key,
        "keys.import",
    )?;
    Ok((res, ev.detail("kek", kek_label)))
}

fn import_key_file(
    args: &KeysArgs,
    lmk: &Lmk,
    store: &KeyStore,
    file: &Path,
    exportable: bool,
) -> Result<(String, Event), String> {
    let clear = KeyStore::load(file).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut count = 0;
    for (label, meta, key) in clear.entries() {
        let usage = meta
            .usage
            .map(|u| String::from_utf8_lossy(&u).into_owned())
            .ok_or_else(|| {
                format!(
                    "key \"{label}\" in {} has no \"usage\"; a stored key must have one",
                    file.display()
                )
            })?;
        let (res, _) = put(
            args,
            lmk,
            store,
            label,
            &usage,
            (meta.algorithm, key.expose_bytes().len()),
            (None, exportability(exportable)),
            key.expose_bytes(),
            "keys.import",
        )?;
        out.push_str(&res);
        count += 1;
    }
    let event = Event::new(actor(), "keys.import")
        .subject(file.display().to_string())
        .detail("keys", count.to_string());
    Ok((out, event))
}

fn transport_key<'a>(store: &'a KeyStore, label: &str) -> Result<&'a StoredKey, String> {
    store
        .get_as(label, "K0")
        .or_else(|_| store.get_as(label, "K1"))
        .map_err(|_| match store.newest(label) {
            None => format!("key \"{label}\" is not in the key store"),
            Some((m, _)) => format!(
                "key \"{label}\" is a {} key ({}) and cannot be used as a key-exchange key (K0 or K1)",
                m.usage_str(),
                key_usage::describe(&m.usage_str())
            ),
        })
}

fn export(store: &KeyStore, label: &str, kek_label: &str) -> Result<(String, Event), String> {
    if label == kek_label {
        return Err(format!("key \"{label}\" cannot be exported under itself"));
    }
    let kek = transport_key(store, kek_label)?;
    let (meta, key) = store
        .newest(label)
        .ok_or_else(|| format!("key \"{label}\" is not in the key store"))?;
    let block = keyblocks::export(label, meta, key, kek)?;
    let event = Event::new(actor(), "keys.export")
        .subject(label)
        .detail("version", meta.version.to_string())
        .detail("kek", kek_label);
    Ok((format!("{block}\n"), event))
}

fn list(store: &KeyStore) -> String {
    let mut out =
        String::from("LABEL                           VER  USAGE  ALG  MODE  EXPORT  KCV\n");
    for (label, m, k) in store.entries() {
        out.push_str(&format!(
            "{label:<32}{:>3}  {:<5}  {:<3}  {:<4}  {:<6}  {}\n",
            m.version,
            m.usage_str(),
            char::from(m.algorithm),
            char::from(m.mode_of_use),
            char::from(m.exportability),
            hex::encode_upper(k.kcv())
        ));
    }
    out
}
