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
        /// Allow export of the imported key.
        #[arg(long)]
        exportable: bool,
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
                    *exportable,
                )
            } else {
                let label = label.as_deref().ok_or("import needs --label")?;
                let usage = usage
                    .as_deref()
                    .ok_or("import from components needs --usage")?;
                let n = components.unwrap_or(component_files.len());
                let clear = read_clear_components(n, component_files)?;
                let alg = algorithm_for(usage, algorithm.as_deref(), clear.len())?;
                put(
                    args,
                    &lmk,
                    &store,
                    label,
                    usage,
                    alg,
                    *exportable,
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
    match result {
        Ok((out, event)) => {
            audit(args, &lmk, event)?;
            Ok(out)
        }
        Err(msg) => {
            // A refused ceremony step is a security event too.
            let event = Event::new(actor(), args.command.action())
                .subject(args.command.label().unwrap_or_default())
                .outcome(Outcome::Refused, "refused")
                .detail("error", msg.as_str());
            audit(args, &lmk, event)?;
            Err(msg)
        }
    }
}

impl KeysCommand {
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

/// Record the command in the audit trail, with the audit keys of the
/// store as it is now (so generating the second audit key is itself the
/// first entry). Without them the command is done but says it was not
/// audited.
fn audit(args: &KeysArgs, lmk: &Lmk, event: Event) -> Result<(), String> {
    let store = if args.store.exists() {
        keyblocks::load(&args.store, lmk).map_err(|e| e.to_string())?
    } else {
        KeyStore::default()
    };
    let (Ok(mac), Ok(sign)) = (
        store.get_as(tessera_audit::MAC_KEY_LABEL, "M7"),
        store.get_as(tessera_audit::SIGNING_KEY_LABEL, "S0"),
    ) else {
        eprintln!(
            "tessera-hsm: warning: not audited: the key store has no {} (M7) and {} (S0) yet",
            tessera_audit::MAC_KEY_LABEL,
            tessera_audit::SIGNING_KEY_LABEL
        );
        return Ok(());
    };
    let keys = AuditKeys::new(mac.expose_bytes(), sign.expose_bytes())?;
    let log = AuditLog::open(
        &tessera_audit::audit_dir(&args.data_dir),
        keys,
        AuditOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    log.record(event).map_err(|e| e.to_string())?;
    log.close().map_err(|e| e.to_string())
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
    exportable: bool,
    key: &[u8],
    action: &str,
) -> Result<(String, Event), String> {
    let mode = check_usage(usage)?;
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
        exportability: if exportable { b'E' } else { b'N' },
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
        exportable,
        &key,
        "keys.generate",
    )
}

fn read_clear_components(n: usize, files: &[PathBuf]) -> Result<Zeroizing<Vec<u8>>, String> {
    if n == 0 {
        return Err("import needs --components N (or --component-file per component), --tr31 or --from-key-file".into());
    }
    let mut out: Option<Zeroizing<Vec<u8>>> = None;
    let stdin = std::io::stdin();
    for i in 1..=n {
        let text = match files.get(i - 1) {
            Some(p) => Zeroizing::new(
                std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            None => {
                eprint!("key component {i} of {n} (hex): ");
                let mut line = Zeroizing::new(String::new());
                std::io::BufRead::read_line(&mut stdin.lock(), &mut line)
                    .map_err(|e| e.to_string())?;
                line
            }
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
    exportable: bool,
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
    let len = key.len();
    let (res, ev) = put(
        args,
        lmk,
        store,
        &label,
        &usage,
        (header.algorithm, len),
        exportable,
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
            exportable,
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
