//! Ops for personalisation: EMV CPS, SCP02, SCP03.
//!
//! Each op answers every output its inputs determine: the SCP02 `encrypted_key`
//! only when `key_to_encrypt_with_s_dek` is given, the SCP03 `r_macs` only
//! when `responses` are. Inputs that say the same thing twice must agree:
//! an SCP03 card challenge that is given, recomputed from
//! `pseudo_random_challenge` + `sequence_counter` + `sd_aid`, or read from
//! `init_update_response` is refused if two of them differ, and the card
//! cryptogram in `init_update_response` must verify (the channel would
//! otherwise be opened to a card that does not hold the keys). Those errors
//! never show the value the simulator computed: it is derived from the keys.

use serde_json::{json, Map, Value};

use crate::jsonl::error::{BatchError, InField};
use crate::jsonl::input::hex_upper;
use crate::jsonl::input::Input;
use crate::perso::cps::{derive_kdc_set, odd_parity, CpsMethod};
use crate::perso::scp02::{Scp02Options, Scp02Session};
use crate::perso::scp03::{pseudo_random_card_challenge, InitUpdateResponse, Scp03Session};
use crate::perso::{SecurityLevel, StaticKeys};
use crate::primitives::ct::ct_eq;
use crate::primitives::kcv::des_kcv;

/// The SCP02 pseudo-random card challenge (i bit `40`).
pub fn scp02_challenge(i: &Input) -> Result<Value, BatchError> {
    let key_mac = i.tdes2_key("key_mac")?;
    let ssc = i.hex_n::<2>("sequence_counter")?;
    let aid = i.hex("sd_aid")?;
    let challenge = crate::perso::scp02::pseudo_random_card_challenge(&key_mac, ssc, &aid)
        .in_field("sd_aid")?;
    Ok(json!({ "card_challenge": hex_upper(challenge) }))
}

pub fn cps_kdc(i: &Input) -> Result<Value, BatchError> {
    let kmc = i.tdes2_key("kmc")?;
    let kdd = i.hex_n::<10>("kdd")?;
    let method: CpsMethod = i.str("method")?.parse().in_field("method")?;
    let set = derive_kdc_set(&kmc, &kdd, method).in_field("kmc")?;
    let mut out = Map::new();
    for (name, key) in [
        ("kd_enc", &set.enc),
        ("kd_mac", &set.mac),
        ("kd_dek", &set.dek),
    ] {
        out.insert(name.to_owned(), hex_upper(key.expose_bytes()).into());
        out.insert(format!("{name}_kcv"), hex_upper(des_kcv(key, 3)).into());
        out.insert(
            format!("{name}_parity_adjusted"),
            hex_upper(odd_parity(key).expose_bytes()).into(),
        );
    }
    Ok(Value::Object(out))
}

fn security_level(i: &Input) -> Result<SecurityLevel, BatchError> {
    SecurityLevel::from_byte(i.hex_n::<1>("security_level")?[0]).in_field("security_level")
}

pub fn scp02(i: &Input) -> Result<Value, BatchError> {
    let keys = StaticKeys {
        enc: i.tdes2_key("key_enc")?,
        mac: i.tdes2_key("key_mac")?,
        dek: i.tdes2_key("key_dek")?,
    };
    let options = Scp02Options::from_i_param(i.hex_n::<1>("i_param")?[0]).in_field("i_param")?;
    let mut session = Scp02Session::new(
        &keys,
        options,
        security_level(i)?,
        i.hex_n("sequence_counter")?,
        i.hex_n("host_challenge")?,
        i.hex_n("card_challenge")?,
    )
    .in_field("security_level")?;
    let wrapped = i
        .hex_list("commands")?
        .iter()
        .map(|c| session.wrap_command(c).map(hex_upper))
        .collect::<Result<Vec<_>, _>>()
        .in_field("commands")?;
    let mut out = json!({
        "card_cryptogram": hex_upper(session.card_cryptogram()),
        "host_cryptogram": hex_upper(session.host_cryptogram()),
        "external_authenticate": hex_upper(session.external_authenticate()),
        "wrapped_commands": wrapped,
    });
    if i.has("key_to_encrypt_with_s_dek") {
        let key = i.tdes_key("key_to_encrypt_with_s_dek")?;
        let enc = session
            .encrypt_key(&key)
            .in_field("key_to_encrypt_with_s_dek")?;
        out["encrypted_key"] = hex_upper(enc).into();
    }
    Ok(out)
}

/// The SCP03 card challenge from every input that determines it, checked
/// for agreement.
fn scp03_card_challenge(
    i: &Input,
    key_enc: &crate::AesKey,
    iur: Option<&InitUpdateResponse>,
) -> Result<[u8; 8], BatchError> {
    let given = i
        .has("card_challenge")
        .then(|| i.hex_n::<8>("card_challenge"))
        .transpose()?;
    let given_ssc = i
        .has("sequence_counter")
        .then(|| i.hex_n::<3>("sequence_counter"))
        .transpose()?;
    if let (Some(iur), Some(c)) = (iur, given) {
        if iur.card_challenge != c {
            return Err(BatchError::value(
                "card_challenge",
                "differs from the card challenge in init_update_response",
            ));
        }
    }
    if let (Some(iur_ssc), Some(ssc)) = (iur.and_then(|r| r.sequence_counter), given_ssc) {
        if iur_ssc != ssc {
            return Err(BatchError::value(
                "sequence_counter",
                "differs from the sequence counter in init_update_response",
            ));
        }
    }
    let mut challenge = given.or(iur.map(|r| r.card_challenge));
    if i.flag("pseudo_random_challenge")? {
        if iur.is_some_and(|r| !r.pseudo_random_challenge()) {
            return Err(BatchError::value(
                "pseudo_random_challenge",
                "the i parameter in init_update_response says the card challenge is random",
            ));
        }
        let ssc = given_ssc
            .or(iur.and_then(|r| r.sequence_counter))
            .ok_or(BatchError::Missing("sequence_counter"))?;
        let computed =
            pseudo_random_card_challenge(key_enc, ssc, &i.hex("sd_aid")?).in_field("sd_aid")?;
        match challenge {
            // Derived from Key-ENC: compared in constant time, like a
            // cryptogram, and never echoed.
            Some(c) if !ct_eq(&c, &computed) => {
                return Err(BatchError::value(
                    "card_challenge",
                    "is not the pseudo-random challenge of key_enc, sequence_counter and sd_aid",
                ))
            }
            _ => challenge = Some(computed),
        }
    }
    challenge.ok_or(BatchError::Missing("card_challenge"))
}

pub fn scp03(i: &Input) -> Result<Value, BatchError> {
    let keys = StaticKeys {
        enc: i.aes_key("key_enc")?,
        mac: i.aes_key("key_mac")?,
        dek: i.aes_key("key_dek")?,
    };
    let level = security_level(i)?;
    let iur = i
        .opt_hex("init_update_response")?
        .map(|b| InitUpdateResponse::parse(&b))
        .transpose()
        .in_field("init_update_response")?;
    if iur.as_ref().is_some_and(|r| !r.supports(level)) {
        return Err(BatchError::value(
            "security_level",
            "asks for R-MAC or R-ENC, which the i parameter in init_update_response does not support",
        ));
    }
    let card_challenge = scp03_card_challenge(i, &keys.enc, iur.as_ref())?;
    let mut session = Scp03Session::new(&keys, level, i.hex_n("host_challenge")?, card_challenge)
        .in_field("key_enc")?;
    if let Some(r) = &iur {
        if !session.verify_card_cryptogram(&r.card_cryptogram) {
            return Err(BatchError::value(
                "init_update_response",
                "the card cryptogram does not verify with these keys and challenges",
            ));
        }
    }

    let commands = i.hex_list("commands")?;
    let responses = i.object_list("responses")?;
    if i.has("responses") {
        if !level.r_mac() {
            return Err(BatchError::value(
                "responses",
                format!("security level {:02X} has no R-MAC", level.to_byte()),
            ));
        }
        if responses.len() != commands.len() {
            return Err(BatchError::value(
                "responses",
                format!(
                    "{} responses for {} commands (one per command)",
                    responses.len(),
                    commands.len()
                ),
            ));
        }
    }
    let mut wrapped = Vec::with_capacity(commands.len());
    let mut r_macs = Vec::with_capacity(responses.len());
    for (n, cmd) in commands.iter().enumerate() {
        wrapped.push(hex_upper(session.wrap_command(cmd).in_field("commands")?));
        if let Some(r) = responses.get(n) {
            let data = r.opt_hex("response_data")?.unwrap_or_default();
            let sw = r.hex_n::<2>("sw")?;
            // An error status word carries no R-MAC: answered as null.
            let mac = session.response_mac(&data, sw).in_field("responses")?;
            r_macs.push(mac.map_or(Value::Null, |m| hex_upper(m).into()));
        }
    }
    let mut out = json!({
        "card_cryptogram": hex_upper(session.card_cryptogram()),
        "host_cryptogram": hex_upper(session.host_cryptogram()),
        "external_authenticate": hex_upper(session.external_authenticate()),
        "wrapped_commands": wrapped,
    });
    if i.has("responses") {
        out["r_macs"] = Value::Array(r_macs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::jsonl::{run_request, BatchError};

    /// scp03 vector `rnd-4` (AES-192, pseudo-random challenge, R-MAC).
    fn rnd4() -> Value {
        json!({
            "key_enc": "D7FF96395AF3BCBA225155F5C281FF6CE6AC3E30EB0FC9A5",
            "key_mac": "5A40BF1358BBDC36C11C9275016AABCE71ECD827FA9B543F",
            "key_dek": "5C97F7CAF7FB7EB2B9A57E1F41DB8C47E90297137A0A7122",
            "host_challenge": "87F7F0272EFCEA8E",
            "card_challenge": "16586F45A401ABC9",
            "security_level": "11",
            "commands": ["80CA1784"],
            "pseudo_random_challenge": true,
            "sequence_counter": "618857",
            "sd_aid": "A0000001515350",
            "responses": [{"response_data": "C056EE14CC5E", "sw": "9000"}]
        })
    }

    /// pySim `SCP03_Test_AES128_11`: INITIALIZE UPDATE response given.
    fn pub0() -> Value {
        json!({
            "key_enc": "000102030405060708090A0B0C0D0E0F",
            "key_mac": "101112131415161718191A1B1C1D1E1F",
            "key_dek": "202122232425262728292A2B2C2D2E2F",
            "host_challenge": "B13E5F938FC108C4",
            "init_update_response": "000000000000000000003003703EB51047495B249F66C484C1D2EF1948000002",
            "card_challenge": "3EB51047495B249F",
            "security_level": "11",
            "commands": ["80F22002"]
        })
    }

    fn run(op: &str, input: &Value) -> Result<Value, BatchError> {
        run_request(&json!({ "op": op, "input": input }), None)
    }

    fn err_field(r: Result<Value, BatchError>) -> &'static str {
        match r {
            Err(BatchError::Value { field, .. }) | Err(BatchError::Crypto { field, .. }) => field,
            Err(BatchError::Missing(field)) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn scp03_card_challenge_sources_must_agree() {
        let ok = run("scp03", &rnd4()).expect("vector input");
        assert_eq!(ok["r_macs"], json!(["0A09A2D5AB40A5F4"]));

        let mut wrong = rnd4();
        wrong["card_challenge"] = json!("16586F45A401ABC8");
        assert_eq!(err_field(run("scp03", &wrong)), "card_challenge");

        // The challenge is determined without card_challenge.
        let mut derived = rnd4();
        derived
            .as_object_mut()
            .expect("object")
            .remove("card_challenge");
        assert_eq!(
            run("scp03", &derived).expect("derived")["card_cryptogram"],
            ok["card_cryptogram"]
        );

        let mut no_aid = derived.clone();
        no_aid.as_object_mut().expect("object").remove("sd_aid");
        assert_eq!(err_field(run("scp03", &no_aid)), "sd_aid");
    }

    #[test]
    fn scp03_init_update_response_is_checked() {
        assert!(run("scp03", &pub0()).is_ok());

        let mut bad_cryptogram = pub0();
        bad_cryptogram["init_update_response"] =
            json!("000000000000000000003003703EB51047495B249F66C484C1D2EF1949000002");
        let e = run("scp03", &bad_cryptogram).expect_err("cryptogram");
        assert_eq!(err_field(Err(e.clone())), "init_update_response");
        // The error names the problem, not the cryptogram it expected.
        assert!(!e.to_string().contains("66C484C1D2EF1948"));

        let mut other_challenge = pub0();
        other_challenge["card_challenge"] = json!("3EB51047495B249E");
        assert_eq!(err_field(run("scp03", &other_challenge)), "card_challenge");

        let mut other_ssc = pub0();
        other_ssc["sequence_counter"] = json!("000003");
        assert_eq!(err_field(run("scp03", &other_ssc)), "sequence_counter");

        let mut no_challenge = pub0();
        no_challenge
            .as_object_mut()
            .expect("object")
            .remove("card_challenge");
        assert!(run("scp03", &no_challenge).is_ok());
    }

    #[test]
    fn scp03_responses_shape() {
        let mut two = rnd4();
        two["responses"] =
            json!([{"response_data": "", "sw": "9000"}, {"response_data": "", "sw": "9000"}]);
        assert_eq!(err_field(run("scp03", &two)), "responses");

        let mut no_rmac = rnd4();
        no_rmac["security_level"] = json!("03");
        assert_eq!(err_field(run("scp03", &no_rmac)), "responses");

        let mut error_sw = rnd4();
        error_sw["responses"] = json!([{"sw": "6A82"}]);
        assert_eq!(
            run("scp03", &error_sw).expect("ok")["r_macs"],
            json!([null])
        );
    }

    #[test]
    fn scp02_bad_command_names_the_field() {
        let input = json!({
            "key_enc": "404142434445464748494A4B4C4D4E4F",
            "key_mac": "404142434445464748494A4B4C4D4E4F",
            "key_dek": "404142434445464748494A4B4C4D4E4F",
            "i_param": "55",
            "sequence_counter": "0001",
            "host_challenge": "0000000000000000",
            "card_challenge": "000000000000",
            "security_level": "01",
            "commands": ["80F220020A4F02"]
        });
        assert_eq!(err_field(run("scp02", &input)), "commands");
        let mut r_mac = input.clone();
        r_mac["security_level"] = json!("11");
        assert_eq!(err_field(run("scp02", &r_mac)), "security_level");
        let mut i_param = input;
        i_param["i_param"] = json!("0A");
        assert_eq!(err_field(run("scp02", &i_param)), "i_param");
    }
}
