//! Every case of every vector file through the library's request layer
//! (`hsm_sim::jsonl::run_request`, which parses the input into the typed
//! API and calls it). The CLI gets the same files in `tests/cli.rs`.
//!
//! An answer passes when every field of the vector's `output` is present
//! with exactly the expected value (extra output fields are allowed).

use std::path::PathBuf;

use serde_json::{json, Value};

fn vector_path(op: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(format!("{op}.jsonl"))
}

/// Run every line of `op`'s vector file; panic listing every failing id.
fn check_op(op: &str) {
    let text = std::fs::read_to_string(vector_path(op)).expect("vector file");
    let mut failures = Vec::new();
    let mut cases = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).expect("vector line is JSON");
        cases += 1;
        let id = case["id"].as_str().unwrap_or("?").to_owned();
        let request = json!({ "op": op, "input": case["input"] });
        match hsm_sim::jsonl::run_request(&request, None) {
            Err(e) => failures.push(format!("{id}: error {e}")),
            Ok(out) => {
                for (field, want) in case["output"].as_object().expect("output object") {
                    if out.get(field) != Some(want) {
                        failures.push(format!("{id}: {field} = {:?}, want {want}", out.get(field)));
                    }
                }
            }
        }
    }
    assert!(cases > 0, "{op}: no cases");
    assert!(
        failures.is_empty(),
        "{op}: {} of {cases} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

macro_rules! vector_tests {
    ($($op:ident),* $(,)?) => {$(
        #[test]
        fn $op() {
            check_op(stringify!($op));
        }
    )*};
}

vector_tests!(
    aes_cmac,
    arpc_method1,
    arpc_method2,
    arqc_generic,
    cps_kdc,
    cvc3,
    cvn_interac_cvn133,
    cvn_mastercard_cvn16,
    cvn_mastercard_cvn17,
    cvn_mastercard_cvn20,
    cvn_mastercard_cvn21,
    cvn_visa_cvn10,
    cvn_visa_cvn18,
    cvn_visa_cvn22,
    cvv,
    dcvv,
    icc_mk_option_a,
    icc_mk_option_b,
    kcv,
    mac_iso9797_1_alg1,
    mac_iso9797_1_alg3,
    scp02,
    scp02_challenge,
    scp03,
    session_key_emv2000_tree,
    session_key_emv_csk,
    session_key_mastercard_skd,
    session_key_visa_sm,
    tr31,
);

/// The op table and the vector folder agree: every file has an op and a
/// test above, every op has a file.
#[test]
fn every_vector_file_is_an_op() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("vectors dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".jsonl").map(str::to_owned)
        })
        .collect();
    files.sort();
    let mut ops: Vec<&str> = hsm_sim::jsonl::OP_NAMES.to_vec();
    ops.sort_unstable();
    assert_eq!(files, ops);
}
