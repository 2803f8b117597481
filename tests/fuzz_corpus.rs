//! Robustness of the network-facing parsers without cargo-fuzz (runs in every `cargo test`):
//! replays the seed corpus of the fuzz targets (fuzz/corpus/<target>/) through
//! `myonode::fuzzing`, then a bounded, deterministic mutation run over the seeds (bit flips,
//! byte overwrites with boundary values, 16/32-bit length fields set to boundary values,
//! truncation, splicing). A panic fails the test and leaves the input in
//! target/fuzz-failures/<target>-<hash> for `cargo fuzz run <target> <file>`.
//! This test binary uses the fuzz targets' bounded global allocator, so a trusted length field
//! (any single allocation above 64 MiB) aborts it, as it crashes the fuzz targets.
//! Coverage-guided fuzzing: see fuzz/README.md.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use myonode::fuzzing::{pdu_and_command, received_data_set};
use myonode::receive::store::ReceivedUids;

/// A single allocation above 64 MiB aborts this test binary: a trusted length field.
#[global_allocator]
static ALLOC: myonode::fuzzing::BoundedAllocator = myonode::fuzzing::BoundedAllocator;

/// Mutations per seed (bounded: the whole test takes seconds in a debug build).
const MUTATIONS_PER_SEED: usize = 200;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "seed corpus {} has too few seeds", dir.display());
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// xorshift64* — deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(rng.next() as u8);
        }
        let p = rng.below(v.len());
        match rng.below(6) {
            0 => v[p] ^= 1 << rng.below(8),
            1 => v[p] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF][rng.below(6)],
            2 if v.len() >= p + 2 => {
                let x: u16 = [0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF][rng.below(6)];
                v[p..p + 2].copy_from_slice(&x.to_le_bytes());
            }
            3 if v.len() >= p + 4 => {
                let x: u32 = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF, v.len() as u32][rng.below(7)];
                if rng.below(2) == 0 {
                    v[p..p + 4].copy_from_slice(&x.to_le_bytes());
                } else {
                    v[p..p + 4].copy_from_slice(&x.to_be_bytes());
                }
            }
            4 => v.truncate(p),
            _ => {
                let q = rng.below(other.len());
                v.truncate(p);
                v.extend_from_slice(&other[q..]);
            }
        }
    }
    v
}

fn keep_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    for b in input {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let p = if target.ends_with("-current") { dir.join(target) } else { dir.join(format!("{target}-{h:016x}")) };
    std::fs::write(&p, input).unwrap();
    p
}

/// Run `f` on every seed and on the mutations; returns how many inputs `f` called a success.
/// Mutated inputs for which `skip` is true are not run (see the known gap below).
fn run<T>(target: &str, f: fn(&[u8]) -> T, success: fn(&T) -> bool, skip: fn(&[u8]) -> bool) -> (usize, usize) {
    let seeds = corpus(target);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    let mut inputs: Vec<Vec<u8>> = seeds.clone();
    for (i, s) in seeds.iter().enumerate() {
        for _ in 0..MUTATIONS_PER_SEED {
            let other = &seeds[(i + 1 + rng.below(seeds.len())) % seeds.len()];
            let m = mutate(&mut rng, s, other);
            if !skip(&m) {
                inputs.push(m);
            }
        }
    }
    let total = inputs.len();
    let mut ok = 0;
    let slow = std::time::Duration::from_secs(2);
    for input in &inputs {
        if std::env::var_os("MYONODE_FUZZ_TRACE").is_some() {
            keep_failure(&format!("{target}-current"), input); // the input a hang is stuck on
        }
        let t0 = std::time::Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| f(input)));
        if t0.elapsed() > slow {
            eprintln!("{target}: slow input ({:?}) kept in {}", t0.elapsed(), keep_failure(target, input).display());
        }
        match r {
            Ok(r) => ok += success(&r) as usize,
            Err(_) => panic!("{target} panicked; input kept in {}", keep_failure(target, input).display()),
        }
    }
    (ok, total)
}

#[test]
fn pdu_and_command_corpus_and_mutations_never_panic() {
    // the seeds themselves: the C-ECHO and C-STORE PDUs are complete messages
    let messages: usize = corpus("pdu_and_command").iter().map(|s| pdu_and_command(s)).sum();
    assert!(messages >= 3, "seed PDUs should yield the C-ECHO, fragmented C-ECHO and C-STORE messages, got {messages}");
    let (parsed, total) = run("pdu_and_command", pdu_and_command, |n| *n > 0, |_| false);
    eprintln!("pdu_and_command: {total} inputs, {parsed} yielded a DIMSE message");
    assert!(parsed > 0 && parsed < total, "mutations should both keep and break messages ({parsed}/{total})");
}

#[test]
fn received_data_set_corpus_and_mutations_never_panic() {
    let accepted = corpus("received_data_set").iter().filter(|s| received_data_set(s)).count();
    assert!(accepted >= 6, "the header seeds in implicit/explicit LE and explicit BE are acceptable, got {accepted}");
    let (ok, total) = run("received_data_set", received_data_set, |a| *a, |_| false);
    eprintln!("received_data_set: {total} inputs, {ok} accepted");
    assert!(ok > 0 && ok < total, "mutations should both keep and break data sets ({ok}/{total})");
}

/// Regression (found by this mutation run): an Explicit VR Big Endian data set (retired
/// transfer syntax, formerly decoded fully by dicom-rs, unscanned) with a value length near
/// 4 GiB made the decoder allocate for it for seconds per instance; now the structural scan
/// covers big endian and refuses it. Reproducer: fuzz/regressions/received_data_set-big-endian-huge-length.
#[test]
fn big_endian_huge_length_is_refused() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/received_data_set-big-endian-huge-length");
    assert!(!received_data_set(&std::fs::read(p).unwrap()));
}

/// Regression (found by `pdu_and_command`): a short command set whose AffectedSOPClassUID
/// claims a length near 4 GiB is refused by the length pre-check, not handed to the decoder.
#[test]
fn command_with_huge_element_length_is_refused_by_the_length_check() {
    let mut cmd = Vec::new();
    cmd.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0]); // (0000,0000) UL 18
    cmd.extend_from_slice(&[0, 0, 2, 0, 0xF0, 0xFF, 0xFF, 0xFF]); // (0000,0002) length FFFFFFF0H
    cmd.extend_from_slice(b"1.2.840.10008.1.1\0");
    let err = myonode::dimse::CommandSet::decode(&cmd).unwrap_err().to_string();
    assert!(err.contains("exceeds the command set"), "{err}");
}

/// Regression (found by this mutation run in big endian): SeriesInstanceUID mutated into
/// `(0000,0006) II` — a VR the standard does not define. The structural scan read it with a
/// 2-byte length (64) and passed the data set on; dicom-rs's decoder reads an undefined VR with
/// the 12-byte header form (PS3.5 6.2) and took the value bytes "1.3." as a length of ~800 MB,
/// allocating for it (6.6 s per instance). The scan now uses the 12-byte form for undefined VRs
/// too and refuses the length. Reproducer: fuzz/regressions/received_data_set-undefined-vr-long-length.
#[test]
fn undefined_vr_with_long_length_is_refused() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/received_data_set-undefined-vr-long-length");
    let input = std::fs::read(p).unwrap();
    assert!(!received_data_set(&input));
    // refused by the structural scan at the `II` element (offset 1036), not left to dicom-rs;
    // the same data set in explicit VR little endian is refused the same way
    let le = le_from_be(&input[1..]);
    for (ds, ts) in [(&input[1..], "1.2.840.10008.1.2.2"), (&le[1..], "1.2.840.10008.1.2.1")] {
        match myonode::receive::store::read_uids_checked(ds, ts) {
            ReceivedUids::Refused(reason) => assert!(reason.contains("1036") && reason.contains("value length exceeds"), "{ts}: {reason}"),
            ReceivedUids::Valid(u) => panic!("{ts}: accepted {u:?}"),
        }
    }
}

/// Selector byte for Explicit VR Little Endian + `ds` (explicit VR big endian, no sequences,
/// text and UI values only swapped where binary) re-encoded little endian; stops at the first
/// element whose header does not fit.
fn le_from_be(ds: &[u8]) -> Vec<u8> {
    let long = |vr: &[u8]| !matches!(vr, b"AE" | b"AS" | b"AT" | b"CS" | b"DA" | b"DS" | b"DT" | b"FD" | b"FL" | b"IS" | b"LO"
        | b"LT" | b"PN" | b"SH" | b"SL" | b"SS" | b"ST" | b"TM" | b"UI" | b"UL" | b"US");
    let mut out = vec![1u8];
    let mut p = 0;
    while p + 8 <= ds.len() {
        let vr = &ds[p + 4..p + 6];
        out.extend_from_slice(&[ds[p + 1], ds[p], ds[p + 3], ds[p + 2], vr[0], vr[1]]);
        // the undefined VR `II` keeps its (2-byte) header bytes as they are, swapped
        if long(vr) && vr != b"II" {
            out.extend_from_slice(&ds[p + 6..]);
            break;
        }
        let len = u16::from_be_bytes([ds[p + 6], ds[p + 7]]) as usize;
        out.extend_from_slice(&(len as u16).to_le_bytes());
        let end = (p + 8 + len).min(ds.len());
        let value = &ds[p + 8..end];
        if vr == b"US" && value.len() == 2 {
            out.extend_from_slice(&[value[1], value[0]]);
        } else {
            out.extend_from_slice(value);
        }
        p = end;
    }
    out
}

/// Regression (found by cargo-fuzz with the bounded allocator): a 9-byte "deflated" data set
/// (Deflated Explicit VR Little Endian, formerly handed whole to dicom-rs) inflated into an
/// element declaring ~4 GiB, which dicom-rs reserved before reading. The node now inflates
/// (bounded) and scans the result as explicit little endian, so the refusal names the scan's
/// offset or the inflation, never the decoder. Reproducer: fuzz/regressions/received_data_set-deflated-huge-length-1.
#[test]
fn deflated_huge_length_is_refused_before_the_decoder() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/received_data_set-deflated-huge-length-1");
    let input = std::fs::read(p).unwrap();
    assert_eq!(input[0] as usize % myonode::fuzzing::FUZZ_TRANSFER_SYNTAXES.len(), 3, "selector must pick the deflated syntax");
    match myonode::receive::store::read_uids_checked(&input[1..], "1.2.840.10008.1.2.1.99") {
        ReceivedUids::Refused(reason) => assert!(reason.contains(" at byte ") && !reason.contains("decod"), "{reason}"),
        other => panic!("accepted: {other:?}"),
    }
}

/// Regression (found by cargo-fuzz once the target decodes accepted data sets as the assemble
/// stage does): `(0018,9307) FD` with a value length of 41 bytes in Explicit VR Big Endian. The
/// scan skipped 41 bytes; dicom-rs reads 41 / 8 = 5 values (40 bytes) but counts 41 as read, so
/// every later header was read one byte early and a value's bytes became a length of 138 MB,
/// reserved and zero-filled while decoding the stored file. The scan now refuses binary VRs
/// whose length is not a multiple of their value size (PS3.5 6.2), in every encoding.
/// Reproducer: fuzz/regressions/received_data_set-fd-length-not-multiple-of-8.
#[test]
fn binary_value_length_not_a_multiple_of_its_size_is_refused() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/received_data_set-fd-length-not-multiple-of-8");
    let input = std::fs::read(p).unwrap();
    assert_eq!(input[0] as usize % myonode::fuzzing::FUZZ_TRANSFER_SYNTAXES.len(), 2, "selector must pick big endian");
    assert!(!received_data_set(&input)); // would abort under the bounded allocator if accepted
    match myonode::receive::store::read_uids_checked(&input[1..], "1.2.840.10008.1.2.2") {
        ReceivedUids::Refused(reason) => assert!(reason.contains("value length 41 of VR FD is not a multiple of 8"), "{reason}"),
        other => panic!("accepted: {other:?}"),
    }
    // the same rule in Implicit VR Little Endian, where the VR comes from the dictionary:
    // SliceThickness is DS (any length), (0018,9307) is FD
    let implicit = |tag: [u8; 4], len: u32| {
        let mut v = tag.to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend(std::iter::repeat(0x30).take(len as usize));
        v
    };
    let uids = [[8u8, 0, 0x16, 0], [8, 0, 0x18, 0], [0x20, 0, 0x0D, 0], [0x20, 0, 0x0E, 0]]
        .iter()
        .flat_map(|t| {
            let mut v = t.to_vec();
            v.extend_from_slice(&6u32.to_le_bytes());
            v.extend_from_slice(b"1.2.3\0");
            v
        })
        .collect::<Vec<u8>>();
    let ok = [uids.clone(), implicit([0x18, 0, 0x50, 0], 3), implicit([0x18, 0, 0x07, 0x93], 16)].concat();
    assert!(matches!(myonode::receive::store::read_uids_checked(&ok, "1.2.840.10008.1.2"), ReceivedUids::Valid(_)));
    let odd = [uids, implicit([0x18, 0, 0x07, 0x93], 12)].concat();
    match myonode::receive::store::read_uids_checked(&odd, "1.2.840.10008.1.2") {
        ReceivedUids::Refused(reason) => assert!(reason.contains("of VR FD is not a multiple of 8"), "{reason}"),
        other => panic!("accepted: {other:?}"),
    }
}
