//! Entry points for fuzzing the network-facing parsers (issue #7): the fuzz targets in
//! `fuzz/` (cargo-fuzz, libFuzzer) and the corpus replay in `tests/fuzz_corpus.rs` call these
//! with arbitrary bytes. Each must return normally for every input — a panic, an abort or an
//! unbounded allocation is a bug — and checks invariants the receive path relies on.

use dicom_encoding::TransferSyntaxIndex;

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

/// The data set path of a received C-STORE and of its later decoding: `data[0]` selects one of
/// [`FUZZ_TRANSFER_SYNTAXES`], `data[1..]` is the data set, run through [`read_uids_checked`]
/// (structural scan + UID validation), as the SCP does before acknowledging. An accepted data
/// set is then decoded in full with dicom-rs, as the assemble stage decodes every stored
/// instance: the scan must refuse whatever dicom-rs would read with element boundaries the scan
/// did not check, so under [`BoundedAllocator`] any disagreement that lets dicom-rs trust a
/// length is a finding. (Deflated inputs are decoded from their bounded inflation, as Explicit
/// VR Little Endian.) Returns whether the instance would be accepted.
///
/// # Panics
/// Only if an invariant breaks: an accepted UID that could escape the spool folder.
pub fn received_data_set(data: &[u8]) -> bool {
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let Some((&selector, dataset)) = data.split_first() else { return false };
    let ts = FUZZ_TRANSFER_SYNTAXES[selector as usize % FUZZ_TRANSFER_SYNTAXES.len()];
    match read_uids_checked(dataset, ts) {
        ReceivedUids::Valid(uids) => {
            for u in &uids {
                assert!(is_valid_uid(u) && !u.contains('/') && !u.contains(".."), "unsafe UID accepted: {u:?}");
            }
            let (bytes, ts) = if ts == "1.2.840.10008.1.2.1.99" {
                let mut inflated = Vec::new();
                let mut r = std::io::Read::take(flate2::read::DeflateDecoder::new(dataset), 1 << 30);
                if std::io::Read::read_to_end(&mut r, &mut inflated).is_err() {
                    return true;
                }
                (std::borrow::Cow::Owned(inflated), "1.2.840.10008.1.2.1")
            } else {
                (std::borrow::Cow::Borrowed(dataset), ts)
            };
            let ts = TransferSyntaxRegistry.get(ts).expect("fuzzed transfer syntaxes are registered");
            let _ = dicom_object::InMemDicomObject::read_dataset_with_ts(&bytes[..], ts);
            true
        }
        ReceivedUids::Refused(_) => false,
    }
}

/// Largest single allocation the fuzz targets allow, bytes (64 MiB): four times the
/// [`FUZZ_MAX_MESSAGE_BYTES`] a growing message buffer may reach; the inputs are at most a few
/// KB, so anything larger means a length field was trusted.
pub const FUZZ_MAX_ALLOCATION: usize = 64 << 20;

/// Global allocator of the fuzz targets (`#[global_allocator] static A: BoundedAllocator =
/// BoundedAllocator;`): the system allocator, except that an allocation or reallocation larger
/// than [`FUZZ_MAX_ALLOCATION`] writes `fuzz: allocation of N bytes exceeds the limit` to
/// stderr and aborts — libFuzzer reports the abort as a crash and keeps the input. This finds
/// unbounded allocations deterministically, without AddressSanitizer's `-malloc_limit_mb`
/// (which needs its malloc hooks) and without relying on slowness or RSS.
#[derive(Debug, Default, Clone, Copy)]
pub struct BoundedAllocator;

impl BoundedAllocator {
    #[cold]
    fn too_large(size: usize) -> ! {
        use std::io::Write;
        // no heap use here: fixed buffer, unbuffered stderr
        let mut buf = [0u8; 96];
        let mut w = &mut buf[..];
        let _ = write!(w, "fuzz: allocation of {size} bytes exceeds the limit of {FUZZ_MAX_ALLOCATION}\n");
        let n = 96 - w.len();
        let _ = std::io::stderr().write_all(&buf[..n]);
        std::process::abort()
    }
}

// SAFETY: forwards every call unchanged to `System`, which upholds the `GlobalAlloc`
// contract; the only addition is aborting before an oversized request.
unsafe impl std::alloc::GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > FUZZ_MAX_ALLOCATION {
            Self::too_large(layout.size());
        }
        std::alloc::System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > FUZZ_MAX_ALLOCATION {
            Self::too_large(layout.size());
        }
        std::alloc::System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > FUZZ_MAX_ALLOCATION {
            Self::too_large(new_size);
        }
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}
