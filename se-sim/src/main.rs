//! `tessera-se`: a GlobalPlatform secure element in software.
//!
//! `init` makes a blank card, `apdu` drives it with hex command APDUs on
//! standard input, `vpcd` connects it to a PC/SC reader through
//! vsmartcard's virtual reader driver, `show` prints it.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hsm_sim::perso::cps::{derive_kdc_set, CpsMethod};
use hsm_sim::TdesKey;
use tessera_se::state::{KeyBytes, Scp};
use tessera_se::vpcd::{self, VirtualCard};
use tessera_se::{ids, store, Card, CardConfig};

#[derive(Parser, Debug)]
#[command(
    name = "tessera-se",
    version,
    about = "A GlobalPlatform secure element in software (SCP02/SCP03, EMV payment application)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a blank card in OP_READY: the ISD with one key set, the SSD
    /// package and the payment package.
    Init {
        /// Where the card's state is kept (written 0600: it holds keys).
        #[arg(long)]
        state: PathBuf,
        /// Secure channel protocol: 02 (TDES) or 03 (AES).
        #[arg(long, default_value = "02", value_parser = ["02", "03"])]
        scp: String,
        /// The i parameter, hex (SCP02: 15 or 55; SCP03: 00, 10 or 70).
        /// Default: 55 for SCP02, 70 for SCP03.
        #[arg(long = "i")]
        i_param: Option<String>,
        /// ISD keys ENC,MAC,DEK in hex. Default: the GlobalPlatform test
        /// key 404142..4F for all three (a test card only).
        #[arg(long, conflicts_with = "isd_kmc")]
        isd_keys: Option<String>,
        /// Derive the ISD keys from this master key (EMV CPS KMC -> KDC,
        /// SCP02 only) and the card serial.
        #[arg(long, requires = "diversification")]
        isd_kmc: Option<String>,
        /// The CPS diversification template for --isd-kmc: emv or visa2.
        #[arg(long, value_parser = ["emv", "visa2"])]
        diversification: Option<String>,
        /// ISD key version number, hex.
        #[arg(long, default_value = "20")]
        kvn: String,
        /// Card serial (KDD), 10 bytes hex. Default: derived from the seed.
        #[arg(long)]
        serial: Option<String>,
        /// Seed of the card's random source (challenges). Default: random.
        #[arg(long)]
        seed: Option<u64>,
        /// Append the card's stock line (device id, serial, SCP, i, KVN and
        /// the ISD keys in clear) to FILE (created 0600), for `tessera
        /// devices import`, which seals the keys at rest.
        #[arg(long, value_name = "FILE")]
        card_stock_out: Option<PathBuf>,
        /// The device id in the stock line. Default: se-SERIAL.
        #[arg(long, requires = "card_stock_out")]
        device_id: Option<String>,
    },
    /// Send command APDUs, hex, one per line on standard input; write each
    /// response (data then SW1 SW2) as hex on its own line. The state is
    /// saved after every command. Empty lines and lines starting with `#`
    /// are skipped; any other line that is not an APDU gets 6700.
    Apdu {
        /// The card's state file.
        #[arg(long)]
        state: PathBuf,
        /// Write why the card refused a command to standard error.
        #[arg(long)]
        explain: bool,
    },
    /// Connect to vsmartcard's vpcd (loaded by pcscd) as the card in its
    /// virtual reader: PC/SC programs (pcsc_scan, pyscard, OpenSC,
    /// GlobalPlatformPro) then see this card.
    Vpcd {
        /// The card's state file.
        #[arg(long)]
        state: PathBuf,
        /// Where vpcd listens.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// vpcd's port.
        #[arg(long, default_value_t = vpcd::DEFAULT_PORT)]
        port: u16,
        /// Keep trying to connect for this many seconds (pcscd may still
        /// be starting).
        #[arg(long, default_value_t = 10)]
        connect_timeout: u64,
    },
    /// Print the card: life cycle, security domains, key versions with
    /// their KCVs (never the keys), applications with their token
    /// (masked), profile and ATC.
    Show {
        /// The card's state file.
        #[arg(long)]
        state: PathBuf,
    },
}

/// Errors for people: what failed and what to do.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Init(#[from] tessera_se::InitError),
    #[error("vpcd: {0}")]
    Vpcd(#[from] vpcd::VpcdError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-se: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Init {
            state,
            scp,
            i_param,
            isd_keys,
            isd_kmc,
            diversification,
            kvn,
            serial,
            seed,
            card_stock_out,
            device_id,
        } => init(
            &state,
            &scp,
            i_param,
            isd_keys,
            isd_kmc,
            diversification,
            &kvn,
            serial,
            seed,
            card_stock_out.as_deref().map(|f| (f, device_id)),
        ),
        Command::Apdu { state, explain } => apdu(&state, explain),
        Command::Vpcd {
            state,
            host,
            port,
            connect_timeout,
        } => serve_vpcd(&state, &host, port, connect_timeout),
        Command::Show { state } => {
            print!("{}", tessera_se::show::render(&store::load(&state)?));
            Ok(())
        }
    }
}

fn hex_arg(what: &str, s: &str) -> Result<Vec<u8>, CliError> {
    hex::decode(s.trim()).map_err(|_| CliError::Usage(format!("{what} is not hex")))
}

fn byte_arg(what: &str, s: &str) -> Result<u8, CliError> {
    let s = s.trim().trim_start_matches("0x");
    u8::from_str_radix(s, 16)
        .map_err(|_| CliError::Usage(format!("{what} is one byte in hex, e.g. 20")))
}

#[allow(clippy::too_many_arguments)]
fn init(
    path: &Path,
    scp: &str,
    i_param: Option<String>,
    isd_keys: Option<String>,
    isd_kmc: Option<String>,
    diversification: Option<String>,
    kvn: &str,
    serial: Option<String>,
    seed: Option<u64>,
    stock: Option<(&Path, Option<String>)>,
) -> Result<(), CliError> {
    if path.exists() {
        return Err(CliError::Usage(format!(
            "{} exists: a card is not created twice",
            path.display()
        )));
    }
    let scp = if scp == "03" { Scp::Scp03 } else { Scp::Scp02 };
    let i_param = match i_param {
        Some(s) => byte_arg("--i", &s)?,
        None if scp == Scp::Scp02 => 0x55,
        None => 0x70,
    };
    let seed = match seed {
        Some(s) => s,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b)
                .map_err(|e| CliError::Usage(format!("no OS randomness: {e}")))?;
            u64::from_be_bytes(b)
        }
    };
    let serial: [u8; 10] = match serial {
        Some(s) => hex_arg("--serial", &s)?
            .try_into()
            .map_err(|_| CliError::Usage("--serial is 10 bytes (20 hex digits)".into()))?,
        None => {
            let mut s = [0u8; 10];
            s[..2].copy_from_slice(&[0x54, 0x53]);
            s[2..].copy_from_slice(&seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            s
        }
    };
    let keys: [KeyBytes; 3] = if let Some(kmc) = isd_kmc {
        if scp != Scp::Scp02 {
            return Err(CliError::Usage(
                "--isd-kmc derives TDES keys: SCP02 only".into(),
            ));
        }
        let kmc = zeroize::Zeroizing::new(hex_arg("--isd-kmc", &kmc)?);
        let kmc =
            TdesKey::new(&kmc).map_err(|_| CliError::Usage("--isd-kmc is a 16-byte key".into()))?;
        let method = if diversification.as_deref() == Some("visa2") {
            CpsMethod::Visa2
        } else {
            CpsMethod::Emv
        };
        let set =
            derive_kdc_set(&kmc, &serial, method).map_err(|e| CliError::Usage(e.to_string()))?;
        [
            KeyBytes::new(set.enc.expose_bytes()),
            KeyBytes::new(set.mac.expose_bytes()),
            KeyBytes::new(set.dek.expose_bytes()),
        ]
    } else if let Some(list) = isd_keys {
        let list = zeroize::Zeroizing::new(list);
        let parts: Vec<&str> = list.split(',').collect();
        if parts.len() != 3 {
            return Err(CliError::Usage("--isd-keys is ENC,MAC,DEK".into()));
        }
        let k =
            |s: &str| hex_arg("--isd-keys", s).map(|b| KeyBytes::new(&zeroize::Zeroizing::new(b)));
        [k(parts[0])?, k(parts[1])?, k(parts[2])?]
    } else {
        let k = KeyBytes::new(&ids::GP_TEST_KEY);
        [k.clone(), k.clone(), k]
    };
    let kvn = byte_arg("--kvn", kvn)?;
    let stock_line = stock.map(|(file, id)| {
        let id = id.unwrap_or_else(|| format!("se-{}", hex::encode_upper(serial)));
        let line = zeroize::Zeroizing::new(format!(
            "{}\n",
            serde_json::json!({
                "device_id": id,
                "se_serial": hex::encode_upper(serial),
                "scp": if scp == Scp::Scp03 { "03" } else { "02" },
                "i": i_param,
                "kvn": kvn,
                "isd_keys": {
                    "enc": hex::encode_upper(keys[0].expose()),
                    "mac": hex::encode_upper(keys[1].expose()),
                    "dek": hex::encode_upper(keys[2].expose()),
                },
            })
        ));
        (file, line)
    });
    let card = Card::new(CardConfig {
        scp,
        i_param,
        isd_keys: keys,
        kvn,
        serial,
        seed,
    })?;
    store::save(path, card.state())?;
    if let Some((file, line)) = stock_line {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(file)
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    }
    eprintln!(
        "tessera-se: card {} created in {}",
        hex::encode_upper(serial),
        path.display()
    );
    Ok(())
}

/// The largest line `apdu` reads: a short APDU is at most 261 bytes.
const MAX_LINE: usize = 1024;

fn apdu(path: &Path, explain: bool) -> Result<(), CliError> {
    let mut card = Card::from_state(store::load(path)?);
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut line = Vec::with_capacity(MAX_LINE);
    loop {
        line.clear();
        // Bounded read: a line longer than any APDU is read to its end but
        // not kept.
        let n = Read::by_ref(&mut input)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && n == MAX_LINE {
            let mut skip = Vec::new();
            input.read_until(b'\n', &mut skip)?;
            writeln!(out, "6700")?;
            out.flush()?;
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let response = match hex::decode(&compact) {
            Ok(apdu) => {
                let r = card.process(&apdu);
                store::save(path, card.state())?;
                if explain {
                    if let Some(why) = card.last_refusal() {
                        eprintln!("{:04X}: {}", why.sw, why.reason);
                    }
                }
                r.to_bytes()
            }
            Err(_) => vec![0x67, 0x00],
        };
        writeln!(out, "{}", hex::encode_upper(response))?;
        out.flush()?;
    }
}

/// The card in vpcd's reader: saves its state after every command.
struct SavedCard<'a> {
    card: Card,
    path: &'a Path,
    save_error: Option<store::StoreError>,
}

impl VirtualCard for SavedCard<'_> {
    fn atr(&self) -> Vec<u8> {
        vpcd::DEFAULT_ATR.to_vec()
    }
    fn power_on(&mut self) {
        self.card.power_cycle();
    }
    fn power_off(&mut self) {
        self.card.power_cycle();
    }
    fn reset(&mut self) {
        self.card.power_cycle();
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        if self.save_error.is_some() {
            return vec![0x6F, 0x00];
        }
        let r = self.card.process(apdu);
        if let Err(e) = store::save(self.path, self.card.state()) {
            // Nothing acknowledged may be lost: without its state saved the
            // card answers no more.
            self.save_error = Some(e);
            return vec![0x6F, 0x00];
        }
        r.to_bytes()
    }
}

fn serve_vpcd(path: &Path, host: &str, port: u16, timeout: u64) -> Result<(), CliError> {
    let card = Card::from_state(store::load(path)?);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let mut stream = loop {
        match std::net::TcpStream::connect((host, port)) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => {
                return Err(CliError::Usage(format!(
                    "cannot reach vpcd at {host}:{port} ({e}); is pcscd running with vsmartcard-vpcd installed?"
                )))
            }
        }
    };
    stream.set_nodelay(true)?;
    eprintln!("tessera-se: card in vpcd's reader at {host}:{port}");
    let mut saved = SavedCard {
        card,
        path,
        save_error: None,
    };
    let result = vpcd::serve(&mut stream, &mut saved);
    if let Some(e) = saved.save_error {
        return Err(e.into());
    }
    result.map_err(Into::into)
}
