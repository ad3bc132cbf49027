//! Codec tests: known answer, malformed inputs, property round trips.

use proptest::prelude::*;

use super::spec::{Content, LenType};
use super::*;

fn kat_message() -> IsoMessage {
    let mut m = IsoMessage::new(*b"0100");
    m.set(2, "4761739001010010");
    m.set(3, "000000");
    m.set(4, "000000001000");
    m.set(7, "0101120000");
    m.set(11, "123456");
    m.set(12, "120000");
    m.set(13, "0101");
    m.set(14, "2812");
    m.set(22, "071");
    m.set(23, "001");
    m.set(35, "4761739001010010=28122011234567890");
    m.set(37, "RRN000000001");
    m.set(41, "TERM0001");
    m.set(42, "MERCHANT0000001");
    m.set(49, "840");
    m.set(55, hex_decode(b"9F260801020304050607089F270180").unwrap());
    m
}

#[test]
fn known_answer_ascii() {
    // Bitmap by hand: byte 1 = bits 2,3,4,7 = 40+20+10+02 = 72; byte 2 =
    // 11,12,13,14 = 20+10+08+04 = 3C; byte 3 = 22,23 = 04+02 = 06; byte 4 =
    // none; byte 5 = 35,37 = 20+08 = 28; byte 6 = 41,42 = 80+40 = C0;
    // byte 7 = 49,55 = 80+02 = 82; byte 8 = none.
    let expected: Vec<u8> = [
        &b"0100"[..],
        b"723C060028C08200",
        b"16",
        b"4761739001010010",
        b"000000",
        b"000000001000",
        b"0101120000",
        b"123456",
        b"120000",
        b"0101",
        b"2812",
        b"071",
        b"001",
        b"34",
        b"4761739001010010=28122011234567890",
        b"RRN000000001",
        b"TERM0001",
        b"MERCHANT0000001",
        b"840",
        b"030",
        b"9F260801020304050607089F270180",
    ]
    .concat();
    let m = kat_message();
    assert_eq!(
        String::from_utf8(Dialect::Ascii.encode(&m).unwrap()).unwrap(),
        String::from_utf8(expected.clone()).unwrap()
    );
    assert_eq!(Dialect::Ascii.decode(&expected), Ok(m.clone()));
    assert_eq!(m.get(55).map(<[u8]>::len), Some(15));
    assert_eq!(m.get_str(55), None);
    assert_eq!(m.get_str(41), Some("TERM0001"));
}

#[test]
fn known_answer_binary() {
    let mut expected: Vec<u8> = b"0100".to_vec();
    expected.extend([0x72, 0x3C, 0x06, 0x00, 0x28, 0xC0, 0x82, 0x00]);
    expected.extend_from_slice(
        &[
            &b"16"[..],
            b"4761739001010010",
            b"000000",
            b"000000001000",
            b"0101120000",
            b"123456",
            b"120000",
            b"0101",
            b"2812",
            b"071",
            b"001",
            b"34",
            b"4761739001010010=28122011234567890",
            b"RRN000000001",
            b"TERM0001",
            b"MERCHANT0000001",
            b"840",
            b"015", // LLL counts bytes in the binary dialect
        ]
        .concat(),
    );
    expected.extend(hex_decode(b"9F260801020304050607089F270180").unwrap());
    let m = kat_message();
    assert_eq!(Dialect::Binary.encode(&m).unwrap(), expected);
    assert_eq!(Dialect::Binary.decode(&expected), Ok(m));
}

#[test]
fn secondary_bitmap_and_lower_case_hex() {
    let mut m = IsoMessage::new(*b"0800");
    m.set(7, "0101120000");
    m.set(11, "000001");
    m.set(70, "301");
    m.set(128, [0xAB; 8]);
    let w = Dialect::Ascii.encode(&m).unwrap();
    assert_eq!(
        &w[..36],
        b"08008220000000000000" /* 1,7,11 */
            .iter()
            .chain(b"0400000000000001")
            .copied()
            .collect::<Vec<_>>()
            .as_slice()
    );
    assert!(w.ends_with(b"ABABABABABABABAB"));
    let lower = w.to_ascii_lowercase();
    assert_eq!(Dialect::Ascii.decode(&lower), Ok(m.clone()));
    fuzz_decode(&lower);
    let b = Dialect::Binary.encode(&m).unwrap();
    assert_eq!(
        &b[4..20],
        &[0x82, 0x20, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0, 0, 0x01]
    );
    assert_eq!(Dialect::Binary.decode(&b), Ok(m));
}

// ---- malformed inputs (`docs/iso8583.md` §6) ----

/// MTI 0100, hex bitmap for `fields`, then `body` verbatim.
fn wire(fields: &[u8], body: &[u8]) -> Vec<u8> {
    let mut bits = 0u128;
    for &f in fields {
        bits |= 1u128 << (128 - u32::from(f));
    }
    if fields.iter().any(|&f| f > 64) {
        bits |= 1u128 << 127;
    }
    let mut w = b"0100".to_vec();
    w.extend(format!("{:016X}", (bits >> 64) as u64).bytes());
    if bits >> 127 == 1 {
        w.extend(format!("{:016X}", bits as u64).bytes());
    }
    w.extend_from_slice(body);
    w
}

const ECHO_BODY: &[u8] = b"000001RRN000000001TERM0001";

/// 11, 37, 41 followed by `extra` fields (all above 41) whose wire bytes
/// are `tail`.
fn with_echo(extra: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut f = vec![11, 37, 41];
    f.extend_from_slice(extra);
    wire(&f, &[ECHO_BODY, tail].concat())
}

fn err(b: &[u8]) -> DecodeError {
    let e = Dialect::Ascii.decode(b).unwrap_err();
    fuzz_decode(b);
    e
}

fn assert_echo(e: &DecodeError) {
    let echo: Vec<(u8, &[u8])> = e.echo_fields().collect();
    assert_eq!(
        echo,
        vec![
            (11, &b"000001"[..]),
            (37, b"RRN000000001"),
            (41, b"TERM0001")
        ],
        "{e}"
    );
    assert_eq!(e.mti(), Some(*b"0100"));
    assert_eq!(e.mti().and_then(response_mti), Some(*b"0110"));
}

#[test]
fn sanity_of_the_helper() {
    let m = Dialect::Ascii.decode(&with_echo(&[], b"")).unwrap();
    assert_eq!(m.field_numbers().collect::<Vec<_>>(), vec![11, 37, 41]);
}

#[test]
fn non_numeric_mti_and_short_body() {
    let mut b = wire(&[11], b"000001");
    b[2] = b'X';
    let e = err(&b);
    assert_eq!(
        (e.kind.clone(), e.offset, e.mti()),
        (DecodeErrorKind::BadMti, 0, None)
    );
    assert_eq!(e.echo_fields().count(), 0);
    assert_eq!(response_mti(e.partial.mti()), None);
    let e = err(b"010");
    assert_eq!(e.kind, DecodeErrorKind::BadMti);
    assert_eq!(e.partial.mti(), [b'0', b'1', b'0', 0]);
    assert_eq!(response_mti(e.partial.mti()), None);
    assert_eq!(err(b"").kind, DecodeErrorKind::BadMti);
    assert_eq!(err(b"+100").kind, DecodeErrorKind::BadMti);
    assert_eq!(
        err(b"0100").kind,
        DecodeErrorKind::TruncatedBitmap { need: 16, have: 0 }
    );
}

#[test]
fn non_hex_bitmap() {
    let mut b = with_echo(&[], b"");
    b[6] = b'G';
    let e = err(&b);
    assert_eq!((e.kind.clone(), e.offset), (DecodeErrorKind::BadBitmap, 4));
    assert_eq!(e.mti(), Some(*b"0100"));
    // A "+" or space in a bitmap is not hex either (u64::from_str_radix
    // would accept a leading "+").
    let mut b = with_echo(&[], b"");
    b[4] = b'+';
    assert_eq!(err(&b).kind, DecodeErrorKind::BadBitmap);
}

#[test]
fn bit1_set_no_secondary() {
    let e = err(b"01008000000000000000");
    assert_eq!(
        e.kind,
        DecodeErrorKind::MissingSecondaryBitmap { need: 16, have: 0 }
    );
    assert_eq!(e.offset, 20);
    let e = err(b"01008000000000000000000");
    assert_eq!(
        e.kind,
        DecodeErrorKind::MissingSecondaryBitmap { need: 16, have: 3 }
    );
    // Secondary present but empty (bit 1 plus 11, 37, 41 in the primary).
    let p = (1u64 << 63) | (1u64 << (64 - 11)) | (1u64 << (64 - 37)) | (1u64 << (64 - 41));
    let mut b = b"0100".to_vec();
    b.extend(format!("{p:016X}").bytes());
    b.extend(b"0000000000000000");
    b.extend(ECHO_BODY);
    let e = err(&b);
    assert_eq!(e.kind, DecodeErrorKind::EmptySecondaryBitmap);
    assert_echo(&e);
}

#[test]
fn bit65_rejected_after_echo_fields() {
    let e = err(&with_echo(&[65], b"0000000000000000"));
    assert_eq!(e.kind, DecodeErrorKind::Bit65);
    assert_eq!(e.kind.field(), Some(65));
    assert_echo(&e);
    // Also in the binary dialect.
    let mut b = b"0100".to_vec();
    b.extend([0x80, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    b.extend([0u8; 8]);
    assert_eq!(
        Dialect::Binary.decode(&b).unwrap_err().kind,
        DecodeErrorKind::Bit65
    );
}

#[test]
fn field_missing_data() {
    // docs/iso8583.md §6 case 9: bit 2, LL=16, 4 digits.
    let e = err(&wire(&[2], b"164761"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::Truncated {
            field: 2,
            need: 16,
            have: 4
        }
    );
    assert_eq!(e.offset, 20);
    assert_eq!(e.partial, IsoMessage::new(*b"0100"));
    // After the echo fields.
    let e = err(&with_echo(&[42], b"MERC"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::Truncated {
            field: 42,
            need: 15,
            have: 4
        }
    );
    assert_eq!(e.offset, 20 + ECHO_BODY.len());
    assert_echo(&e);
    // Prefix cut short.
    let e = err(&with_echo(&[44], b"1"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::Truncated {
            field: 44,
            need: 2,
            have: 1
        }
    );
    assert_echo(&e);
}

#[test]
fn llvar_non_digit_and_signed_length() {
    for prefix in [&b"1A"[..], b"+8", b" 8", b"-1"] {
        let e = err(&wire(&[2], &[prefix, b"47617390"].concat()));
        assert_eq!(
            e.kind,
            DecodeErrorKind::BadLengthPrefix { field: 2 },
            "{prefix:?}"
        );
        let e = err(&with_echo(&[44], &[prefix, b"ABCDEFGH"].concat()));
        assert_eq!(e.kind, DecodeErrorKind::BadLengthPrefix { field: 44 });
        assert_echo(&e);
    }
    let e = err(&with_echo(&[48], b"+10ABCDEFGHIJ"));
    assert_eq!(e.kind, DecodeErrorKind::BadLengthPrefix { field: 48 });
}

#[test]
fn llvar_over_max() {
    let e = err(&wire(&[2], b"2047617390010100100000"));
    assert_eq!(
        e.kind,
        DecodeErrorKind::FieldTooLong {
            field: 2,
            max: 19,
            got: 20
        }
    );
    let e = err(&with_echo(&[44], &[&b"26"[..], &[b'A'; 26]].concat()));
    assert_eq!(
        e.kind,
        DecodeErrorKind::FieldTooLong {
            field: 44,
            max: 25,
            got: 26
        }
    );
    assert_echo(&e);
    // Field 55: 510 hex chars max in ascii, 255 bytes in binary.
    let e = err(&with_echo(&[55], &[&b"512"[..], &[b'0'; 512]].concat()));
    assert_eq!(
        e.kind,
        DecodeErrorKind::FieldTooLong {
            field: 55,
            max: 510,
            got: 512
        }
    );
    assert_echo(&e);
}

#[test]
fn trailing_garbage() {
    let mut b = with_echo(&[], b"");
    b.extend(b"XX");
    let e = err(&b);
    assert_eq!(e.kind, DecodeErrorKind::TrailingBytes { count: 2 });
    assert_eq!(e.offset, b.len() - 2);
    assert_echo(&e);
}

#[test]
fn non_ascii_in_ans_field() {
    let e = err(&with_echo(&[43], &[0xFF; 40]));
    assert_eq!(e.kind, DecodeErrorKind::NotPrintable { field: 43 });
    assert_echo(&e);
    let e = err(&with_echo(
        &[43],
        &[&b"NAME"[..], &[0x0A], &[b' '; 35]].concat(),
    ));
    assert_eq!(e.kind, DecodeErrorKind::NotPrintable { field: 43 });
    // Letters in an n field (pyiso8583 accepts them).
    let e = err(&with_echo(&[49, 70], b"840A01"));
    assert_eq!(e.kind, DecodeErrorKind::NotDigits { field: 70 });
    assert_echo(&e);
    let e = err(&wire(&[3], b"00A000"));
    assert_eq!(e.kind, DecodeErrorKind::NotDigits { field: 3 });
    let e = err(&with_echo(&[97], b"X0000000000000000"));
    assert_eq!(e.kind, DecodeErrorKind::InvalidChar { field: 97 });
}

#[test]
fn f55_odd_hex_bad_hex_overrun_deep_nesting() {
    let e = err(&with_echo(&[55], b"0039F2"));
    assert_eq!(e.kind, DecodeErrorKind::OddHexLength { field: 55 });
    assert_echo(&e);
    let e = err(&with_echo(&[55], b"0049FZZ"));
    assert_eq!(e.kind, DecodeErrorKind::BadHex { field: 55 });
    assert_echo(&e);
    let e = err(&with_echo(&[52], b"0123456789ABCDEG"));
    assert_eq!(e.kind, DecodeErrorKind::BadHex { field: 52 });

    // TLV problems are not codec errors: the field decodes, tlv::parse
    // rejects it (the listener declines).
    let m = Dialect::Ascii
        .decode(&with_echo(&[55], b"0149F260801020304"))
        .unwrap();
    assert_eq!(
        tlv::parse(m.get(55).unwrap()),
        Err(TlvError::ValueOverrun {
            offset: 0,
            tag: 0x9F26,
            need: 8,
            have: 4
        })
    );
    let mut deep = vec![0x91, 0x00];
    for _ in 0..60 {
        let mut o = Vec::new();
        tlv::encode_tlv(0x71, &deep, &mut o);
        deep = o;
    }
    let mut m = IsoMessage::new(*b"0100");
    m.set(55, deep);
    for d in [Dialect::Ascii, Dialect::Binary] {
        let back = d.decode(&d.encode(&m).unwrap()).unwrap();
        assert!(matches!(
            tlv::parse(back.get(55).unwrap()),
            Err(TlvError::TooDeep { .. })
        ));
    }
}

#[test]
fn track2_without_separator() {
    let m = Dialect::Ascii
        .decode(&wire(&[35], b"284761739001010010281220112345"))
        .unwrap();
    assert_eq!(
        Track2::parse_ascii(m.get(35).unwrap()),
        Err(Track2Error::NoSeparator)
    );
    // Characters outside the track 2 alphabet fail in the codec already.
    let e = err(&wire(&[35], b"054761^"));
    assert_eq!(e.kind, DecodeErrorKind::InvalidChar { field: 35 });
}

#[test]
fn encode_validates_and_names_the_field() {
    let enc = |n: u8, v: &[u8]| {
        let mut m = IsoMessage::new(*b"0100");
        m.set(n, v);
        Dialect::Ascii.encode(&m).err()
    };
    assert_eq!(
        enc(11, b"12345"),
        Some(EncodeError::WrongLength {
            field: 11,
            expected: 6,
            got: 5
        })
    );
    assert_eq!(
        enc(11, b"12345X"),
        Some(EncodeError::NotDigits { field: 11 })
    );
    assert_eq!(
        enc(2, &[b'1'; 20]),
        Some(EncodeError::TooLong {
            field: 2,
            max: 19,
            got: 20
        })
    );
    assert_eq!(
        enc(43, &[0xFF; 40]),
        Some(EncodeError::NotPrintable { field: 43 })
    );
    assert_eq!(
        enc(52, &[0; 7]),
        Some(EncodeError::WrongLength {
            field: 52,
            expected: 8,
            got: 7
        })
    );
    assert_eq!(
        enc(55, &[0; 256]),
        Some(EncodeError::TooLong {
            field: 55,
            max: 255,
            got: 256
        })
    );
    assert_eq!(enc(55, &[0; 255]), None);
    assert_eq!(enc(28, b"C00000001"), None);
    assert_eq!(
        enc(28, b"+00000001"),
        Some(EncodeError::InvalidChar { field: 28 })
    );
    assert_eq!(
        Dialect::Ascii.encode(&IsoMessage::new(*b"01a0")),
        Err(EncodeError::BadMti)
    );
    assert_eq!(
        Dialect::Ascii.encode(&IsoMessage::new(*b"0800")).unwrap(),
        b"08000000000000000000"
    );
    assert_eq!(EncodeError::NotDigits { field: 4 }.field(), 4);
}

#[test]
fn spec_lookup() {
    assert_eq!(Dialect::Ascii.spec(2).len, LenType::Ll);
    assert_eq!(Dialect::Ascii.spec(55).max_len, 510);
    assert_eq!(Dialect::Binary.spec(55).max_len, 255);
    assert_eq!(Dialect::Ascii.spec(200).content, Content::Undefined);
    assert_eq!("binary".parse::<Dialect>(), Ok(Dialect::Binary));
}

// ---- property tests ----

/// Deterministic valid value for `field` from a seed.
fn valid_value(field: u8, mut seed: u64, len_pick: usize) -> Vec<u8> {
    let spec = Dialect::Ascii.spec(field);
    let max = spec.max_value_len();
    let len = match spec.len {
        LenType::Fixed => max,
        _ => len_pick % (max + 1),
    };
    let mut next = move || {
        // xorshift64*
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    };
    (0..len)
        .map(|i| {
            let r = next();
            match spec.content {
                Content::N => b'0' + (r % 10) as u8,
                Content::Ans => 0x20 + (r % 95) as u8,
                Content::Z => b"0123456789=DF"[(r % 13) as usize],
                Content::Xn if i == 0 => [b'C', b'D'][(r % 2) as usize],
                Content::Xn => b'0' + (r % 10) as u8,
                _ => r as u8,
            }
        })
        .collect()
}

fn arb_message() -> impl Strategy<Value = IsoMessage> {
    (
        "[0-9]{4}",
        prop::collection::vec((2u8..=128, any::<u64>(), any::<usize>()), 0..24),
    )
        .prop_map(|(mti, fields)| {
            let b = mti.as_bytes();
            let mut m = IsoMessage::new([b[0], b[1], b[2], b[3]]);
            for (n, seed, len) in fields {
                if n != 65 {
                    m.set(n, valid_value(n, seed, len));
                }
            }
            m
        })
}

fn arb_dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![Just(Dialect::Ascii), Just(Dialect::Binary)]
}

/// Byte-level mutations: (position, byte, op).
fn mutate(mut b: Vec<u8>, muts: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, byte, op) in muts {
        if b.is_empty() {
            break;
        }
        let i = pos % b.len();
        match op % 5 {
            0 => b[i] = byte,
            1 => b.insert(i, byte),
            2 => {
                b.remove(i);
            }
            3 => b.truncate(i),
            // Nudge toward plausible characters: a digit.
            _ => b[i] = b'0' + byte % 10,
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_encode_round_trip(m in arb_message(), d in arb_dialect()) {
        let wire = d.encode(&m).unwrap();
        prop_assert_eq!(d.decode(&wire), Ok(m.clone()));
        // encode(decode(b)) == b for the accepted b.
        fuzz_decode(&wire);
        // Same canonical message in the other dialect.
        let other = if d == Dialect::Ascii { Dialect::Binary } else { Dialect::Ascii };
        prop_assert_eq!(other.decode(&other.encode(&m).unwrap()), Ok(m));
    }

    #[test]
    fn mutated_messages_round_trip_or_fail_cleanly(
        m in arb_message(),
        d in arb_dialect(),
        muts in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let b = mutate(d.encode(&m).unwrap(), &muts);
        match d.decode(&b) {
            Ok(back) => {
                let re = d.encode(&back).unwrap();
                match d {
                    Dialect::Binary => prop_assert_eq!(&re, &b),
                    Dialect::Ascii => {
                        prop_assert!(re.eq_ignore_ascii_case(&b));
                        prop_assert_eq!(d.decode(&re), Ok(back));
                    }
                }
            }
            Err(e) => {
                // Partial messages only hold fields that decoded.
                if e.mti().is_some() {
                    prop_assert!(d.encode(&e.partial).is_ok(), "{:?}", e);
                } else {
                    prop_assert_eq!(response_mti(e.partial.mti()), None);
                }
            }
        }
        fuzz_decode(&b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        fuzz_decode(&data);
        fuzz_tlv(&data);
        fuzz_track2(&data);
        fuzz_frames(&data);
    }

    #[test]
    fn plausible_prefixes_never_panic(
        bitmap in "[0-9A-Fa-f]{16,32}",
        rest in prop::collection::vec(prop_oneof![Just(b'0'), Just(b'9'), any::<u8>()], 0..200),
    ) {
        let mut b = b"0100".to_vec();
        b.extend(bitmap.bytes());
        b.extend(rest);
        fuzz_decode(&b);
    }

    #[test]
    fn tlv_and_track2_structured_never_panic(
        objs in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..40)), 0..8),
        digits in "[0-9]{12,19}[=D][0-9]{7,20}F?",
    ) {
        let mut d = Vec::new();
        for (tag, v) in &objs {
            tlv::encode_tlv(*tag, v, &mut d);
        }
        fuzz_tlv(&d);
        let t = Track2::parse_ascii(digits.as_bytes()).unwrap();
        prop_assert_eq!(Track2::parse_bcd(&t.to_bcd()), Ok(t.clone()));
        fuzz_track2(digits.as_bytes());
        fuzz_track2(&t.to_bcd());
    }

    #[test]
    fn frames_split_incrementally(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 1..5),
        sel in 0u8..4,
        cut in any::<usize>(),
    ) {
        let framing = [Framing::Len2Exclusive, Framing::Len2Inclusive, Framing::Ascii4, Framing::Len2Tpdu][sel as usize];
        let hdr = (framing == Framing::Len2Tpdu).then_some([0x60, 1, 2, 3, 4]);
        let mut wire = Vec::new();
        for b in &bodies {
            write_frame(framing, hdr, b, &mut wire).unwrap();
        }
        // Deliver in two pieces at an arbitrary cut; parse what is complete.
        let cut = cut % (wire.len() + 1);
        let mut buf: Vec<u8> = wire[..cut].to_vec();
        let mut got = Vec::new();
        let mut rest = &wire[cut..];
        loop {
            match next_frame(framing, &buf, 4096).unwrap() {
                Some(f) => {
                    got.push(f.body.to_vec());
                    let c = f.consumed;
                    buf.drain(..c);
                }
                None if rest.is_empty() => break,
                None => {
                    buf.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, bodies);
    }
}

#[test]
fn bcd_packs_the_rightmost_digits() {
    use super::{bcd, digits_value};
    assert_eq!(bcd::<4>(12_345_678), [0x12, 0x34, 0x56, 0x78]);
    assert_eq!(bcd::<4>(912_345_678), [0x12, 0x34, 0x56, 0x78]);
    assert_eq!(bcd::<2>(840), [0x08, 0x40]);
    assert_eq!(bcd::<6>(1000), [0, 0, 0, 0, 0x10, 0x00]);
    assert_eq!(digits_value(b"000000001000"), Some(1000));
    assert_eq!(digits_value(b"-1"), None);
    assert_eq!(digits_value(b""), None);
}
