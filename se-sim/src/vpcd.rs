//! The vsmartcard "vpcd" virtual-reader protocol, card side.
//!
//! vsmartcard's `vpcd` is a PC/SC reader driver (an IFD handler) that
//! pcscd loads from `/etc/reader.conf.d/vpcd`. It registers the readers
//! "Virtual PCD 00 00" and "Virtual PCD 00 01", listens on TCP ports 35963
//! and 35964 (one per reader), and waits for a virtual card to connect.
//! This module is that virtual card's end of the socket, the part that
//! vsmartcard's own `vicc` implements in Python: once the card is
//! connected, every PC/SC application on the machine (pyscard, `pcsc_scan`,
//! GlobalPlatformPro, OpenSC) sees it as a card inserted in a reader.
//!
//! ## Wire format
//!
//! Both directions carry frames: a 2-byte big-endian length, then that many
//! bytes. vpcd is the master; the card only ever answers.
//!
//! | vpcd sends (payload)          | meaning   | card answers                |
//! |-------------------------------|-----------|-----------------------------|
//! | `00` (1 byte)                 | power off | nothing                     |
//! | `01` (1 byte)                 | power on  | nothing                     |
//! | `02` (1 byte)                 | reset     | nothing                     |
//! | `04` (1 byte)                 | get ATR   | the ATR, as one frame       |
//! | 2 bytes or more               | a C-APDU  | the R-APDU, as one frame    |
//!
//! A 1-byte payload is always a control code, so a 1-byte APDU cannot be
//! carried (ISO 7816-4 has none: the shortest APDU is the 4-byte header).
//!
//! What vpcd does with the answers, and so what a card must not do:
//! - It asks for the ATR on every presence poll (pcscd polls the reader
//!   about every 400 ms), not only at power on. An empty ATR frame means
//!   "card removed"; pcscd rejects an ATR longer than 33 bytes
//!   ([`MAX_ATR_LEN`]).
//! - An empty R-APDU frame is likewise read as the card going away, so a
//!   card that answers an APDU with nothing is a bug here
//!   ([`VpcdError::EmptyResponse`]), not something to forward.
//! - It reports every exchange as T=1 to pcscd, whatever the ATR says, and
//!   passes whole APDUs: no T=0 `61xx`/`6Cxx` handling happens in between.
//!
//! ## Decisions where the protocol is silent
//!
//! They follow vsmartcard's reference card, `vicc` (`VirtualSmartcard.py`,
//! `VirtualICC.run`):
//! - A zero-length frame is skipped without an answer. vpcd never sends
//!   one; `vicc` logs it and reads on.
//! - An unknown 1-byte control code is skipped without an answer. vpcd
//!   waits for an answer only after `04` and after an APDU, so answering
//!   anything else would put every later answer one frame late.
//!
//! Bounds: the 16-bit length allows 65 535 bytes; this side accepts at most
//! [`MAX_FRAME_LEN`] (a short APDU is at most 261 bytes, and this card
//! answers extended lengths only within that limit). A longer frame ends
//! the session with [`VpcdError::FrameTooLong`] before anything of its
//! payload is read, so a hostile or confused peer cannot make the card
//! allocate. The receive buffer is allocated once per session.
//!
//! [`serve`] works on any `Read + Write`, so the tests drive it in memory;
//! the binary hands it a `TcpStream` connected to vpcd.

use std::io::{self, Read, Write};

/// vpcd's default TCP port: the first reader, "Virtual PCD 00 00". The
/// second reader ("Virtual PCD 00 01") listens on the next port.
pub const DEFAULT_PORT: u16 = 35963;

/// The largest frame payload this side accepts or sends. Well above a
/// short APDU (261 bytes) and the responses this card produces; far below
/// the protocol's own 65 535.
pub const MAX_FRAME_LEN: usize = 4096;

/// The longest ATR that pcscd accepts (its `MAX_ATR_SIZE`): TS and at most
/// 32 more characters (ISO 7816-3).
pub const MAX_ATR_LEN: usize = 33;

/// Control code: power the card off.
pub const CTRL_OFF: u8 = 0x00;
/// Control code: power the card on.
pub const CTRL_ON: u8 = 0x01;
/// Control code: warm reset.
pub const CTRL_RESET: u8 = 0x02;
/// Control code: send the ATR.
pub const CTRL_ATR: u8 = 0x04;

/// The ATR this card answers with unless configured otherwise.
///
/// `3B 8C 80 01 80 5A "TESSERA-SE" AB`, the layout PC/SC part 3 gives
/// contactless cards (and that most contactless payment cards show through
/// a PC/SC reader):
/// - `3B`: TS, direct convention.
/// - `8C`: T0: TD1 follows; 12 historical bytes.
/// - `80`: TD1: TD2 follows; T=0 offered.
/// - `01`: TD2: T=1 offered. pcscd then negotiates T=1, the only protocol
///   vpcd reports anyway.
/// - `80`: category indicator: the historical bytes are COMPACT-TLV
///   (ISO 7816-4).
/// - `5A` + 10 bytes: tag 5 (card issuer's data), length 10:
///   ASCII "TESSERA-SE", so that `pcsc_scan` and logs name the card.
/// - `AB`: TCK, the XOR of T0 through the last historical byte. Mandatory
///   as soon as any protocol other than T=0 is offered (ISO 7816-3);
///   a unit test checks it.
pub const DEFAULT_ATR: &[u8] = &[
    0x3B, 0x8C, 0x80, 0x01, // TS T0 TD1 TD2
    0x80, 0x5A, // category, compact-TLV tag 5 length 10
    b'T', b'E', b'S', b'S', b'E', b'R', b'A', b'-', b'S', b'E', // issuer's data
    0xAB, // TCK
];

/// What a transport needs from a card.
///
/// The card keeps its own power state: vpcd sends APDUs only to a powered
/// card, and asks for the ATR whether the card is powered or not.
pub trait VirtualCard {
    /// The ATR, at most [`MAX_ATR_LEN`] bytes. An empty ATR tells vpcd
    /// that the card has been removed.
    fn atr(&self) -> Vec<u8>;
    /// Cold start: the card's volatile state (selected application, secure
    /// channel) starts afresh.
    fn power_on(&mut self);
    /// Power lost: the volatile state is gone.
    fn power_off(&mut self);
    /// Warm reset: as a power cycle, without losing power.
    fn reset(&mut self);
    /// Process one command APDU and return the response APDU: data, then
    /// SW1 SW2. Never empty (see [`VpcdError::EmptyResponse`]).
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8>;
}

/// Why a vpcd session ended other than by vpcd closing the connection.
#[derive(Debug, thiserror::Error)]
pub enum VpcdError {
    /// Reading from or writing to vpcd failed.
    #[error("vpcd connection: {0}")]
    Io(#[from] io::Error),
    /// vpcd announced a frame larger than this side accepts. The session
    /// cannot go on: the payload was not read, so the stream is no longer
    /// at a frame boundary.
    #[error("vpcd sent a {len}-byte frame; at most {max} bytes are accepted")]
    FrameTooLong {
        /// The announced payload length.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The connection closed inside a frame (its length prefix or its
    /// payload).
    #[error("vpcd closed the connection inside a frame: {got} of {expected} bytes received")]
    Truncated {
        /// Bytes the frame (or its length prefix) should have had.
        expected: usize,
        /// Bytes received before end of file.
        got: usize,
    },
    /// The card answered an APDU with nothing; vpcd would take that as a
    /// removed card.
    #[error("the card answered a command APDU with an empty response")]
    EmptyResponse,
    /// The card's answer is longer than [`MAX_FRAME_LEN`].
    #[error("the card's {len}-byte response exceeds the {max}-byte frame limit")]
    ResponseTooLong {
        /// The response length.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The card's ATR is longer than pcscd accepts.
    #[error("the card's {len}-byte ATR exceeds the {max}-byte limit of pcscd")]
    AtrTooLong {
        /// The ATR length.
        len: usize,
        /// [`MAX_ATR_LEN`].
        max: usize,
    },
}

/// Serve `card` to vpcd over `stream` until vpcd closes the connection.
///
/// Returns `Ok(())` at end of file on a frame boundary (vpcd unloaded,
/// pcscd stopped), and an error on anything that leaves the two sides out
/// of step: an I/O error, a frame cut short, a frame too long, or an answer
/// of the card's that vpcd would misread. Interrupted reads and writes are
/// retried.
pub fn serve<S: Read + Write>(stream: &mut S, card: &mut dyn VirtualCard) -> Result<(), VpcdError> {
    // One buffer for the whole session: a frame's payload never exceeds it.
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    loop {
        let Some(len) = read_frame_len(stream)? else {
            return Ok(());
        };
        // `buf` is MAX_FRAME_LEN long: this is the length check, made
        // before any byte of the payload is read.
        let Some(payload) = buf.get_mut(..len) else {
            return Err(VpcdError::FrameTooLong {
                len,
                max: MAX_FRAME_LEN,
            });
        };
        let got = read_full(stream, payload)?;
        if got < len {
            return Err(VpcdError::Truncated { expected: len, got });
        }
        let payload: &[u8] = payload;
        match payload {
            // vicc skips an empty frame; vpcd never sends one.
            [] => {}
            [CTRL_OFF] => card.power_off(),
            [CTRL_ON] => card.power_on(),
            [CTRL_RESET] => card.reset(),
            [CTRL_ATR] => {
                let atr = card.atr();
                if atr.len() > MAX_ATR_LEN {
                    return Err(VpcdError::AtrTooLong {
                        len: atr.len(),
                        max: MAX_ATR_LEN,
                    });
                }
                write_frame(stream, &atr)?;
            }
            // An unknown control code: skipped, as vicc does. Answering it
            // would shift every later answer by one frame.
            [_] => {}
            apdu => {
                let response = card.transmit(apdu);
                if response.is_empty() {
                    return Err(VpcdError::EmptyResponse);
                }
                write_frame(stream, &response)?;
            }
        }
    }
}

/// The next frame's length, or `None` at end of file before its first byte.
fn read_frame_len<R: Read>(stream: &mut R) -> Result<Option<usize>, VpcdError> {
    let mut prefix = [0u8; 2];
    match read_full(stream, &mut prefix)? {
        0 => Ok(None),
        2 => Ok(Some(usize::from(u16::from_be_bytes(prefix)))),
        got => Err(VpcdError::Truncated { expected: 2, got }),
    }
}

/// Read until `buf` is full or the stream ends; the number of bytes read.
/// Unlike `read_exact`, tells a clean end of file (0) from a cut (partial).
fn read_full<R: Read>(stream: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match stream.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Send one frame: the length prefix and the payload in one write, so that
/// an answer leaves in one TCP segment.
fn write_frame<W: Write>(stream: &mut W, payload: &[u8]) -> Result<(), VpcdError> {
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_FRAME_LEN)
        .ok_or(VpcdError::ResponseTooLong {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        })?;
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)?;
    stream.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// An in-memory connection: vpcd's frames in, the card's answers out.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Duplex {
        fn new(input: Vec<u8>) -> Self {
            Self {
                input: Cursor::new(input),
                output: Vec::new(),
            }
        }
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Hands out one byte per read, with an `Interrupted` before each: the
    /// way a socket may split frames.
    struct Trickle {
        inner: Duplex,
        interrupt_next: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.interrupt_next = !self.interrupt_next;
            if self.interrupt_next {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = buf.len().min(1);
            self.inner.read(&mut buf[..n])
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A card that records what it was asked and answers `CA FE 90 00`.
    #[derive(Default)]
    struct FakeCard {
        events: Vec<String>,
        atr: Option<Vec<u8>>,
        response: Option<Vec<u8>>,
    }

    impl VirtualCard for FakeCard {
        fn atr(&self) -> Vec<u8> {
            self.atr.clone().unwrap_or_else(|| DEFAULT_ATR.to_vec())
        }
        fn power_on(&mut self) {
            self.events.push("on".into());
        }
        fn power_off(&mut self) {
            self.events.push("off".into());
        }
        fn reset(&mut self) {
            self.events.push("reset".into());
        }
        fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
            self.events
                .push(format!("apdu {}", hex::encode_upper(apdu)));
            self.response
                .clone()
                .unwrap_or_else(|| vec![0xCA, 0xFE, 0x90, 0x00])
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in payloads {
            v.extend(frame(p));
        }
        v
    }

    const SELECT_ISD: &[u8] = &[
        0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn a_session_power_on_atr_apdu_power_off_then_eof() {
        let mut io = Duplex::new(frames(&[&[CTRL_ON], &[CTRL_ATR], SELECT_ISD, &[CTRL_OFF]]));
        let mut card = FakeCard::default();
        serve(&mut io, &mut card).unwrap();
        assert_eq!(
            card.events,
            ["on", "apdu 00A4040008A000000151000000", "off"]
        );
        // Answers only to the ATR request and the APDU, in order.
        let mut expected = frame(DEFAULT_ATR);
        expected.extend(frame(&[0xCA, 0xFE, 0x90, 0x00]));
        assert_eq!(io.output, expected);
    }

    #[test]
    fn reset_reaches_the_card_without_an_answer() {
        let mut io = Duplex::new(frames(&[&[CTRL_RESET]]));
        let mut card = FakeCard::default();
        serve(&mut io, &mut card).unwrap();
        assert_eq!(card.events, ["reset"]);
        assert!(io.output.is_empty());
    }

    #[test]
    fn eof_before_any_frame_is_a_clean_end() {
        let mut io = Duplex::new(Vec::new());
        let mut card = FakeCard::default();
        serve(&mut io, &mut card).unwrap();
        assert!(card.events.is_empty());
        assert!(io.output.is_empty());
    }

    #[test]
    fn frames_split_into_single_bytes_and_interrupted_reads_still_parse() {
        let mut io = Trickle {
            inner: Duplex::new(frames(&[&[CTRL_ON], SELECT_ISD])),
            interrupt_next: false,
        };
        let mut card = FakeCard::default();
        serve(&mut io, &mut card).unwrap();
        assert_eq!(card.events, ["on", "apdu 00A4040008A000000151000000"]);
        assert_eq!(io.inner.output, frame(&[0xCA, 0xFE, 0x90, 0x00]));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_its_payload_is_read() {
        // Length only, no payload: the refusal must not wait for (or
        // allocate) the 65 535 announced bytes.
        let mut io = Duplex::new(vec![0xFF, 0xFF]);
        let mut card = FakeCard::default();
        let err = serve(&mut io, &mut card).unwrap_err();
        assert!(
            matches!(
                err,
                VpcdError::FrameTooLong {
                    len: 0xFFFF,
                    max: MAX_FRAME_LEN
                }
            ),
            "{err:?}"
        );
        assert!(card.events.is_empty());
        assert!(io.output.is_empty());
    }

    #[test]
    fn the_largest_accepted_frame_and_one_byte_more() {
        let mut apdu = vec![0x80, 0xE2, 0x00, 0x00];
        apdu.resize(MAX_FRAME_LEN, 0x5A);
        let mut io = Duplex::new(frame(&apdu));
        let mut card = FakeCard::default();
        serve(&mut io, &mut card).unwrap();
        assert_eq!(card.events.len(), 1);

        apdu.push(0x5A);
        let mut io = Duplex::new(frame(&apdu));
        let mut card = FakeCard::default();
        let err = serve(&mut io, &mut card).unwrap_err();
        assert!(matches!(err, VpcdError::FrameTooLong { len, .. } if len == MAX_FRAME_LEN + 1));
        assert!(card.events.is_empty());
    }

    #[test]
    fn a_frame_cut_in_its_payload_is_truncated() {
        let mut input = frames(&[&[CTRL_ON]]);
        input.extend_from_slice(&[0x00, 0x0D, 0x00, 0xA4, 0x04]); // 3 of 13 bytes
        let mut io = Duplex::new(input);
        let mut card = FakeCard::default();
        let err = serve(&mut io, &mut card).unwrap_err();
        assert!(
            matches!(
                err,
                VpcdError::Truncated {
                    expected: 13,
                    got: 3
                }
            ),
            "{err:?}"
        );
        // The complete frame before it was served; the cut one never
        // reached the card.
        assert_eq!(card.events, ["on"]);
        assert!(io.output.is_empty());
    }

    #[test]
    fn a_frame_cut_in_its_length_prefix_is_truncated() {
        let mut io = Duplex::new(vec![0x00]);
        let mut card = FakeCard::default();
        let err = serve(&mut io, &mut card).unwrap_err();
        assert!(
            matches!(
                err,
                VpcdError::Truncated {
                    expected: 2,
                    got: 1
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn empty_frames_and_unknown_control_codes_are_skipped_silently() {
        let mut io = Duplex::new(frames(&[&[], &[0x03], &[0xFF], &[CTRL_ATR]]));
        let mut card = FakeCard::default();
        serve(&mut io, &mut card).unwrap();
        assert!(card.events.is_empty());
        // Only the ATR request was answered: the stream stays in step.
        assert_eq!(io.output, frame(DEFAULT_ATR));
    }

    #[test]
    fn an_empty_response_is_an_error_not_a_removed_card() {
        let mut io = Duplex::new(frames(&[SELECT_ISD]));
        let mut card = FakeCard {
            response: Some(Vec::new()),
            ..FakeCard::default()
        };
        let err = serve(&mut io, &mut card).unwrap_err();
        assert!(matches!(err, VpcdError::EmptyResponse), "{err:?}");
        assert!(io.output.is_empty());
    }

    #[test]
    fn an_oversized_response_is_an_error() {
        let mut io = Duplex::new(frames(&[SELECT_ISD]));
        let mut card = FakeCard {
            response: Some(vec![0x90; MAX_FRAME_LEN + 1]),
            ..FakeCard::default()
        };
        let err = serve(&mut io, &mut card).unwrap_err();
        assert!(matches!(err, VpcdError::ResponseTooLong { .. }), "{err:?}");
        assert!(io.output.is_empty());
    }

    #[test]
    fn an_empty_atr_is_sent_as_card_removed_and_a_long_one_refused() {
        let mut io = Duplex::new(frames(&[&[CTRL_ATR]]));
        let mut card = FakeCard {
            atr: Some(Vec::new()),
            ..FakeCard::default()
        };
        serve(&mut io, &mut card).unwrap();
        assert_eq!(io.output, [0x00, 0x00]);

        let mut io = Duplex::new(frames(&[&[CTRL_ATR]]));
        let mut card = FakeCard {
            atr: Some(vec![0x3B; MAX_ATR_LEN + 1]),
            ..FakeCard::default()
        };
        let err = serve(&mut io, &mut card).unwrap_err();
        assert!(
            matches!(err, VpcdError::AtrTooLong { len: 34, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_write_error_is_an_io_error() {
        struct Broken(Cursor<Vec<u8>>);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut io = Broken(Cursor::new(frames(&[&[CTRL_ATR]])));
        let mut card = FakeCard::default();
        let err = serve(&mut io, &mut card).unwrap_err();
        assert!(matches!(err, VpcdError::Io(ref e) if e.kind() == io::ErrorKind::BrokenPipe));
    }

    #[test]
    fn default_atr_is_well_formed() {
        let atr = DEFAULT_ATR;
        assert!(atr.len() <= MAX_ATR_LEN);
        assert_eq!(atr[0], 0x3B, "direct convention");
        // T0: TD1 present, K historical bytes.
        let k = usize::from(atr[1] & 0x0F);
        assert_eq!(atr[1] & 0xF0, 0x80);
        // TD1 = 80 (TD2 follows, T=0), TD2 = 01 (T=1, nothing follows).
        assert_eq!(&atr[2..4], &[0x80, 0x01]);
        // TS, T0, TD1, TD2, K historical bytes, TCK.
        assert_eq!(atr.len(), 4 + k + 1);
        // TCK: T0 through TCK XOR to zero.
        assert_eq!(atr[1..].iter().fold(0u8, |x, b| x ^ b), 0);
        // The historical bytes name the card.
        assert_eq!(&atr[4..6], &[0x80, 0x5A]);
        assert_eq!(&atr[6..16], b"TESSERA-SE");
    }
}
