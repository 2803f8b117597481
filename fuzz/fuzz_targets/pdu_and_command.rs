//! PDU stream → P-DATA-TF PDVs → DIMSE message assembly → command set decoding
//! (`myonode::fuzzing::pdu_and_command`).
#![no_main]
use libfuzzer_sys::fuzz_target;

/// A single allocation above 64 MiB aborts (a crash for libFuzzer): a trusted length field.
#[global_allocator]
static ALLOC: myonode::fuzzing::BoundedAllocator = myonode::fuzzing::BoundedAllocator;

fuzz_target!(|data: &[u8]| {
    myonode::fuzzing::pdu_and_command(data);
});
