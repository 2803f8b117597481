//! The durable on-disk spool.
//!
//! ```text
//! <spool>/incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   received instances (Part-10 files)
//! <spool>/tmp/                        partially written files (same file system, cleared at start)
//! <spool>/jobs/<job_id>/              per-job working files (label map, measurements)
//! <spool>/outbox/<destination>/       encoded objects waiting for delivery
//! <spool>/sent/<destination>/         delivered objects
//! <spool>/failed/<destination>/       dead letters, with a `.reason.txt` beside each
//! <spool>/quarantine/<SeriesInstanceUID>/  series that could not be processed, with `REASON.txt`
//! ```
//!
//! Durability: a file is written to `tmp/`, `fsync`ed, renamed into place and
//! its directory `fsync`ed before [`Spool::store_instance`] returns, so an
//! instance acknowledged with C-STORE-RSP success survives a crash or power loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Errors of spool operations.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A UID that is not a valid DICOM UID (PS3.5 9.1: digits and dots, ≤ 64 chars) cannot become a file name.
    #[error("invalid {what} `{uid}`: not a DICOM UID")]
    InvalidUid { what: &'static str, uid: String },
    /// A file-system operation failed (disk full, permissions, …).
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

/// Result of storing one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly written to this path.
    Stored(PathBuf),
    /// An instance with this SOPInstanceUID was already stored at this path; nothing written.
    Duplicate(PathBuf),
}

impl StoreOutcome {
    /// Path of the instance in the spool.
    pub fn path(&self) -> &Path {
        match self {
            StoreOutcome::Stored(p) | StoreOutcome::Duplicate(p) => p,
        }
    }
}

/// Identity of a received instance, from its command set and dataset.
#[derive(Debug, Clone)]
pub struct InstanceIdentity<'a> {
    pub study_instance_uid: &'a str,
    pub series_instance_uid: &'a str,
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    /// Transfer syntax UID the dataset bytes are encoded in.
    pub transfer_syntax_uid: &'a str,
}

/// Handle to the spool directory. Cheap to share (`Arc<Spool>`); all methods take `&self`.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    fsync: bool,
    counter: AtomicU64,
}

/// `true` if `uid` is a syntactically valid DICOM UID (PS3.5 9.1): 1–64 characters,
/// components of digits separated by single dots, no leading zero in a multi-digit component.
pub fn is_valid_uid(uid: &str) -> bool {
    if uid.is_empty() || uid.len() > 64 {
        return false;
    }
    uid.split('.').all(|c| {
        !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && !(c.len() > 1 && c.starts_with('0'))
    })
}

fn check_uid(what: &'static str, uid: &str) -> Result<(), SpoolError> {
    if is_valid_uid(uid) {
        Ok(())
    } else {
        Err(SpoolError::InvalidUid { what, uid: uid.to_string() })
    }
}

impl Spool {
    /// Open (creating if needed) the spool at `root`; clears leftovers in `tmp/`.
    ///
    /// # Errors
    /// [`SpoolError::Io`] if a directory cannot be created.
    pub fn open(root: impl Into<PathBuf>, fsync: bool) -> Result<Spool, SpoolError> {
        let root = root.into();
        for d in ["incoming", "tmp", "jobs", "outbox", "sent", "failed", "quarantine"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let tmp = root.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Spool { root, fsync, counter: AtomicU64::new(0) })
    }

    /// Spool root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `incoming/<study>/<series>/` directory of a series.
    pub fn series_dir(&self, study_uid: &str, series_uid: &str) -> PathBuf {
        self.root.join("incoming").join(study_uid).join(series_uid)
    }

    /// Where an instance is (or would be) stored.
    pub fn instance_path(&self, id: &InstanceIdentity<'_>) -> PathBuf {
        self.series_dir(id.study_instance_uid, id.series_instance_uid)
            .join(format!("{}.dcm", id.sop_instance_uid))
    }

    /// Durably store one received instance as a DICOM Part-10 file (PS3.10 7.1):
    /// 128-byte preamble, `DICM`, File Meta Information (group 0002, Explicit VR
    /// Little Endian), then `dataset` exactly as received in `id.transfer_syntax_uid`.
    ///
    /// Returns [`StoreOutcome::Duplicate`] without writing if the SOPInstanceUID is already stored.
    ///
    /// # Errors
    /// [`SpoolError::InvalidUid`] if a UID is unfit as a file name; [`SpoolError::Io`] on
    /// any write, fsync or rename failure (the temporary file is removed; nothing half-written remains).
    pub fn store_instance(
        &self,
        id: &InstanceIdentity<'_>,
        dataset: &[u8],
    ) -> Result<StoreOutcome, SpoolError> {
        check_uid("StudyInstanceUID", id.study_instance_uid)?;
        check_uid("SeriesInstanceUID", id.series_instance_uid)?;
        check_uid("SOPInstanceUID", id.sop_instance_uid)?;
        check_uid("SOPClassUID", id.sop_class_uid)?;
        check_uid("TransferSyntaxUID", id.transfer_syntax_uid)?;
        let dest = self.instance_path(id);
        if dest.exists() {
            return Ok(StoreOutcome::Duplicate(dest));
        }
        let meta = part10_header(id.sop_class_uid, id.sop_instance_uid, id.transfer_syntax_uid);
        let dir = dest.parent().expect("instance path has a parent").to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        self.write_atomically(&dest, &[&meta, dataset])?;
        Ok(StoreOutcome::Stored(dest))
    }

    /// Write `parts` concatenated to `dest` via `tmp/`, fsync, rename, fsync the directory.
    ///
    /// # Errors
    /// [`SpoolError::Io`]; the temporary file is removed on failure.
    pub fn write_atomically(&self, dest: &Path, parts: &[&[u8]]) -> Result<(), SpoolError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}-{}.part", std::process::id(), n));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(&tmp))?;
            for p in parts {
                f.write_all(p).map_err(io_err(&tmp))?;
            }
            if self.fsync {
                f.sync_all().map_err(io_err(&tmp))?;
            }
            drop(f);
            fs::rename(&tmp, dest).map_err(io_err(dest))?;
            if self.fsync {
                if let Some(parent) = dest.parent() {
                    sync_dir(parent)?;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The node's Device Observer UID (PS3.16 TID 1004, (121012, DCM)): generated once and kept in
    /// `<spool>/DEVICE_OBSERVER_UID`, so every report of this node names the same device.
    ///
    /// # Errors
    /// [`SpoolError::Io`] if the file cannot be written.
    pub fn device_observer_uid(&self) -> Result<String, SpoolError> {
        let p = self.root.join("DEVICE_OBSERVER_UID");
        if let Ok(s) = fs::read_to_string(&p) {
            let s = s.trim().to_string();
            if is_valid_uid(&s) {
                return Ok(s);
            }
        }
        let uid = crate::uid::new_uid();
        self.write_atomically(&p, &[uid.as_bytes(), b"\n"])?;
        Ok(uid)
    }

    /// Directory of a job (created).
    ///
    /// # Errors
    /// [`SpoolError::Io`] if it cannot be created.
    pub fn job_dir(&self, job_id: &str) -> Result<PathBuf, SpoolError> {
        let p = self.root.join("jobs").join(job_id);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        Ok(p)
    }

    /// Move a series' instances to `quarantine/<series_uid>/` and write `REASON.txt`.
    /// Returns the quarantine directory.
    ///
    /// # Errors
    /// [`SpoolError::Io`] if the move or the reason file fails.
    pub fn quarantine_series(&self, files: &[PathBuf], series_uid: &str, reason: &str) -> Result<PathBuf, SpoolError> {
        let mut qdir = self.root.join("quarantine").join(series_uid);
        let mut k = 1;
        while qdir.exists() {
            k += 1;
            qdir = self.root.join("quarantine").join(format!("{series_uid}.{k}"));
        }
        fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
        for f in files {
            if let Some(name) = f.file_name() {
                let to = qdir.join(name);
                fs::rename(f, &to).map_err(io_err(f))?;
            }
        }
        let rp = qdir.join("REASON.txt");
        self.write_atomically(&rp, &[reason.as_bytes(), b"\n"])?;
        Ok(qdir)
    }

    /// Place an encoded object in `outbox/<destination>/<name>` durably; returns its path.
    ///
    /// # Errors
    /// [`SpoolError::Io`].
    pub fn put_outbox(&self, destination: &str, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        let dir = self.root.join("outbox").join(destination);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let p = dir.join(name);
        self.write_atomically(&p, &[bytes])?;
        Ok(p)
    }

    /// Like [`Spool::put_outbox`], but idempotent for re-run jobs: when `name` is already in
    /// `sent/<destination>/` or `failed/<destination>/` nothing is written and `None` is
    /// returned (the object was delivered or dead-lettered before); when it is already in the
    /// outbox, its path is returned unchanged (the send stage's restart scan queued it).
    ///
    /// # Errors
    /// [`SpoolError::Io`].
    pub fn put_outbox_once(&self, destination: &str, name: &str, bytes: &[u8]) -> Result<Option<PathBuf>, SpoolError> {
        for area in ["sent", "failed"] {
            if self.root.join(area).join(destination).join(name).is_file() {
                return Ok(None);
            }
        }
        let p = self.root.join("outbox").join(destination).join(name);
        if p.is_file() {
            return Ok(Some(p));
        }
        self.put_outbox(destination, name, bytes).map(Some)
    }

    /// Move a delivered object from the outbox to `sent/<destination>/`.
    ///
    /// # Errors
    /// [`SpoolError::Io`].
    pub fn mark_sent(&self, destination: &str, outbox_path: &Path) -> Result<PathBuf, SpoolError> {
        self.move_to(outbox_path, "sent", destination)
    }

    /// Move an undeliverable object to `failed/<destination>/` with a `.reason.txt` beside it.
    ///
    /// # Errors
    /// [`SpoolError::Io`].
    pub fn mark_failed(&self, destination: &str, outbox_path: &Path, reason: &str) -> Result<PathBuf, SpoolError> {
        let to = self.move_to(outbox_path, "failed", destination)?;
        let mut rp = to.clone().into_os_string();
        rp.push(".reason.txt");
        self.write_atomically(Path::new(&rp), &[reason.as_bytes(), b"\n"])?;
        Ok(to)
    }

    fn move_to(&self, from: &Path, area: &str, destination: &str) -> Result<PathBuf, SpoolError> {
        let dir = self.root.join(area).join(destination);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let to = dir.join(from.file_name().unwrap_or_default());
        fs::rename(from, &to).map_err(io_err(from))?;
        if self.fsync {
            sync_dir(&dir)?;
        }
        Ok(to)
    }

    /// All objects waiting in `outbox/<destination>/` (for restart recovery), sorted by name.
    pub fn pending_outbox(&self, destination: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.root.join("outbox").join(destination))
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// All instance files under `incoming/` (for restart recovery).
    pub fn incoming_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let inc = self.root.join("incoming");
        for study in fs::read_dir(&inc).into_iter().flatten().flatten() {
            for series in fs::read_dir(study.path()).into_iter().flatten().flatten() {
                for f in fs::read_dir(series.path()).into_iter().flatten().flatten() {
                    let p = f.path();
                    if p.extension().is_some_and(|e| e == "dcm") {
                        out.push(p);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Implementation Class UID of myonode (2.25 UUID-derived root, PS3.5 B.2).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.200842391735521424905213349126734101431";
/// Implementation Version Name written to File Meta Information.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("MYONODE_", env!("CARGO_PKG_VERSION"));

/// Preamble, `DICM` prefix and File Meta Information group (PS3.10 7.1), Explicit VR Little Endian.
pub fn part10_header(sop_class_uid: &str, sop_instance_uid: &str, transfer_syntax_uid: &str) -> Vec<u8> {
    fn elem(out: &mut Vec<u8>, elem: u16, vr: &[u8; 2], value: &[u8], pad: u8) {
        let mut v = value.to_vec();
        if v.len() % 2 == 1 {
            v.push(pad);
        }
        out.extend_from_slice(&0x0002u16.to_le_bytes());
        out.extend_from_slice(&elem.to_le_bytes());
        out.extend_from_slice(vr);
        if vr == b"OB" {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(&v);
    }
    let mut body = Vec::with_capacity(256);
    elem(&mut body, 0x0001, b"OB", &[0, 1], 0);
    elem(&mut body, 0x0002, b"UI", sop_class_uid.as_bytes(), 0);
    elem(&mut body, 0x0003, b"UI", sop_instance_uid.as_bytes(), 0);
    elem(&mut body, 0x0010, b"UI", transfer_syntax_uid.as_bytes(), 0);
    elem(&mut body, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.as_bytes(), 0);
    elem(&mut body, 0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.as_bytes(), b' ');
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(sop: &'a str) -> InstanceIdentity<'a> {
        InstanceIdentity {
            study_instance_uid: "1.2.3",
            series_instance_uid: "1.2.3.4",
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.4",
            sop_instance_uid: sop,
            transfer_syntax_uid: "1.2.840.10008.1.2.1",
        }
    }

    #[test]
    fn uid_validation_rejects_path_tricks() {
        assert!(is_valid_uid("1.2.840.10008.5.1.4.1.1.4"));
        assert!(!is_valid_uid("../../etc/passwd"));
        assert!(!is_valid_uid("1..2"));
        assert!(!is_valid_uid("1.02"));
        assert!(!is_valid_uid(""));
        assert!(!is_valid_uid(&"1".repeat(65)));
    }

    #[test]
    fn store_is_part10_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), true).unwrap();
        // A minimal explicit VLE dataset: (0008,0018) UI "1.2.5"
        let ds = [0x08, 0, 0x18, 0, b'U', b'I', 6, 0, b'1', b'.', b'2', b'.', b'5', 0];
        let a = spool.store_instance(&id("1.2.5"), &ds).unwrap();
        assert!(matches!(a, StoreOutcome::Stored(_)));
        let b = spool.store_instance(&id("1.2.5"), &ds).unwrap();
        assert!(matches!(b, StoreOutcome::Duplicate(_)));
        let obj = dicom_object::open_file(a.path()).unwrap();
        assert_eq!(obj.meta().media_storage_sop_instance_uid(), "1.2.5");
        assert_eq!(obj.meta().transfer_syntax(), "1.2.840.10008.1.2.1");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(matches!(
            spool.store_instance(&id("1.2.5/../x"), &ds),
            Err(SpoolError::InvalidUid { .. })
        ));
    }
}
