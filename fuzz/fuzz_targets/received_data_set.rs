//! C-STORE data set → structural scan → UID validation → full dicom-rs decode (as assemble)
//! (`myonode::fuzzing::received_data_set`; first byte selects the transfer syntax).
#![no_main]
use libfuzzer_sys::fuzz_target;

/// A single allocation above 64 MiB aborts (a crash for libFuzzer): a trusted length field.
#[global_allocator]
static ALLOC: myonode::fuzzing::BoundedAllocator = myonode::fuzzing::BoundedAllocator;

fuzz_target!(|data: &[u8]| {
    myonode::fuzzing::received_data_set(data);
});
