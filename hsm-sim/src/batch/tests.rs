//! The batched path against the scalar one, command by command.

use super::*;
use crate::emv::IssuerMasterKeys;
use crate::magstripe::{cvc3, cvv, dcvv};

/// The shared generator, with the digit strings these tests need.
struct Rng(crate::xorshift::XorShift);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        self.0.bytes()
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
}

/// Owned inputs the borrowed commands point into.
struct Inputs {
    keys: Vec<TdesKey>,
    pans: Vec<Pan>,
    blobs: Vec<Vec<u8>>,
    arpc: Vec<ArpcInput>,
}

fn inputs(rng: &mut Rng, n: usize) -> Inputs {
    Inputs {
        keys: (0..n)
            .map(|i| {
                // One in 50 keys is single length: that command must fail
                // alone, with the same error on both paths.
                if i % 50 == 49 {
                    TdesKey::new(&rng.bytes::<8>()).unwrap()
                } else {
                    TdesKey::double(&rng.bytes::<16>())
                }
            })
            .collect(),
        pans: (0..n)
            .map(|_| {
                let len = 12 + rng.below(8) as usize;
                Pan::new(&rng.digits(len)).unwrap()
            })
            .collect(),
        blobs: (0..n)
            .map(|_| {
                let len = rng.below(40) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            })
            .collect(),
        arpc: (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    ArpcInput::Method1 { arc: rng.bytes() }
                } else {
                    ArpcInput::Method2 {
                        csu: rng.bytes(),
                        prop_auth_data: (0..rng.below(10)).map(|_| rng.next() as u8).collect(),
                    }
                }
            })
            .collect(),
    }
}

fn terminal(rng: &mut Rng) -> TerminalData {
    TerminalData {
        amount_authorised: rng.bytes(),
        amount_other: rng.bytes(),
        terminal_country: rng.bytes(),
        tvr: rng.bytes(),
        currency: rng.bytes(),
        date: rng.bytes(),
        txn_type: rng.next() as u8,
        un: rng.bytes(),
        aip: rng.bytes(),
        atc: rng.bytes(),
    }
}

fn card_data_len(p: CvnProfile, rng: &mut Rng) -> usize {
    use crate::emv::profile::CardDataLayout::*;
    match p.card_data_layout() {
        VisaCvr4 => 4,
        MastercardCvr6 => 6,
        MastercardCvr6Counters8 => 14,
        FullIad => 1 + rng.below(32) as usize,
    }
}

fn commands<'a>(rng: &mut Rng, inp: &'a Inputs, cards: &'a [Vec<u8>]) -> Vec<Command<'a>> {
    let n = inp.keys.len();
    (0..n)
        .map(|i| {
            let key = &inp.keys[i];
            let pan = &inp.pans[i];
            let psn = Psn::new(&rng.digits(2)).unwrap();
            let blob = &inp.blobs[i][..];
            let digits = |rng: &mut Rng, k| rng.digits(k).into_bytes().leak() as &[u8];
            match rng.below(7) {
                0..=2 => {
                    let profile = CvnProfile::ALL[rng.below(8) as usize];
                    let terminal = terminal(rng);
                    let card_data = &cards[i][..];
                    // Half the ARQCs are the card's own (valid), half random.
                    let arqc = if rng.below(2) == 0
                        && key.len() == 16
                        && profile.check_card_data(card_data).is_ok()
                    {
                        let imk = IssuerMasterKeys {
                            ac: key.clone(),
                            smi: key.clone(),
                            smc: key.clone(),
                        };
                        let card = profile.derive_card_keys(&imk, pan, psn);
                        profile.generate_ac(&card.ac, &terminal, card_data).unwrap()
                    } else {
                        rng.bytes()
                    };
                    let arpc = (rng.below(4) != 0).then_some(&inp.arpc[i]);
                    Command::VerifyArqc(ArqcCheck {
                        profile,
                        imk_ac: key,
                        pan,
                        psn,
                        terminal,
                        card_data,
                        arqc,
                        arpc,
                    })
                }
                // Codes: half the card's own (computed on the scalar path,
                // so a wrong batched MAC shows as valid != valid), half random.
                3 => {
                    let k = rng.below(6) as usize;
                    let method = if rng.below(2) == 0 {
                        MkDerivation::OptionA
                    } else {
                        MkDerivation::OptionB
                    };
                    let (un, atc) = (rng.bytes(), Atc(rng.next() as u16));
                    let own = rng.below(2) == 0 && key.len() == 16 && (1..=5).contains(&k);
                    let cvc3 = if own {
                        let (_, full) = cvc3::cvc3(key, method, pan, psn, blob, un, atc).unwrap();
                        full[5 - k..].to_vec().leak() as &[u8]
                    } else {
                        digits(rng, k)
                    };
                    Command::VerifyCvc3(Cvc3Check {
                        imk_cvc3: key,
                        method,
                        pan,
                        psn,
                        track_data: blob,
                        un,
                        atc,
                        cvc3,
                    })
                }
                4 => {
                    let expiry = Expiry::new(&rng.digits(4)).unwrap();
                    let service_code = ServiceCode::new(&rng.digits(3)).unwrap();
                    let atc = Atc(rng.next() as u16);
                    let dcvv = if rng.below(2) == 0 && key.len() == 16 {
                        let own = dcvv::dcvv(key, pan, psn, expiry, service_code, atc).unwrap();
                        own.to_vec().leak() as &[u8]
                    } else {
                        digits(rng, 3)
                    };
                    Command::VerifyDcvv(DcvvCheck {
                        imk_dcvv: key,
                        pan,
                        psn,
                        expiry,
                        service_code,
                        atc,
                        dcvv,
                    })
                }
                5 => {
                    let expiry = Expiry::new(&rng.digits(4)).unwrap();
                    let service_code = ServiceCode::new(&rng.digits(3)).unwrap();
                    let code = if rng.below(2) == 0 && key.len() == 16 {
                        let own = cvv::cvv(key, pan, expiry, service_code).unwrap();
                        own.to_vec().leak() as &[u8]
                    } else {
                        digits(rng, 3)
                    };
                    Command::VerifyCvv(CvvCheck {
                        cvk: key,
                        pan,
                        expiry,
                        service_code,
                        cvv: code,
                    })
                }
                _ => match rng.below(3) {
                    0 => Command::DeriveCardKey(CardKeyRequest {
                        method: if rng.below(2) == 0 {
                            MkDerivation::OptionA
                        } else {
                            MkDerivation::OptionB
                        },
                        imk: key,
                        pan,
                        psn,
                    }),
                    1 => Command::DeriveSessionKey(SessionKeyRequest {
                        mk: key,
                        r: rng.bytes(),
                    }),
                    _ => Command::GenerateArpc(ArpcRequest {
                        key,
                        arqc: rng.bytes(),
                        input: &inp.arpc[i],
                    }),
                },
            }
        })
        .collect()
}

#[test]
fn batched_equals_scalar_for_random_mixed_batches() {
    let mut rng = Rng(crate::xorshift::XorShift::new(0xDEC0_DE00_1234_5678));
    let (mut valid, mut codes_valid) = (0, 0);
    for size in [1, 3, 17, 200, 1500] {
        let inp = inputs(&mut rng, size);
        let cards: Vec<Vec<u8>> = (0..size)
            .map(|_| {
                let p = CvnProfile::ALL[rng.below(8) as usize];
                let len = card_data_len(p, &mut rng);
                (0..len).map(|_| rng.next() as u8).collect()
            })
            .collect();
        let cmds = commands(&mut rng, &inp, &cards);
        let batched = execute(&cmds);
        let scalar = execute_scalar(&cmds);
        assert_eq!(batched.len(), cmds.len());
        for (i, (b, s)) in batched.iter().zip(&scalar).enumerate() {
            assert_eq!(b, s, "batch of {size}, command {i}: {:?}", cmds[i]);
            if matches!(b, Outcome::Arqc { valid: true, .. }) {
                valid += 1;
            }
            if matches!(b, Outcome::Code { valid: true }) {
                codes_valid += 1;
            }
        }
    }
    // The comparison must have covered accepted cryptograms too.
    assert!(valid > 50, "only {valid} valid ARQCs");
    assert!(codes_valid > 50, "only {codes_valid} valid codes");
}
