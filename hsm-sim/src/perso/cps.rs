//! EMV CPS key diversification, "KMC → KDC" (EMV CPS v1.1; GlobalPlatformPro
//! templates `emv` and `visa2`; `docs/cryptography.md` §7.1).
//!
//! The card's static secure-channel keys (KDC) are derived from the issuer's
//! personalisation master key (KMC) and the card's 10-byte key
//! diversification data (KDD, "KEYDATA"), which the card returns in the
//! first 10 bytes of its INITIALIZE UPDATE response. For purpose
//! `p` (ENC `01`, MAC `02`, DEK `03`) and six KDD bytes `d`:
//!
//! ```text
//! KDC_p = TDES-ECB_KMC( d || F0 || p || d || 0F || p )
//! ```
//!
//! where `d = KDD[4..10]` for [`CpsMethod::Emv`] and
//! `d = KDD[0..2] || KDD[4..8]` for [`CpsMethod::Visa2`] (the VISA2 / CPG
//! layout). The raw TDES output is the key: like GlobalPlatformPro, no
//! parity is forced on it ([`odd_parity`] gives the variant some HSMs
//! store; DES ignores parity bits, so both have the same KCV). The derived
//! keys are the static SCP02 keys ([`super::scp02`]).

use std::str::FromStr;

use zeroize::Zeroizing;

use super::StaticKeys;
use crate::primitives::parity::adjust_odd_parity;
use crate::{CryptoError, TdesKey};

/// Which bytes of the KDD feed the derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpsMethod {
    /// EMV CPS v1.1 KEYDATA: KDD bytes 4..9 (the card's unique bytes).
    Emv,
    /// VISA2 / CPG: KDD bytes 0..1 followed by bytes 4..7.
    Visa2,
}

impl FromStr for CpsMethod {
    type Err = CryptoError;

    /// `emv` or `visa2` (any case), the GlobalPlatformPro template names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("emv") {
            Ok(Self::Emv)
        } else if s.eq_ignore_ascii_case("visa2") {
            Ok(Self::Visa2)
        } else {
            Err(CryptoError::invalid(
                "CPS method",
                "must be \"emv\" or \"visa2\"",
            ))
        }
    }
}

impl CpsMethod {
    /// The six KDD bytes this method diversifies on.
    fn kdd_bytes(self, kdd: &[u8; 10]) -> [u8; 6] {
        match self {
            Self::Emv => [kdd[4], kdd[5], kdd[6], kdd[7], kdd[8], kdd[9]],
            Self::Visa2 => [kdd[0], kdd[1], kdd[4], kdd[5], kdd[6], kdd[7]],
        }
    }
}

/// The purpose of a derived key, with the byte CPS codes it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    /// Key-ENC (`01`).
    Enc,
    /// Key-MAC (`02`).
    Mac,
    /// Key-DEK / KEK (`03`).
    Dek,
}

impl KeyPurpose {
    fn code(self) -> u8 {
        match self {
            Self::Enc => 0x01,
            Self::Mac => 0x02,
            Self::Dek => 0x03,
        }
    }
}

/// One card key: `TDES-ECB_KMC(d || F0 || p || d || 0F || p)`.
///
/// The KMC must be double length (CPS and GlobalPlatform define it so).
pub fn derive_kdc(
    kmc: &TdesKey,
    kdd: &[u8; 10],
    method: CpsMethod,
    purpose: KeyPurpose,
) -> Result<TdesKey, CryptoError> {
    if kmc.len() != 16 {
        return Err(CryptoError::length("KMC", "16", kmc.len()));
    }
    let d = method.kdd_bytes(kdd);
    let p = purpose.code();
    let mut block = [0u8; 16];
    block[..6].copy_from_slice(&d);
    block[6..8].copy_from_slice(&[0xF0, p]);
    block[8..14].copy_from_slice(&d);
    block[14..].copy_from_slice(&[0x0F, p]);
    // The two halves are encrypted independently (ECB): F0/0F make them
    // differ, so the key's halves differ too.
    let key = Zeroizing::new(kmc.encrypt_ecb(&block)?);
    TdesKey::new(&key)
}

/// The three card keys (ENC, MAC, DEK): the static SCP02 key set.
pub fn derive_kdc_set(
    kmc: &TdesKey,
    kdd: &[u8; 10],
    method: CpsMethod,
) -> Result<StaticKeys<TdesKey>, CryptoError> {
    Ok(StaticKeys {
        enc: derive_kdc(kmc, kdd, method, KeyPurpose::Enc)?,
        mac: derive_kdc(kmc, kdd, method, KeyPurpose::Mac)?,
        dek: derive_kdc(kmc, kdd, method, KeyPurpose::Dek)?,
    })
}

/// `key` with odd parity forced on every byte (as HSMs that store only
/// parity-correct DES keys hold a KDC). Same KCV, different bytes.
pub fn odd_parity(key: &TdesKey) -> TdesKey {
    let mut bytes = Zeroizing::new(key.expose_bytes().to_vec());
    adjust_odd_parity(&mut bytes);
    TdesKey::new(&bytes).expect("same length as an existing key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perso::scp02::{Scp02Options, Scp02Session};
    use crate::perso::SecurityLevel;
    use crate::primitives::kcv::des_kcv;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    fn kdd(s: &str) -> [u8; 10] {
        h(s).try_into().expect("10 bytes")
    }

    fn key(s: &str) -> TdesKey {
        TdesKey::new(&h(s)).expect("test key")
    }

    fn upper(k: &TdesKey) -> String {
        hex::encode_upper(k.expose_bytes())
    }

    /// GlobalPlatformPro `TestPlaintextKeys` (KCVs published; the keys are
    /// the vector file's).
    #[test]
    fn globalplatformpro_published() {
        let kmc = key("404142434445464748494A4B4C4D4E4F");
        let d = kdd("00010203040506070809");
        let cases = [
            (
                CpsMethod::Emv,
                [
                    "0EF59FCBF8019B62E62AF6EA20B8BF25",
                    "3E383EB6F2762B88155F76BDFED05A02",
                    "64021E43C0C7D264A1C7C6D01E1C8761",
                ],
                ["C33013", "6F4CA6", "BB8179"],
            ),
            (
                CpsMethod::Visa2,
                [
                    "8510FC973208218CA86888BCEC203635",
                    "1068B5FB6F06C78C7A4DFC343B21C78F",
                    "2DAEE809C71405FF259C3BE695A1F66E",
                ],
                ["2BE598", "58DA38", "3C328E"],
            ),
        ];
        for (method, keys, kcvs) in cases {
            let set = derive_kdc_set(&kmc, &d, method).expect("derive");
            for (k, (want, kcv)) in [&set.enc, &set.mac, &set.dek]
                .into_iter()
                .zip(keys.iter().zip(kcvs))
            {
                assert_eq!(upper(k), *want, "{method:?}");
                assert_eq!(hex::encode_upper(des_kcv(k, 3)), kcv, "{method:?}");
            }
        }
    }

    /// Vector `rnd-0` (visa2) with the parity-adjusted keys.
    #[test]
    fn self_derived_with_parity() {
        let kmc = key("15ADD0ADF4C419B091236BAE9797FEFE");
        let set =
            derive_kdc_set(&kmc, &kdd("99C424B4606EB73136E3"), CpsMethod::Visa2).expect("derive");
        assert_eq!(upper(&set.enc), "07B66F82145210D83F37FBE83A45AEE8");
        assert_eq!(
            upper(&odd_parity(&set.enc)),
            "07B66E83155210D93E37FBE93B45AEE9"
        );
        assert_eq!(
            upper(&odd_parity(&set.mac)),
            "25E31C262A51D5A7A82A76C49EE54AE6"
        );
        assert_eq!(
            upper(&odd_parity(&set.dek)),
            "3EDFA7E54C4F20EC29F1B6ECD93D7689"
        );
        assert_eq!(hex::encode_upper(des_kcv(&set.dek, 3)), "EBD1DC");
        assert_eq!(des_kcv(&set.dek, 3), des_kcv(&odd_parity(&set.dek), 3));
    }

    #[test]
    fn method_names_and_kmc_length() {
        assert_eq!("EMV".parse::<CpsMethod>(), Ok(CpsMethod::Emv));
        assert_eq!("visa2".parse::<CpsMethod>(), Ok(CpsMethod::Visa2));
        assert!("visa".parse::<CpsMethod>().is_err());
        let single = key("0123456789ABCDEF");
        assert!(derive_kdc(&single, &[0; 10], CpsMethod::Emv, KeyPurpose::Enc).is_err());
    }

    /// Bit `bit` of `bytes` flipped, skipping DES parity bits (bit 0 of
    /// every byte), which leave every DES result unchanged.
    fn flip_non_parity(bytes: &mut [u8], bit: usize) {
        let i = (bit / 7) % bytes.len();
        bytes[i] ^= 2 << (bit % 7);
    }

    proptest! {
        /// The CPS flow: the card holds KDCs, the host holds only the KMC.
        /// A host that derives the KDCs from the card's KDD recomputes the
        /// card's SCP02 cryptogram; a KMC with one flipped (non-parity) bit
        /// does not, and nor does a KDD flipped in a byte the method uses.
        #[test]
        fn host_with_kmc_recomputes_card_cryptogram(
            kmc in any::<[u8; 16]>(),
            kdd in any::<[u8; 10]>(),
            visa2 in any::<bool>(),
            ssc in any::<[u8; 2]>(),
            host in any::<[u8; 8]>(),
            card in any::<[u8; 6]>(),
            bit in 0usize..112,
            kdd_bit in 0usize..48,
        ) {
            let method = if visa2 { CpsMethod::Visa2 } else { CpsMethod::Emv };
            let kmc_key = TdesKey::new(&kmc).expect("16 bytes");
            let opts = Scp02Options::from_i_param(0x55).expect("i=55");
            let level = SecurityLevel::CMac;
            let open = |keys: &StaticKeys<TdesKey>| {
                Scp02Session::new(keys, opts, level, ssc, host, card).expect("session")
            };
            let card_keys = derive_kdc_set(&kmc_key, &kdd, method).expect("derive");
            let card_side = open(&card_keys).card_cryptogram();

            let host_keys = derive_kdc_set(&kmc_key, &kdd, method).expect("derive");
            prop_assert!(open(&host_keys).verify_card_cryptogram(&card_side));

            let mut wrong = kmc;
            flip_non_parity(&mut wrong, bit);
            let wrong_keys = derive_kdc_set(&TdesKey::new(&wrong).expect("16"), &kdd, method).expect("derive");
            prop_assert!(!open(&wrong_keys).verify_card_cryptogram(&card_side));

            // Flip a bit in one of the six KDD bytes the method reads.
            let used: [usize; 6] = match method {
                CpsMethod::Emv => [4, 5, 6, 7, 8, 9],
                CpsMethod::Visa2 => [0, 1, 4, 5, 6, 7],
            };
            let mut other = kdd;
            other[used[kdd_bit / 8]] ^= 1 << (kdd_bit % 8);
            let other_keys = derive_kdc_set(&kmc_key, &other, method).expect("derive");
            prop_assert!(!open(&other_keys).verify_card_cryptogram(&card_side));
        }

        /// Bytes outside the method's six do not change the keys.
        #[test]
        fn unused_kdd_bytes_do_not_matter(kmc in any::<[u8; 16]>(), kdd in any::<[u8; 10]>(), x in any::<u8>()) {
            let kmc = TdesKey::new(&kmc).expect("16 bytes");
            let mut emv_other = kdd;
            emv_other[2] ^= x;
            let a = derive_kdc(&kmc, &kdd, CpsMethod::Emv, KeyPurpose::Mac).expect("derive");
            let b = derive_kdc(&kmc, &emv_other, CpsMethod::Emv, KeyPurpose::Mac).expect("derive");
            prop_assert_eq!(a.expose_bytes(), b.expose_bytes());
            let mut visa_other = kdd;
            visa_other[9] ^= x;
            let a = derive_kdc(&kmc, &kdd, CpsMethod::Visa2, KeyPurpose::Dek).expect("derive");
            let b = derive_kdc(&kmc, &visa_other, CpsMethod::Visa2, KeyPurpose::Dek).expect("derive");
            prop_assert_eq!(a.expose_bytes(), b.expose_bytes());
        }
    }
}
