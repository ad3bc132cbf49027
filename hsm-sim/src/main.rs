//! `tessera-hsm`: the payment-cryptography calculator.
//!
//! `batch` answers JSON Lines requests (the vector files' op names and
//! fields); the other subcommands do the common jobs from flags, for an
//! engineer recomputing a cryptogram by hand.

mod keys_cmd;

use std::io::{self, BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hsm_sim::emv::mk::{derive_icc_mk, MkDerivation};
use hsm_sim::emv::{ArpcInput, CvnProfile, TerminalData};
use hsm_sim::keyfile::KeyStore;
use hsm_sim::magstripe::{cvc3, dcvv};
use hsm_sim::primitives::kcv::{aes_kcv, des_kcv, AesKcvConvention};
use hsm_sim::types::{Atc, Expiry, Pan, Psn, ServiceCode};
use hsm_sim::{AesKey, TdesKey};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera-hsm",
    version,
    about = "Payment HSM simulator: recompute and verify EMV, CVC3, dCVV, CVV, GlobalPlatform and TR-31 cryptography",
    after_help = "Keys are given as hex, or as label:NAME to take them from the key file (--keys).\n\
                  Test keys for every engine profile: config/test-keys.json (TEST ONLY).\n\n\
                  Example:\n  echo '{\"op\":\"kcv\",\"input\":{\"algorithm\":\"TDES\",\"key\":\"0123456789ABCDEFFEDCBA9876543210\"}}' | tessera-hsm batch"
)]
struct Cli {
    /// Key file (JSON) whose keys can be named as label:NAME. Every KCV in
    /// it is checked on load.
    #[arg(long, global = true, value_name = "FILE")]
    keys: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer JSON Lines requests from stdin on stdout, one line each, in order.
    #[command(
        after_help = "A request is {\"op\": NAME, \"input\": {...}} with the op names and input fields of the\n\
vector files (see `tessera-hsm ops`). The answer is {\"output\": {...}} or {\"error\": \"...\"};\n\
a bad line is answered with an error and the batch goes on. With --op NAME, lines without\n\
\"op\" use NAME, so a vector file can be fed as it is.\n\n\
Example:\n  echo '{\"op\":\"session_key_emv_csk\",\"input\":{\"icc_mk\":\"0123456789ABCDEFFEDCBA9876543210\",\"r\":\"001C000000000000\"}}' \\\n    | tessera-hsm batch\n  {\"output\":{\"sk\":\"E9FB384AF807B940FEDCEA613461B0C4\",\"sk_kcv\":\"7DD53C\"}}"
    )]
    Batch {
        /// Op for requests that carry no "op" (e.g. a vector file fed as it is).
        #[arg(long)]
        op: Option<String>,
    },
    /// List the op names `batch` accepts.
    Ops,
    /// Recompute and check an ARQC, and compute the ARPC to answer it.
    #[command(
        after_help = "Example (Mastercard CVN 16, pyemv's HSM-checked case):\n  tessera-hsm verify-arqc --profile mastercard_cvn16 \\\n    --imk-ac 0123456789ABCDEFFEDCBA9876543210 --pan 1234567890123456 --psn 00 \\\n    --terminal-data 00000000999900000000000001248000000000012420990600ABCDEF121800001C \\\n    --card-data A00003220000 --arqc 24CCF3DEE3158C70 --arc 0010\n  ARQC  24CCF3DEE3158C70  valid\n  ARPC  73F6BBF389A6586C\n\n\
--terminal-data is 9F02 9F03 9F1A 95 5F2A 9A 9C 9F37 82 9F36 concatenated (33 bytes).\n\
--card-data is what the profile appends: CVR (Visa 10: 4 bytes; Mastercard: 6), CVR||counters\n\
(Mastercard 17/21), or the full 9F10 (Visa 18/22, Interac). Or give --iad and it is split for you.\n\
Exit status: 0 valid, 1 invalid, 2 bad input."
    )]
    VerifyArqc(VerifyArqc),
    /// Compute (and optionally check) a Mastercard CVC3.
    #[command(
        after_help = "Example (pyemv's HSM-checked case):\n  tessera-hsm cvc3 --imk 01234567899876543210012345678998 --pan 5123456789012345 \\\n    --track-data 5123456789012345D35121010000000000000F --un 00000899 --atc 005E --cvc3 488\n  IVCVC3  11BA\n  CVC3    29488  (rightmost 3 digits 488: valid)"
    )]
    Cvc3(Cvc3Args),
    /// Compute (and optionally check) a Visa dCVV (jPOS layout).
    #[command(
        after_help = "Example:\n  tessera-hsm dcvv --imk 64621A5D54F4EC1A85155483EAAE894A --pan 986657343364614230 --psn 05 \\\n    --expiry 2612 --service-code 201 --atc D6D2\n  dCVV  585"
    )]
    Dcvv(DcvvArgs),
    /// Key check value of a key (DES: 3 bytes; AES: all three conventions).
    #[command(
        after_help = "Example:\n  tessera-hsm kcv --key 0123456789ABCDEFFEDCBA9876543210\n  KCV  08D7B4"
    )]
    Kcv {
        /// The key: hex, or label:NAME.
        #[arg(long)]
        key: String,
        /// tdes or aes.
        #[arg(long, default_value = "tdes")]
        algorithm: String,
    },
    /// Key ceremony: generate, import, export and list the keys of a key
    /// store (TR-31 blocks under the LMK). Each command is audited.
    #[command(
        after_help = "The LMK comes from --lmk-components N (custodians' components, from files or typed; each\n\
KCV shown), --lmk-fd FD, or $TESSERA_LMK. It is never written anywhere.\n\n\
The trail (DATA_DIR/audit) is opened before each step: a step that cannot be recorded is\n\
not taken, and until the store holds the audit keys nothing else runs.\n\n\
Example (two custodians, a new store):\n  \
H=\"tessera-hsm keys --store keys.tr31 --data-dir data --lmk-components 2\"\n  \
$H generate --usage M7 --label audit.mac_key\n  \
LMK component 1 of 2 (64 hex digits): ...\n  \
$H generate --usage S0 --label audit.signing_key\n  \
$H generate --usage E0 --label visa_cvn10.imk_ac --exportable\n  \
$H list"
    )]
    Keys(keys_cmd::KeysArgs),
    /// Time the scalar and the batched (bitsliced) path on the same requests.
    #[command(
        after_help = "Generates COUNT requests for OP (random keys, PANs, ATCs, UNs and cryptograms), runs\n\
them through the scalar path (the des crate, one request at a time) and the batched path\n\
(bitsliced DES, batches of 4096), five rounds each on every core, checks that both gave\n\
the same outcome for every request, and prints the median throughputs and their ratio.\n\
The widest bitslice kernel the CPU has is used; TESSERA_BITSLICE=portable|avx2|avx512 caps it.\n\n\
Ops: cvn_visa_cvn10 cvn_visa_cvn18 cvn_visa_cvn22 cvn_mastercard_cvn16 cvn_mastercard_cvn17\n\
     cvn_mastercard_cvn20 cvn_mastercard_cvn21 cvn_interac_cvn133 cvc3 dcvv cvv\n\n\
Example:\n  tessera-hsm bench --op cvn_mastercard_cvn16 --count 200000 --json"
    )]
    Bench {
        /// What to verify (see below).
        #[arg(long)]
        op: String,
        /// Requests per round.
        #[arg(long, default_value_t = 200_000)]
        count: usize,
        /// Threads per path (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// One JSON object: {"op","count","scalar_per_s","batched_per_s","ratio",...}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct CardArgs {
    /// Card number.
    #[arg(long)]
    pan: String,
    /// PAN sequence number (tag 5F34).
    #[arg(long, default_value = "00")]
    psn: String,
}

#[derive(Args)]
struct VerifyArqc {
    /// visa_cvn10, visa_cvn18, visa_cvn22, mastercard_cvn16, mastercard_cvn17,
    /// mastercard_cvn20, mastercard_cvn21 or interac_cvn133.
    #[arg(long)]
    profile: String,
    /// Issuer master key for AC (hex or label:NAME).
    #[arg(long)]
    imk_ac: String,
    #[command(flatten)]
    card: CardArgs,
    /// The ten terminal tags concatenated, 33 bytes hex.
    #[arg(long)]
    terminal_data: String,
    /// Card data the profile appends (hex); or use --iad.
    #[arg(long, conflicts_with = "iad")]
    card_data: Option<String>,
    /// Issuer application data (tag 9F10), split per profile.
    #[arg(long)]
    iad: Option<String>,
    /// The ARQC received (tag 9F26).
    #[arg(long)]
    arqc: String,
    /// Authorisation response code for ARPC method 1 (2 bytes hex).
    #[arg(long, default_value = "0000")]
    arc: String,
    /// Card status update for ARPC method 2 (4 bytes hex).
    #[arg(long, default_value = "00000000")]
    csu: String,
}

#[derive(Args)]
struct Cvc3Args {
    /// Issuer master key for CVC3 (hex or label:NAME).
    #[arg(long)]
    imk: String,
    #[command(flatten)]
    card: CardArgs,
    /// Static track data as personalised (hex): track 2 as BCD nibbles, or track 1 as ASCII bytes.
    #[arg(long)]
    track_data: String,
    /// Unpredictable number (tag 9F6A), 4 bytes hex.
    #[arg(long)]
    un: String,
    /// ATC, 2 bytes hex.
    #[arg(long)]
    atc: String,
    /// Card key derivation: A or B.
    #[arg(long, default_value = "A")]
    option: String,
    /// Received CVC3 digits to check (rightmost 1-5 digits).
    #[arg(long)]
    cvc3: Option<String>,
}

#[derive(Args)]
struct DcvvArgs {
    /// Issuer master key for dCVV (hex or label:NAME).
    #[arg(long)]
    imk: String,
    #[command(flatten)]
    card: CardArgs,
    /// Expiry, YYMM.
    #[arg(long)]
    expiry: String,
    /// Service code, 3 digits.
    #[arg(long)]
    service_code: String,
    /// ATC, 2 bytes hex.
    #[arg(long)]
    atc: String,
    /// Received dCVV to check.
    #[arg(long)]
    dcvv: Option<String>,
}

/// A command-line failure: message for stderr, exit status 2.
struct Fail(String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Fail(msg)) => {
            eprintln!("tessera-hsm: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Fail> {
    let keys = cli.keys.as_deref().map(KeyStore::load).transpose()?;
    let keys = keys.as_ref();
    match cli.command {
        Command::Batch { op } => {
            if let Some(op) = &op {
                if !hsm_sim::jsonl::OP_NAMES.contains(&op.as_str()) {
                    return Err(Fail(format!(
                        "--op: unknown op \"{op}\" (see `tessera-hsm ops`)"
                    )));
                }
            }
            let stdin = BufReader::with_capacity(1 << 16, io::stdin().lock());
            let stdout = BufWriter::with_capacity(1 << 16, io::stdout().lock());
            hsm_sim::jsonl::run_stream(stdin, stdout, keys, op.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(k) => {
            print!("{}", keys_cmd::run(&k).map_err(Fail)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ops => {
            for op in hsm_sim::jsonl::OP_NAMES {
                println!("{op}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            op,
            count,
            threads,
            json,
        } => {
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            let r = hsm_sim::bench::run(&op, count, threads).map_err(Fail)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&r).map_err(|e| Fail(e.to_string()))?
                );
            } else {
                println!(
                    "op       {}  ({} requests, {} threads, kernel {})",
                    r.op, r.count, r.threads, r.kernel
                );
                println!("scalar   {:>12.0} /s", r.scalar_per_s);
                println!("batched  {:>12.0} /s", r.batched_per_s);
                println!("ratio    {:>12.1}x", r.ratio);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::VerifyArqc(a) => verify_arqc(&a, keys),
        Command::Cvc3(a) => cvc3_cmd(&a, keys),
        Command::Dcvv(a) => dcvv_cmd(&a, keys),
        Command::Kcv { key, algorithm } => {
            let bytes = key_bytes(&key, "--key", keys)?;
            match algorithm.as_str() {
                "tdes" | "des" => {
                    println!(
                        "KCV  {}",
                        hex::encode_upper(des_kcv(&TdesKey::new(&bytes)?, 3))
                    );
                }
                "aes" => {
                    let k = AesKey::new(&bytes)?;
                    for (name, conv, n) in [
                        ("CMAC (X9.24/TR-31)", AesKcvConvention::Cmac, 5),
                        ("GP SCP03 (ECB of 01..)", AesKcvConvention::GpOnes, 3),
                        ("legacy (ECB of 00..)", AesKcvConvention::EcbZero, 3),
                    ] {
                        println!("KCV {name:<24} {}", hex::encode_upper(aes_kcv(&k, conv, n)));
                    }
                }
                other => {
                    return Err(Fail(format!(
                        "--algorithm must be tdes or aes, not {other}"
                    )))
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Hex, or `label:NAME` from the key file. Errors never echo the value.
fn key_bytes(
    value: &str,
    flag: &str,
    keys: Option<&KeyStore>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Fail> {
    if let Some(label) = value.strip_prefix("label:") {
        let store =
            keys.ok_or_else(|| Fail(format!("{flag} names a label but no --keys FILE was given")))?;
        let k = store.get(label).ok_or_else(|| {
            Fail(format!(
                "{flag}: no key labelled \"{label}\" in the key file"
            ))
        })?;
        return Ok(zeroize::Zeroizing::new(k.expose_bytes().to_vec()));
    }
    hex::decode(value)
        .map(zeroize::Zeroizing::new)
        .map_err(|_| Fail(format!("{flag} must be hex or label:NAME")))
}

fn hex_arg<const N: usize>(value: &str, flag: &str) -> Result<[u8; N], Fail> {
    let v = hex::decode(value).map_err(|_| Fail(format!("{flag} must be hex")))?;
    let len = v.len();
    v.try_into().map_err(|_| {
        Fail(format!(
            "{flag} must be {N} bytes ({} hex digits), got {len}",
            N * 2
        ))
    })
}

fn card(a: &CardArgs) -> Result<(Pan, Psn), Fail> {
    Ok((Pan::new(&a.pan)?, Psn::new(&a.psn)?))
}

fn verdict(ok: bool) -> (&'static str, ExitCode) {
    if ok {
        ("valid", ExitCode::SUCCESS)
    } else {
        ("INVALID", ExitCode::from(1))
    }
}

fn verify_arqc(a: &VerifyArqc, keys: Option<&KeyStore>) -> Result<ExitCode, Fail> {
    let profile = CvnProfile::from_name(&a.profile).ok_or_else(|| {
        let names: Vec<&str> = CvnProfile::ALL.iter().map(|p| p.name()).collect();
        Fail(format!("--profile must be one of {}", names.join(", ")))
    })?;
    let imk = TdesKey::new_double("--imk-ac", &key_bytes(&a.imk_ac, "--imk-ac", keys)?)?;
    let (pan, psn) = card(&a.card)?;
    let t: [u8; TerminalData::LEN] = hex_arg(&a.terminal_data, "--terminal-data")?;
    let terminal = TerminalData {
        amount_authorised: t[0..6].try_into()?,
        amount_other: t[6..12].try_into()?,
        terminal_country: t[12..14].try_into()?,
        tvr: t[14..19].try_into()?,
        currency: t[19..21].try_into()?,
        date: t[21..24].try_into()?,
        txn_type: t[24],
        un: t[25..29].try_into()?,
        aip: t[29..31].try_into()?,
        atc: t[31..33].try_into()?,
    };
    let card_data = match (&a.card_data, &a.iad) {
        (Some(cd), _) => hex::decode(cd).map_err(|_| Fail("--card-data must be hex".into()))?,
        (None, Some(iad)) => profile
            .card_data_from_iad(&hex::decode(iad).map_err(|_| Fail("--iad must be hex".into()))?)?,
        (None, None) => return Err(Fail("give --card-data or --iad".into())),
    };
    let received: [u8; 8] = hex_arg(&a.arqc, "--arqc")?;
    let mk = derive_icc_mk(profile.mk_derivation(), &imk, &pan, psn);
    let computed = profile.generate_ac(&mk, &terminal, &card_data)?;
    let (word, code) = verdict(hsm_sim::primitives::ct::ct_eq(&computed, &received));
    println!("ARQC  {}  {word}", hex::encode_upper(received));
    if code != ExitCode::SUCCESS {
        // The computed value is what a card with these keys would have
        // sent: the first thing to compare when a transaction is declined.
        println!(
            "      {}  computed for PAN {} PSN {}",
            hex::encode_upper(computed),
            pan.masked(),
            psn.as_str()
        );
        return Ok(code);
    }
    let arpc_input = if profile.arpc_method() == 2 {
        ArpcInput::Method2 {
            csu: hex_arg(&a.csu, "--csu")?,
            prop_auth_data: Vec::new(),
        }
    } else {
        ArpcInput::Method1 {
            arc: hex_arg(&a.arc, "--arc")?,
        }
    };
    let arpc = profile.generate_arpc(&mk, &terminal, &received, &arpc_input)?;
    println!("ARPC  {}", hex::encode_upper(arpc));
    Ok(code)
}

fn cvc3_cmd(a: &Cvc3Args, keys: Option<&KeyStore>) -> Result<ExitCode, Fail> {
    let imk = TdesKey::new_double("--imk", &key_bytes(&a.imk, "--imk", keys)?)?;
    let (pan, psn) = card(&a.card)?;
    let method = match a.option.as_str() {
        "A" | "a" => MkDerivation::OptionA,
        "B" | "b" => MkDerivation::OptionB,
        _ => return Err(Fail("--option must be A or B".into())),
    };
    let track = hex::decode(&a.track_data).map_err(|_| Fail("--track-data must be hex".into()))?;
    let atc = Atc::from_bytes(hex_arg(&a.atc, "--atc")?);
    let un = hex_arg(&a.un, "--un")?;
    let (iv, code) = cvc3::cvc3(&imk, method, &pan, psn, &track, un, atc)?;
    println!("IVCVC3  {}", hex::encode_upper(iv));
    let code_str = String::from_utf8_lossy(&code).into_owned();
    let Some(received) = &a.cvc3 else {
        println!("CVC3    {code_str}");
        return Ok(ExitCode::SUCCESS);
    };
    let kd = derive_icc_mk(method, &imk, &pan, psn);
    let ok = cvc3::verify_cvc3(&kd, iv, un, atc, received.as_bytes())?;
    let (word, exit) = verdict(ok);
    println!(
        "CVC3    {code_str}  (rightmost {} digits {received}: {word})",
        received.len()
    );
    Ok(exit)
}

fn dcvv_cmd(a: &DcvvArgs, keys: Option<&KeyStore>) -> Result<ExitCode, Fail> {
    let imk = TdesKey::new_double("--imk", &key_bytes(&a.imk, "--imk", keys)?)?;
    let (pan, psn) = card(&a.card)?;
    let expiry = Expiry::new(&a.expiry)?;
    let sc = ServiceCode::new(&a.service_code)?;
    let atc = Atc::from_bytes(hex_arg(&a.atc, "--atc")?);
    let v = dcvv::dcvv(&imk, &pan, psn, expiry, sc, atc)?;
    let v_str = String::from_utf8_lossy(&v).into_owned();
    match &a.dcvv {
        None => {
            println!("dCVV  {v_str}");
            Ok(ExitCode::SUCCESS)
        }
        Some(received) => {
            let (word, exit) = verdict(dcvv::verify_dcvv(
                &imk,
                &pan,
                psn,
                expiry,
                sc,
                atc,
                received.as_bytes(),
            )?);
            println!("dCVV  {received}  {word}");
            Ok(exit)
        }
    }
}
