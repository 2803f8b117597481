//! Entry points for fuzzing the network-facing parsers (issue #7): the fuzz targets in
//! `fuzz/` (cargo-fuzz, libFuzzer) and the corpus replay in `tests/fuzz_corpus.rs` call these
//! with arbitrary bytes. Each must return normally for every input — a panic, an abort or an
//! unbounded allocation is a bug — and checks invariants the receive path relies on.

use crate::dimse::command::CommandSet;
use crate::dimse::message::MessageAssembler;
use crate::receive::store::{read_uids_checked, ReceivedUids};
use crate::spool::is_valid_uid;
use dicom_ul::pdu::Pdu;

/// Largest PDU the fuzzed reader accepts, bytes (the SCP default `receive.max_pdu_length`).
pub const FUZZ_MAX_PDU_LENGTH: u32 = 131_072;
/// Message size limit of the fuzzed [`MessageAssembler`], bytes (bounded so a fuzz input
/// cannot make the harness allocate without limit).
pub const FUZZ_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The PDU → DIMSE path of an association (PS3.8 9.3, Annex E): `data` is read as a stream of
/// PDUs with dicom-ul's strict reader (max PDU length [`FUZZ_MAX_PDU_LENGTH`]); the PDVs of
/// every P-DATA-TF go through a [`MessageAssembler`] (which decodes command sets with
/// [`CommandSet::decode`]) until the first error, as the SCP does before aborting; `data` is
/// also decoded directly as a command set. Returns the number of complete DIMSE messages.
///
/// # Panics
/// Only if an invariant breaks: a decoded command set fails to re-encode.
pub fn pdu_and_command(data: &[u8]) -> usize {
    if let Ok(cmd) = CommandSet::decode(data) {
        cmd.encode().expect("a decoded command set re-encodes");
    }
    let mut cursor: &[u8] = data;
    let mut asm = MessageAssembler::with_limit(FUZZ_MAX_MESSAGE_BYTES);
    let mut messages = 0;
    loop {
        let before = cursor.len();
        match dicom_ul::pdu::read_pdu(&mut cursor, FUZZ_MAX_PDU_LENGTH, true) {
            Ok(Some(Pdu::PData { data })) => {
                if asm.push_pdu(data).is_err() {
                    break;
                }
                while let Some(m) = asm.next_message() {
                    m.command.encode().expect("a decoded command set re-encodes");
                    messages += 1;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
        if cursor.len() == before {
            break; // no progress
        }
    }
    messages
}

/// Transfer syntaxes the data set target chooses from with the first input byte: Implicit VR
/// Little Endian, Explicit VR Little Endian, Explicit VR Big Endian (retired; dicom-rs path),
/// Deflated Explicit VR Little Endian (dicom-rs path), JPEG Baseline (encapsulated pixel data).
pub const FUZZ_TRANSFER_SYNTAXES: [&str; 5] =
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50"];

/// The data set path of a received C-STORE: `data[0]` selects one of
/// [`FUZZ_TRANSFER_SYNTAXES`], `data[1..]` is the data set, run through
/// [`read_uids_checked`] (structural scan + dicom-rs fallback + UID validation). Returns
/// whether the instance would be accepted.
///
/// # Panics
/// Only if an invariant breaks: an accepted UID that could escape the spool folder.
pub fn received_data_set(data: &[u8]) -> bool {
    let Some((&selector, dataset)) = data.split_first() else { return false };
    let ts = FUZZ_TRANSFER_SYNTAXES[selector as usize % FUZZ_TRANSFER_SYNTAXES.len()];
    match read_uids_checked(dataset, ts) {
        ReceivedUids::Valid(uids) => {
            for u in &uids {
                assert!(is_valid_uid(u) && !u.contains('/') && !u.contains(".."), "unsafe UID accepted: {u:?}");
            }
            true
        }
        ReceivedUids::Refused(_) => false,
    }
}
