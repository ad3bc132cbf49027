//! The `des` crate as the reference the constant-time DES is tested
//! against (test builds only: no production path uses it, because its
//! S-box lookups are indexed by key-dependent data). The benchmarks keep
//! it as their baseline in `benches/benches/crypto.rs`.

use ::des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use ::des::{Des, TdesEde2, TdesEde3};

/// One single-DES block.
pub(crate) fn des(key: [u8; 8], block: [u8; 8], decrypt: bool) -> [u8; 8] {
    let k = Des::new_from_slice(&key).expect("8 bytes");
    let mut b = block.into();
    if decrypt {
        k.decrypt_block(&mut b);
    } else {
        k.encrypt_block(&mut b);
    }
    b.into()
}

/// One triple-DES (EDE) block under a 16- or 24-byte key.
pub(crate) fn tdes(key: &[u8], block: [u8; 8], decrypt: bool) -> [u8; 8] {
    let mut b = block.into();
    match key.len() {
        16 => {
            let k = TdesEde2::new_from_slice(key).expect("16 bytes");
            if decrypt {
                k.decrypt_block(&mut b)
            } else {
                k.encrypt_block(&mut b)
            }
        }
        _ => {
            let k = TdesEde3::new_from_slice(key).expect("24 bytes");
            if decrypt {
                k.decrypt_block(&mut b)
            } else {
                k.encrypt_block(&mut b)
            }
        }
    }
    b.into()
}

/// The ISO 9797-1 retail MAC (algorithm 3) of already padded `data`.
pub(crate) fn retail_mac(key: &[u8; 16], data: &[u8]) -> [u8; 8] {
    let kl: [u8; 8] = key[..8].try_into().expect("8 bytes");
    let kr: [u8; 8] = key[8..].try_into().expect("8 bytes");
    let mut chain = [0u8; 8];
    for chunk in data.chunks_exact(8) {
        let mut x = chain;
        x.iter_mut().zip(chunk).for_each(|(a, b)| *a ^= b);
        chain = des(kl, x, false);
    }
    des(kl, des(kr, chain, true), false)
}

/// TDES CMAC (NIST SP 800-38B) with the `cmac` crate.
pub(crate) fn tdes_cmac(key: &[u8], data: &[u8]) -> [u8; 8] {
    use ::cmac::{Cmac, Mac};
    let tag = match key.len() {
        16 => {
            let mut m = <Cmac<TdesEde2> as Mac>::new_from_slice(key).expect("16 bytes");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut m = <Cmac<TdesEde3> as Mac>::new_from_slice(key).expect("24 bytes");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    };
    tag.try_into().expect("8 bytes")
}
