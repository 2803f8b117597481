//! What a durable spool write costs on this disk, step by step (issue #8; not a test).
//!
//! Writes `N` files of `SIZE` bytes into `DIR` (which must be on the file system the spool
//! uses) with several sequences of write / flush / rename / link / directory flush, one file at
//! a time as one DICOM association does, and prints the median and mean time per file of each
//! step. The sequences, from cheapest to the shipped one:
//!
//! | name | sequence | crash-safe? |
//! |---|---|---|
//! | `write` | create+write in place | no: not durable, half-written files visible |
//! | `write+fdatasync` | create+write in place, `fdatasync` | no: the directory entry may be lost |
//! | `tmpdir+fsync+rename+fsync(dir)` | the spool before issue #8 round 3: `tmp/` file, `fsync`, rename into the series directory, `fsync` of it | yes |
//! | `samedir+fdatasync+rename+fsync(dir)` | temporary name in the destination directory, `fdatasync`, rename, `fsync` of the directory | yes |
//! | `O_TMPFILE+fdatasync+linkat+fsync(dir)` | unnamed file in the destination directory, `fdatasync`, `linkat` to its name, `fsync` of the directory | yes |
//! | `O_TMPFILE+sync_file_range+linkat+fsync(dir)` | data written back without a flush, one `fsync` of the directory | only where that `fsync` commits the file's metadata too (ext4 with a jbd2 journal); **not** on ext4 without a journal or btrfs — not used by the spool |
//! | `myonode Spool::store_instance` | the current spool | yes |
//!
//! ```text
//! cargo run --release --example bench_spool -- DIR [N=300] [SIZE=538000] [REPEAT=3]
//! ```
//! The sequences are interleaved `REPEAT` times so drift in the machine's load hits all alike.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use myonode::spool::{InstanceIdentity, Spool};

const STEPS: [&str; 5] = ["write", "file flush", "rename/link", "dir flush", "total"];

#[derive(Default)]
struct Samples {
    per_step: [Vec<Duration>; 5],
}

impl Samples {
    fn push(&mut self, steps: [Duration; 4]) {
        let total = steps.iter().sum();
        for (i, d) in steps.into_iter().chain([total]).enumerate() {
            self.per_step[i].push(d);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn sync_dir(dir: &Path) {
    File::open(dir).and_then(|d| d.sync_all()).expect("fsync dir");
}

/// One file with the given sequence; returns the four step times.
fn one(seq: &str, dir: &Path, tmpdir: &Path, name: &str, data: &[u8]) -> [Duration; 4] {
    let dest = dir.join(name);
    let mut t = [Duration::ZERO; 4];
    let mut clock = Instant::now();
    let mut lap = |i: usize, t: &mut [Duration; 4]| {
        t[i] = clock.elapsed();
        clock = Instant::now();
    };
    match seq {
        "write" | "write+fdatasync" => {
            let mut f = File::create(&dest).expect("create");
            f.write_all(data).expect("write");
            lap(0, &mut t);
            if seq == "write+fdatasync" {
                f.sync_data().expect("fdatasync");
            }
            lap(1, &mut t);
        }
        "tmpdir+fsync+rename+fsync(dir)" => {
            let tmp = tmpdir.join(format!("{name}.part"));
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).expect("create");
            f.write_all(data).expect("write");
            lap(0, &mut t);
            f.sync_all().expect("fsync");
            lap(1, &mut t);
            drop(f);
            fs::rename(&tmp, &dest).expect("rename");
            lap(2, &mut t);
            sync_dir(dir);
            lap(3, &mut t);
        }
        "samedir+fdatasync+rename+fsync(dir)" => {
            let tmp = dir.join(format!(".{name}.part"));
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).expect("create");
            f.write_all(data).expect("write");
            lap(0, &mut t);
            f.sync_data().expect("fdatasync");
            lap(1, &mut t);
            drop(f);
            fs::rename(&tmp, &dest).expect("rename");
            lap(2, &mut t);
            sync_dir(dir);
            lap(3, &mut t);
        }
        "O_TMPFILE+fdatasync+linkat+fsync(dir)" | "O_TMPFILE+sync_file_range+linkat+fsync(dir)" => {
            let mut f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .mode(0o644)
                .open(dir)
                .expect("O_TMPFILE");
            f.write_all(data).expect("write");
            lap(0, &mut t);
            if seq.contains("fdatasync") {
                f.sync_data().expect("fdatasync");
            } else {
                let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                // SAFETY: plain syscall on an open descriptor
                let rc = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, flags) };
                assert_eq!(rc, 0, "sync_file_range: {}", std::io::Error::last_os_error());
            }
            lap(1, &mut t);
            let proc = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("path");
            let to = CString::new(dest.as_os_str().as_bytes()).expect("path");
            // SAFETY: both arguments are valid NUL-terminated paths
            let rc = unsafe { libc::linkat(libc::AT_FDCWD, proc.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
            assert_eq!(rc, 0, "linkat: {}", std::io::Error::last_os_error());
            drop(f);
            lap(2, &mut t);
            sync_dir(dir);
            lap(3, &mut t);
        }
        other => panic!("unknown sequence {other}"),
    }
    t
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = Path::new(args.get(1).expect("usage: bench_spool DIR [N] [SIZE] [REPEAT]")).to_path_buf();
    let n: usize = args.get(2).map(|s| s.parse().expect("N")).unwrap_or(300);
    let size: usize = args.get(3).map(|s| s.parse().expect("SIZE")).unwrap_or(538_000);
    let repeat: usize = args.get(4).map(|s| s.parse().expect("REPEAT")).unwrap_or(3);
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let seqs = [
        "write",
        "write+fdatasync",
        "tmpdir+fsync+rename+fsync(dir)",
        "samedir+fdatasync+rename+fsync(dir)",
        "O_TMPFILE+fdatasync+linkat+fsync(dir)",
        "O_TMPFILE+sync_file_range+linkat+fsync(dir)",
        "myonode Spool::store_instance",
    ];
    let mut samples: Vec<Samples> = seqs.iter().map(|_| Samples::default()).collect();
    for r in 0..repeat {
        for (k, seq) in seqs.iter().enumerate() {
            let base = root.join(format!("r{r}-s{k}"));
            let dir = base.join("series");
            let tmpdir = base.join("tmp");
            fs::create_dir_all(&dir).expect("mkdir");
            fs::create_dir_all(&tmpdir).expect("mkdir");
            sync_dir(&base);
            if *seq == "myonode Spool::store_instance" {
                let spool = Spool::open(base.join("spool"), true).expect("spool");
                for i in 0..n {
                    let sop = format!("1.2.826.0.1.3680043.2.1125.1.{i}");
                    let id = InstanceIdentity {
                        study_instance_uid: "1.2.826.0.1.3680043.2.1125.2",
                        series_instance_uid: "1.2.826.0.1.3680043.2.1125.3",
                        sop_class_uid: "1.2.840.10008.5.1.4.1.1.4",
                        sop_instance_uid: &sop,
                        transfer_syntax_uid: "1.2.840.10008.1.2.1",
                    };
                    let t = Instant::now();
                    spool.store_instance(&id, &data).expect("store");
                    samples[k].push([Duration::ZERO, Duration::ZERO, Duration::ZERO, t.elapsed()]);
                }
            } else {
                for i in 0..n {
                    let t = one(seq, &dir, &tmpdir, &format!("{i}.dcm"), &data);
                    samples[k].push(t);
                }
            }
            fs::remove_dir_all(&base).expect("clean up");
        }
    }
    println!("{n} files of {size} bytes, {repeat} interleaved repetitions, in {}", root.display());
    println!("median ms per file (mean in parentheses)");
    println!("| sequence | {} |", STEPS.join(" | "));
    println!("|---|{}", "---:|".repeat(STEPS.len()));
    for (seq, s) in seqs.iter().zip(&samples) {
        let cells: Vec<String> = s
            .per_step
            .iter()
            .map(|v| {
                let mean = v.iter().sum::<Duration>() / v.len().max(1) as u32;
                format!("{:.3} ({:.3})", ms(median(v)), ms(mean))
            })
            .collect();
        println!("| {seq} | {} |", cells.join(" | "));
    }
}
