//! PDU stream → P-DATA-TF PDVs → DIMSE message assembly → command set decoding
//! (`myonode::fuzzing::pdu_and_command`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    myonode::fuzzing::pdu_and_command(data);
});
