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
//! # Durability of received instances
//!
//! Guarantee: when [`Spool::store_instance`] returns `Ok` (and only then is the instance
//! acknowledged with C-STORE-RSP success), the instance survives a process crash or power loss
//! under its final name, and at no time — also after a crash at any point — is a half-written
//! instance visible under a `*.dcm` name. With `spool.fsync = false` only the second half holds.
//!
//! Sequence per instance (Linux; `write_instance`):
//!
//! 1. **Directories.** The first time this process stores into a series directory, it is
//!    created (`mkdir -p`) and every directory that received a new entry (`incoming/`,
//!    `incoming/<study>/`) is `fsync`ed, so the series directory's own name is durable before
//!    anything in it is acknowledged (POSIX: a directory entry is durable only after `fsync` of
//!    the directory that holds it; `fsync(2)` man page, "Calling fsync() does not necessarily
//!    ensure that the entry in the directory containing the file has also reached disk").
//! 2. **Unnamed file.** `open(<series dir>, O_TMPFILE | O_WRONLY)` creates an inode that has no
//!    name (`open(2)`, O_TMPFILE, Linux ≥ 3.11, supported by ext4, XFS, btrfs, tmpfs). A crash
//!    before step 4 leaves no name at all (the orphan inode is freed at mount), so no `tmp/`
//!    clean-up and no second directory are involved.
//! 3. **Data.** The File Meta Information and data set are written, then `fdatasync`: POSIX
//!    "synchronized I/O data integrity completion" — the data and the metadata needed to read
//!    it back (size, block allocation) are on stable storage. Timestamps are not needed, so
//!    `fsync` is not.
//! 4. **Name.** `linkat(/proc/self/fd/N, <series dir>/<SOPInstanceUID>.dcm, AT_SYMLINK_FOLLOW)`
//!    gives the durable data its name atomically (as `open(2)` describes for O_TMPFILE).
//!    `linkat` never replaces an existing name: `EEXIST` means a concurrent store of the same
//!    instance won, reported as [`StoreOutcome::Duplicate`]. Because the data was durable before
//!    the name existed, a name that survives a crash always holds the complete instance.
//! 5. **Directory, group commit.** `fsync` of the series directory makes the new entry
//!    durable. Writers in the same directory share it: a writer that linked its name before a
//!    directory `fsync` *started* is covered by that `fsync` and returns when it completes
//!    without issuing its own; only writers that linked after the running `fsync` started wait
//!    for (and start) the next one. A failed directory `fsync` fails every writer it covered
//!    (their names are removed again; no retry that could report a false success after an
//!    error, see the PostgreSQL "fsyncgate" discussion of Linux writeback-error reporting).
//!
//! Relied on: POSIX `fdatasync`/`fsync` semantics, atomicity of `link`, and Linux O_TMPFILE +
//! `linkat` via `/proc/self/fd`. Not relied on: ext4's `data=ordered` mode, or that with a
//! jbd2 journal one `fsync` commits every earlier metadata change of the file system (which
//! would let `sync_file_range` + link + one directory `fsync` cover data and name with a
//! single cache flush). That shortcut is unsafe on file systems that flush only what `fsync`
//! names — ext4 *without* a journal (the development machine's spool disk: `journal_task` is
//! `<none>`), btrfs — where the file's size and extents could be lost while its name survives.
//! If O_TMPFILE or `/proc` is unavailable, the instance is written as other spool files are: a
//! named temporary file in `tmp/`, `fsync`, `rename` into place, `fsync` of the directory
//! ([`Spool::write_atomically`]).
//!
//! Written while received: the C-STORE SCP opens the unnamed file (in `incoming/`, the same
//! file system as every series folder, so `linkat` can name it there) as soon as a C-STORE-RQ's
//! data set starts to arrive, appends each fragment as it comes and starts its writeback
//! early ([`Spool::stage_instance`], `receive::staging`); steps 1 and 3–5 run once the complete
//! data set has been checked ([`Spool::store_staged_instance`]). The order of data flush and
//! name is the same, so the guarantee is too.
//!
//! Cost: two cache flushes per instance (data, then name) when instances arrive one at a time;
//! concurrent associations share the second. `examples/bench_spool.rs` measures each step
//! (docs/PERFORMANCE.md).
//!
//! Other spool files (outbox objects, reasons) use [`Spool::write_atomically`] (`tmp/`,
//! `fsync`, `rename`, `fsync` of the directory), which may replace an existing file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

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
    /// Series directories whose names this process has made durable (step 1 of the module docs).
    durable_dirs: Mutex<HashSet<PathBuf>>,
    /// Group commit of directory fsyncs (step 5).
    dir_syncs: DirSyncs,
    /// O_TMPFILE + linkat unusable here (old kernel, file system, no /proc): use `tmp/`.
    no_tmpfile: AtomicBool,
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
        Ok(Spool {
            root,
            fsync,
            counter: AtomicU64::new(0),
            durable_dirs: Mutex::new(HashSet::new()),
            dir_syncs: DirSyncs::default(),
            no_tmpfile: AtomicBool::new(false),
        })
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
        let (dir, dest) = match self.prepare_store(id)? {
            Prepared::Write { dir, dest } => (dir, dest),
            Prepared::Known(outcome) => return Ok(outcome),
        };
        let meta = part10_header(id.sop_class_uid, id.sop_instance_uid, id.transfer_syntax_uid);
        if self.write_instance(&dir, &dest, &[&meta, dataset])? {
            Ok(StoreOutcome::Stored(dest))
        } else {
            self.sync_duplicate(&dest)?;
            Ok(StoreOutcome::Duplicate(dest))
        }
    }

    /// What both store paths do before writing: check the UIDs, answer a stored instance as a
    /// duplicate (its name made durable), and make the series folder durable (step 1).
    fn prepare_store(&self, id: &InstanceIdentity<'_>) -> Result<Prepared, SpoolError> {
        check_uid("StudyInstanceUID", id.study_instance_uid)?;
        check_uid("SeriesInstanceUID", id.series_instance_uid)?;
        check_uid("SOPInstanceUID", id.sop_instance_uid)?;
        check_uid("SOPClassUID", id.sop_class_uid)?;
        check_uid("TransferSyntaxUID", id.transfer_syntax_uid)?;
        let dest = self.instance_path(id);
        if dest.exists() {
            self.sync_duplicate(&dest)?;
            return Ok(Prepared::Known(StoreOutcome::Duplicate(dest)));
        }
        let dir = dest.parent().expect("instance path has a parent").to_path_buf();
        self.ensure_durable_dir(&dir)?;
        Ok(Prepared::Write { dir, dest })
    }

    /// A duplicate is acknowledged like a new instance, so its name must be durable too: the
    /// writer that linked it may still be waiting for its directory fsync. Joining the group
    /// commit of its directory covers it.
    fn sync_duplicate(&self, dest: &Path) -> Result<(), SpoolError> {
        match (self.fsync, dest.parent()) {
            (true, Some(dir)) => self.dir_syncs.sync(dir),
            _ => Ok(()),
        }
    }

    /// Step 1 of the module docs: create `dir` (under `incoming/`) and make its name durable,
    /// once per directory and process.
    fn ensure_durable_dir(&self, dir: &Path) -> Result<(), SpoolError> {
        if self.durable_dirs.lock().expect("spool lock").contains(dir) {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if self.fsync {
            // the entries of <study> in incoming/ and of <series> in <study>
            let incoming = self.root.join("incoming");
            let mut d = dir;
            while let Some(parent) = d.parent() {
                sync_dir(parent)?;
                if parent == incoming || !parent.starts_with(&incoming) {
                    break;
                }
                d = parent;
            }
        }
        let mut known = self.durable_dirs.lock().expect("spool lock");
        if known.len() >= 100_000 {
            known.clear(); // bound memory: forgetting only costs two directory fsyncs later
        }
        known.insert(dir.to_path_buf());
        Ok(())
    }

    /// Steps 2–5 of the module docs: write `parts` as the new file `dest` in `dir`. Returns
    /// `false` (nothing written) if `dest` already exists.
    fn write_instance(&self, dir: &Path, dest: &Path, parts: &[&[u8]]) -> Result<bool, SpoolError> {
        if !self.no_tmpfile.load(Ordering::Relaxed) {
            match self.write_tmpfile_linkat(dir, dest, parts) {
                Err(TmpfileError::Unsupported) => {
                    self.no_tmpfile.store(true, Ordering::Relaxed);
                    tracing::warn!(dir = %dir.display(), "O_TMPFILE/linkat unavailable; spool writes go through tmp/ and rename");
                }
                Err(TmpfileError::Io(e)) => return Err(e),
                Ok(created) => return Ok(created),
            }
        }
        if dest.exists() {
            return Ok(false);
        }
        self.write_atomically(dest, parts)?;
        Ok(true)
    }

    /// Step 2 of the module docs: an unnamed file in `dir` (O_TMPFILE).
    fn open_tmpfile(dir: &Path) -> Result<File, TmpfileError> {
        match OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE).mode(0o644).open(dir) {
            Ok(f) => Ok(f),
            // EOPNOTSUPP: file system without O_TMPFILE; EISDIR/EINVAL: kernel without it
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
                Err(TmpfileError::Unsupported)
            }
            Err(e) => Err(TmpfileError::Io(SpoolError::Io { path: dir.to_path_buf(), source: e })),
        }
    }

    fn write_tmpfile_linkat(&self, dir: &Path, dest: &Path, parts: &[&[u8]]) -> Result<bool, TmpfileError> {
        let mut f = Self::open_tmpfile(dir)?;
        for p in parts {
            f.write_all(p).map_err(|e| TmpfileError::Io(SpoolError::Io { path: dest.to_path_buf(), source: e }))?;
        }
        self.name_tmpfile(f, dir, dest)
    }

    /// Steps 3 (flush) to 5 of the module docs for an unnamed file `f` whose content is
    /// complete: `fdatasync`, `linkat` to `dest` (in `dir`, or in another directory of the same
    /// file system), group-committed `fsync` of `dir`. `Ok(false)` if `dest` already existed
    /// (nothing named; the file is freed).
    fn name_tmpfile(&self, f: File, dir: &Path, dest: &Path) -> Result<bool, TmpfileError> {
        if self.fsync {
            f.sync_data().map_err(|e| TmpfileError::Io(SpoolError::Io { path: dest.to_path_buf(), source: e }))?;
        }
        let from = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("no NUL in a number");
        let to = CString::new(dest.as_os_str().as_bytes())
            .map_err(|_| TmpfileError::Io(SpoolError::Io { path: dest.to_path_buf(), source: io::ErrorKind::InvalidInput.into() }))?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EEXIST) => Ok(false),
                // no /proc mounted
                Some(libc::ENOENT) if !Path::new("/proc/self/fd").is_dir() => Err(TmpfileError::Unsupported),
                _ => Err(TmpfileError::Io(SpoolError::Io { path: dest.to_path_buf(), source: e })),
            };
        }
        drop(f);
        if self.fsync {
            if let Err(e) = self.dir_syncs.sync(dir) {
                // not acknowledged: do not leave the name for a later duplicate check to trust
                let _ = fs::remove_file(dest);
                return Err(TmpfileError::Io(e));
            }
        }
        Ok(true)
    }

    /// Start writing a received instance before its data set is complete: an unnamed file
    /// (O_TMPFILE in `incoming/`, the file system of every series folder) holding the Part-10
    /// header built from the C-STORE-RQ's AffectedSOPClassUID and AffectedSOPInstanceUID and
    /// the presentation context's transfer syntax. The data set is appended with
    /// [`StagedInstance::append`] as its fragments arrive, and the file gets its name in
    /// [`Spool::store_staged_instance`] once the whole data set has been checked.
    ///
    /// Writing while receiving takes the page-cache copy and, with `spool.fsync`, most of the
    /// data's transfer to the device (started early with `sync_file_range(SYNC_FILE_RANGE_WRITE)`
    /// every [`StagedInstance::KICK_BYTES`]) out of the time between the last fragment and the
    /// C-STORE-RSP. Durability is unchanged: the `fdatasync` of step 3 still runs before the
    /// name exists, and an instance that is refused, aborted or never completed leaves nothing
    /// (the unnamed inode is freed when the file is closed, also after a crash).
    ///
    /// `None` (store with [`Spool::store_instance`] instead) if a UID is unfit as a file name,
    /// O_TMPFILE is not available here, or the file cannot be created or written (a real error
    /// such as a full disk then shows again in `store_instance`, which reports it).
    pub fn stage_instance(&self, sop_class_uid: &str, sop_instance_uid: &str, transfer_syntax_uid: &str) -> Option<StagedInstance> {
        if self.no_tmpfile.load(Ordering::Relaxed)
            || !is_valid_uid(sop_class_uid)
            || !is_valid_uid(sop_instance_uid)
            || !is_valid_uid(transfer_syntax_uid)
        {
            return None;
        }
        let incoming = self.root.join("incoming");
        let file = match Self::open_tmpfile(&incoming) {
            Ok(f) => f,
            Err(TmpfileError::Unsupported) => {
                self.no_tmpfile.store(true, Ordering::Relaxed);
                tracing::warn!(dir = %incoming.display(), "O_TMPFILE/linkat unavailable; spool writes go through tmp/ and rename");
                return None;
            }
            Err(TmpfileError::Io(e)) => {
                tracing::debug!(error = %e, "cannot stage an instance; it is written once complete");
                return None;
            }
        };
        let header = part10_header(sop_class_uid, sop_instance_uid, transfer_syntax_uid);
        let mut staged =
            StagedInstance { file, header: Vec::new(), header_len: 0, data_len: 0, kicked: 0, failed: false, fsync: self.fsync };
        if !staged.write(&header) {
            return None;
        }
        staged.header_len = header.len() as u64;
        staged.header = header;
        Some(staged)
    }

    /// Give a staged instance (see [`Spool::stage_instance`]) its name once its data set is
    /// complete and checked: same outcome, guarantee and errors as
    /// [`Spool::store_instance`]`(id, dataset)`, of which this is the second half (steps 1 and
    /// 3–5 of the module docs).
    ///
    /// `dataset` is the complete data set; the staged file is used only if it holds exactly the
    /// Part-10 header of `id` followed by `dataset.len()` appended bytes and no write failed,
    /// otherwise it is dropped and `dataset` is written by [`Spool::store_instance`].
    ///
    /// # Errors
    /// As [`Spool::store_instance`].
    pub fn store_staged_instance(
        &self,
        id: &InstanceIdentity<'_>,
        staged: StagedInstance,
        dataset: &[u8],
    ) -> Result<StoreOutcome, SpoolError> {
        let usable = !staged.failed
            && staged.data_len == dataset.len() as u64
            && staged.header == part10_header(id.sop_class_uid, id.sop_instance_uid, id.transfer_syntax_uid);
        if !usable {
            drop(staged);
            return self.store_instance(id, dataset);
        }
        let (dir, dest) = match self.prepare_store(id)? {
            Prepared::Write { dir, dest } => (dir, dest),
            Prepared::Known(outcome) => return Ok(outcome),
        };
        match self.name_tmpfile(staged.file, &dir, &dest) {
            Ok(true) => Ok(StoreOutcome::Stored(dest)),
            Ok(false) => {
                self.sync_duplicate(&dest)?;
                Ok(StoreOutcome::Duplicate(dest))
            }
            Err(TmpfileError::Io(e)) => Err(e),
            Err(TmpfileError::Unsupported) => {
                self.no_tmpfile.store(true, Ordering::Relaxed);
                self.store_instance(id, dataset)
            }
        }
    }

    /// Write `parts` concatenated to `dest` via `tmp/`, fsync, rename, fsync the directory.
    ///
    /// # Errors
    /// [`SpoolError::Io`]; the temporary file is removed on failure.
    pub fn write_atomically(&self, dest: &Path, parts: &[&[u8]]) -> Result<(), SpoolError> {
        self.write_renamed(dest, parts)?;
        if self.fsync {
            if let Some(parent) = dest.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// Several files of one directory written like [`Spool::write_atomically`] whose names
    /// become durable together with ONE `fsync` of the directory, at [`DirBatch::commit`]
    /// (each file's data is `fsync`ed before its rename, as there). Until `commit` returns, a
    /// crash may keep any subset of the new names, each with complete contents: use it where
    /// readers already treat a missing file as "not written yet" (the job directory, whose
    /// `job.json` is only trusted when every file it lists is present).
    pub fn batch(&self, dir: &Path) -> DirBatch<'_> {
        DirBatch { spool: self, dir: dir.to_path_buf() }
    }

    /// Steps 1–3 of [`Spool::write_atomically`]: `tmp/` file, fsync, rename (no directory fsync).
    fn write_renamed(&self, dest: &Path, parts: &[&[u8]]) -> Result<(), SpoolError> {
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
            fs::rename(&tmp, dest).map_err(io_err(dest))
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
        match self.outbox_entry(destination, name) {
            Some(known) => Ok(known),
            None => self.put_outbox(destination, name, bytes).map(Some),
        }
    }

    /// Where object `name` of `destination` already is: `Some(None)` delivered or dead-lettered
    /// (`sent/`, `failed/`), `Some(Some(path))` waiting in the outbox, `None` nowhere yet.
    fn outbox_entry(&self, destination: &str, name: &str) -> Option<Option<PathBuf>> {
        if ["sent", "failed"].iter().any(|area| self.root.join(area).join(destination).join(name).is_file()) {
            return Some(None);
        }
        let p = self.root.join("outbox").join(destination).join(name);
        p.is_file().then_some(Some(p))
    }

    /// Like [`Spool::put_outbox_once`] for several objects of one destination whose bytes are
    /// already durable in files of the spool (the job directory's `seg.dcm`, `sr.dcm`, ...):
    /// each new outbox entry is a hard link to its `source` file instead of a second copy, and
    /// one `fsync` of the outbox directory makes every new name durable (POSIX `link(2)` is
    /// atomic; the inode's data was `fsync`ed when `source` was written). Falls back to writing
    /// `bytes` ([`Spool::put_outbox`]) when `source` is not `bytes.len()` long or cannot be
    /// linked (another file system, a file system without hard links). The send stage only
    /// reads and renames outbox files, and the job directory's files are only ever replaced by
    /// rename, so the shared inode is never changed in place.
    ///
    /// Returns, per entry in order, what [`Spool::put_outbox_once`] returns.
    ///
    /// # Errors
    /// [`SpoolError::Io`].
    pub fn put_outbox_linked(
        &self,
        destination: &str,
        entries: &[(&str, &Path, &[u8])],
    ) -> Result<Vec<Option<PathBuf>>, SpoolError> {
        let dir = self.root.join("outbox").join(destination);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut out = Vec::with_capacity(entries.len());
        let mut linked = false;
        for &(name, source, bytes) in entries {
            if let Some(known) = self.outbox_entry(destination, name) {
                out.push(known);
                continue;
            }
            let p = dir.join(name);
            let same_size = fs::metadata(source).map(|m| m.len() == bytes.len() as u64).unwrap_or(false);
            if same_size && fs::hard_link(source, &p).is_ok() {
                linked = true;
            } else {
                self.write_atomically(&p, &[bytes])?;
            }
            out.push(Some(p));
        }
        if linked && self.fsync {
            sync_dir(&dir)?;
        }
        Ok(out)
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

/// Outcome of [`Spool::prepare_store`].
enum Prepared {
    /// Write the instance as `dest` in the (durable) series folder `dir`.
    Write { dir: PathBuf, dest: PathBuf },
    /// Already stored: nothing to write.
    Known(StoreOutcome),
}

/// A received instance written to an unnamed spool file while its data set still arrives
/// ([`Spool::stage_instance`]); named by [`Spool::store_staged_instance`], or freed when dropped.
#[derive(Debug)]
pub struct StagedInstance {
    file: File,
    /// The Part-10 header written first (compared with the checked identity before naming).
    header: Vec<u8>,
    header_len: u64,
    /// Data set bytes appended after the header.
    data_len: u64,
    /// File offset up to which writeback has been started.
    kicked: u64,
    /// A write failed: the file is not used (the instance is written again once complete).
    failed: bool,
    /// `spool.fsync`: start writeback early.
    fsync: bool,
}

impl StagedInstance {
    /// Writeback of appended data is started (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which
    /// does not wait) once this many bytes are written since the last start, in whole 4 KiB
    /// pages.
    pub const KICK_BYTES: u64 = 64 * 1024;

    /// Data set bytes appended so far.
    pub fn data_len(&self) -> usize {
        self.data_len as usize
    }

    /// Append the next bytes of the data set. A failed write (e.g. disk full) is not reported
    /// here: it makes the staged file unusable, and [`Spool::store_staged_instance`] then
    /// writes the complete data set the ordinary way, which reports the error.
    pub fn append(&mut self, bytes: &[u8]) {
        if self.write(bytes) {
            self.data_len += bytes.len() as u64;
        }
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        if self.failed {
            return false;
        }
        if let Err(e) = self.file.write_all(bytes) {
            tracing::debug!(error = %e, "staged instance write failed; it is written again once complete");
            self.failed = true;
            return false;
        }
        let end = (self.header_len + self.data_len + bytes.len() as u64) & !4095;
        if self.fsync && end >= self.kicked + Self::KICK_BYTES {
            // SAFETY: a valid open file descriptor; the range lies inside the written file.
            let rc = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.kicked as libc::off64_t,
                    (end - self.kicked) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            // only a hint: on failure the fdatasync before naming writes everything anyway
            if rc == 0 {
                self.kicked = end;
            }
        }
        true
    }
}

/// Files written into one directory, made durable by one directory `fsync` ([`Spool::batch`]).
#[must_use = "the new names are durable only after commit()"]
pub struct DirBatch<'a> {
    spool: &'a Spool,
    dir: PathBuf,
}

impl DirBatch<'_> {
    /// Write `parts` concatenated to `<dir>/<name>` (`tmp/` file, fsync, rename); returns the path.
    ///
    /// # Errors
    /// [`SpoolError::Io`]; the temporary file is removed on failure.
    pub fn write(&self, name: &str, parts: &[&[u8]]) -> Result<PathBuf, SpoolError> {
        let p = self.dir.join(name);
        self.spool.write_renamed(&p, parts)?;
        Ok(p)
    }

    /// `fsync` the directory (when the spool fsyncs): every name written so far is durable.
    ///
    /// # Errors
    /// [`SpoolError::Io`] if the `fsync` fails.
    pub fn commit(self) -> Result<(), SpoolError> {
        if self.spool.fsync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Why the O_TMPFILE path did not store the instance.
enum TmpfileError {
    /// O_TMPFILE or `/proc/self/fd` is not available: use the `tmp/` + rename path.
    Unsupported,
    Io(SpoolError),
}

/// Group commit of directory fsyncs (step 5 of the module docs), per directory.
#[derive(Debug, Default)]
struct DirSyncs {
    dirs: Mutex<HashMap<PathBuf, Arc<DirSync>>>,
}

#[derive(Debug, Default)]
struct DirSync {
    state: Mutex<DirSyncState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct DirSyncState {
    /// Names linked into the directory so far (each writer's ticket).
    linked: u64,
    /// Every ticket ≤ this is covered by a completed fsync.
    synced: u64,
    /// Every ticket ≤ this (and > `synced` at the time) was covered by a failed fsync.
    failed: u64,
    /// An fsync is running.
    running: bool,
}

impl DirSyncs {
    /// Return once an `fsync` of `dir` that started after this call began has completed
    /// (the caller linked its new name into `dir` before calling).
    ///
    /// # Errors
    /// [`SpoolError::Io`] if that `fsync` failed.
    fn sync(&self, dir: &Path) -> Result<(), SpoolError> {
        let entry = {
            let mut dirs = self.dirs.lock().expect("dir sync lock");
            Arc::clone(dirs.entry(dir.to_path_buf()).or_default())
        };
        let result = entry.sync(dir);
        let mut dirs = self.dirs.lock().expect("dir sync lock");
        // only the map and this call hold it: nobody else waits on this directory
        if Arc::strong_count(&entry) == 2 {
            dirs.remove(dir);
        }
        result
    }
}

impl DirSync {
    fn sync(&self, dir: &Path) -> Result<(), SpoolError> {
        let mut st = self.state.lock().expect("dir sync lock");
        st.linked += 1;
        let ticket = st.linked;
        loop {
            // a failure that may have covered this ticket wins over a later success
            if st.failed >= ticket {
                return Err(SpoolError::Io {
                    path: dir.to_path_buf(),
                    source: io::Error::other("directory fsync failed (reported to the writer that ran it)"),
                });
            }
            if st.synced >= ticket {
                return Ok(());
            }
            if !st.running {
                // covers every name linked so far, including ours
                st.running = true;
                let target = st.linked;
                drop(st);
                let result = sync_dir(dir);
                st = self.state.lock().expect("dir sync lock");
                st.running = false;
                match &result {
                    Ok(()) => st.synced = st.synced.max(target),
                    Err(_) => st.failed = st.failed.max(target),
                }
                self.done.notify_all();
                return result;
            }
            st = self.done.wait(st).expect("dir sync lock");
        }
    }
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
    fn outbox_entries_link_the_job_files_once_and_fall_back_to_a_copy() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), true).unwrap();
        let job = spool.job_dir("job-1").unwrap();
        let batch = spool.batch(&job);
        let seg = batch.write("seg.dcm", &[b"SEG", b"-bytes"]).unwrap();
        let sr = batch.write("sr.dcm", &[b"SR-bytes"]).unwrap();
        batch.commit().unwrap();
        assert_eq!(fs::read(&seg).unwrap(), b"SEG-bytes");
        // sr's bytes differ from its file (e.g. a stale job directory): a copy, not a link
        let entries: [(&str, &Path, &[u8]); 2] = [("1.dcm", &seg, b"SEG-bytes"), ("2.dcm", &sr, b"other bytes")];
        let placed = spool.put_outbox_linked("pacs", &entries).unwrap();
        let (p1, p2) = (placed[0].clone().unwrap(), placed[1].clone().unwrap());
        assert_eq!(fs::metadata(&p1).unwrap().ino(), fs::metadata(&seg).unwrap().ino(), "hard link");
        assert_ne!(fs::metadata(&p2).unwrap().ino(), fs::metadata(&sr).unwrap().ino());
        assert_eq!(fs::read(&p2).unwrap(), b"other bytes");
        // replacing the job file by rename (a re-encoded job) leaves the queued object alone
        spool.batch(&job).write("seg.dcm", &[b"new"]).unwrap();
        assert_eq!(fs::read(&p1).unwrap(), b"SEG-bytes");
        // idempotent: queued → same path; delivered → None, nothing placed again
        let sent = spool.mark_sent("pacs", &p1).unwrap();
        let again = spool.put_outbox_linked("pacs", &entries).unwrap();
        assert_eq!(again, vec![None, Some(p2.clone())]);
        assert!(!p1.exists());
        assert_eq!(fs::read(sent).unwrap(), b"SEG-bytes");
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

    /// A data set staged in fragments is stored byte for byte as `store_instance` stores it,
    /// under the same name; nothing is visible before it is named, a dropped or mismatching
    /// staged file leaves nothing behind, and a known instance is a duplicate.
    #[test]
    fn staged_instance_is_stored_like_a_complete_one() {
        for fsync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path(), fsync).unwrap();
            let plain = tempfile::tempdir().unwrap();
            let reference = Spool::open(plain.path(), fsync).unwrap();
            // (0008,0018) UI "1.2.6" then a 300 kB OB value, so writeback starts several times
            let mut ds = vec![0x08, 0, 0x18, 0, b'U', b'I', 6, 0, b'1', b'.', b'2', b'.', b'6', 0];
            ds.extend_from_slice(&[0x09, 0, 0x10, 0x10, b'O', b'B', 0, 0]);
            ds.extend_from_slice(&300_000u32.to_le_bytes());
            ds.extend((0..300_000u32).map(|i| (i % 253) as u8));
            let first = id("1.2.6");
            let mut staged = spool.stage_instance(first.sop_class_uid, first.sop_instance_uid, first.transfer_syntax_uid).unwrap();
            for chunk in ds[..250_000].chunks(16_384) {
                staged.append(chunk);
            }
            assert_eq!(staged.data_len(), 250_000);
            staged.append(&ds[250_000..]);
            let incoming = dir.path().join("incoming");
            assert_eq!(fs::read_dir(&incoming).unwrap().count(), 0, "nothing named while staged");
            let a = spool.store_staged_instance(&first, staged, &ds).unwrap();
            let b = reference.store_instance(&first, &ds).unwrap();
            assert!(matches!(a, StoreOutcome::Stored(_)));
            assert_eq!(a.path().strip_prefix(dir.path()).unwrap(), b.path().strip_prefix(plain.path()).unwrap());
            assert_eq!(fs::read(a.path()).unwrap(), fs::read(b.path()).unwrap());
            // the same instance again: duplicate, the file untouched
            let mut again = spool.stage_instance(first.sop_class_uid, first.sop_instance_uid, first.transfer_syntax_uid).unwrap();
            again.append(&ds);
            assert!(matches!(spool.store_staged_instance(&first, again, &ds).unwrap(), StoreOutcome::Duplicate(_)));
            assert_eq!(fs::read(a.path()).unwrap(), fs::read(b.path()).unwrap());
            // a staged file that does not hold the whole data set is not used: the complete data
            // set is written instead
            let other = id("1.2.7");
            let mut short = spool.stage_instance(other.sop_class_uid, other.sop_instance_uid, other.transfer_syntax_uid).unwrap();
            short.append(&ds[..1000]);
            let c = spool.store_staged_instance(&other, short, &ds).unwrap();
            let d = reference.store_instance(&other, &ds).unwrap();
            assert_eq!(fs::read(c.path()).unwrap(), fs::read(d.path()).unwrap());
            // a staged file for another instance's header is not used either
            let third = id("1.2.8");
            let mut wrong = spool.stage_instance(third.sop_class_uid, "1.2.9", third.transfer_syntax_uid).unwrap();
            wrong.append(&ds);
            let e = spool.store_staged_instance(&third, wrong, &ds).unwrap();
            let obj = dicom_object::open_file(e.path()).unwrap();
            assert_eq!(obj.meta().media_storage_sop_instance_uid(), "1.2.8");
            // dropped (refused instance): nothing anywhere
            let mut dropped = spool.stage_instance(first.sop_class_uid, "1.2.10", first.transfer_syntax_uid).unwrap();
            dropped.append(&ds);
            drop(dropped);
            let series = spool.series_dir("1.2.3", "1.2.3.4");
            let mut names: Vec<String> =
                fs::read_dir(&series).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            assert_eq!(names, ["1.2.6.dcm", "1.2.7.dcm", "1.2.8.dcm"]);
            assert_eq!(fs::read_dir(&incoming).unwrap().count(), 1, "only the study folder");
            assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
            // UIDs unfit as file names are not staged
            assert!(spool.stage_instance("1.2", "1.2.5/../x", "1.2.840.10008.1.2.1").is_none());
        }
    }

    #[test]
    fn concurrent_writers_share_directory_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), true).unwrap();
        let ds: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (spool, ds) = (&spool, &ds);
                s.spawn(move || {
                    for i in 0..20 {
                        // every instance twice, from two threads: one Stored, one Duplicate
                        let sop = format!("1.2.5.{}.{}", (t / 2), i);
                        let out = spool.store_instance(&id(&sop), ds).unwrap();
                        assert_eq!(fs::read(out.path()).unwrap().len(), part10_header("1.2.840.10008.5.1.4.1.1.4", &sop, "1.2.840.10008.1.2.1").len() + ds.len());
                    }
                });
            }
        });
        let files = spool.incoming_files();
        assert_eq!(files.len(), 4 * 20);
        for f in &files {
            // complete file: File Meta Information naming this SOP Instance, then the data set
            let sop = f.file_stem().unwrap().to_str().unwrap();
            let mut want = part10_header("1.2.840.10008.5.1.4.1.1.4", sop, "1.2.840.10008.1.2.1");
            want.extend_from_slice(&ds);
            assert!(fs::read(f).unwrap() == want, "{}", f.display());
        }
        // nothing unnamed or temporary left behind, and the group-commit table is empty again
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(spool.dir_syncs.dirs.lock().unwrap().is_empty());
    }

    #[test]
    fn fallback_without_o_tmpfile_stores_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), true).unwrap();
        let ds = [0x08, 0, 0x18, 0, b'U', b'I', 6, 0, b'1', b'.', b'2', b'.', b'5', 0];
        let a = spool.store_instance(&id("1.2.5"), &ds).unwrap();
        spool.no_tmpfile.store(true, Ordering::Relaxed);
        let b = spool.store_instance(&id("1.2.6"), &ds).unwrap();
        assert!(matches!(spool.store_instance(&id("1.2.6"), &ds).unwrap(), StoreOutcome::Duplicate(_)));
        let (fa, fb) = (fs::read(a.path()).unwrap(), fs::read(b.path()).unwrap());
        assert_eq!(fa.len(), fb.len());
        assert_eq!(dicom_object::open_file(b.path()).unwrap().meta().media_storage_sop_instance_uid(), "1.2.6");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
