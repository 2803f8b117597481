//! `myonode inspect <dir>`: what the assemble stage would make of a folder of DICOM files,
//! from headers only (no pixel data is decoded, nothing is written).
//!
//! Per series: instances, images (frames), transfer syntaxes, Dixon classification, the
//! completion hint (expected image count), series-level problems; per stack: images, what sets
//! it apart ("stack reason"), dimensions, spacing, orientation label, problems, and what the
//! node would do (a job with its id, or a refusal with the reason). The same rules as the
//! running node are used ([`read_images`], [`split_stacks`], [`plan_images`], [`classify`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::dixon::classify;
use super::stacks::{orientation_label, split_stacks};
use super::stage::{job_id, stack_job_id};
use super::tracker::instance_hints;
use super::volume_builder::{check_identity, plan_images, read_images, AssembleError, ImageFacts};
use crate::config::AssembleConfig;

/// A file that could not be used, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileProblem {
    pub path: PathBuf,
    pub problem: String,
}

/// One stack of a series as the node would treat it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StackReport {
    /// 1-based stack number within the series.
    pub stack: usize,
    pub images: usize,
    /// What the stack has in common (orientation, size, spacing, echo, ImageType, ...).
    pub description: String,
    /// Attributes that set it apart from the series' other stacks (empty for a lone stack).
    pub distinguished_by: Vec<String>,
    /// `[Columns, Rows, slices]` when the stack plans as a volume.
    pub dimensions: Option<[usize; 3]>,
    /// `[column spacing, row spacing, slice spacing along the normal]`, mm.
    pub spacing_mm: Option<[f64; 3]>,
    /// e.g. `axial (rows L, columns P)`.
    pub orientation: String,
    pub problems: Vec<String>,
    /// `job <id>` or `refuse: <reason>`.
    pub action: String,
}

/// One series found in the folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeriesReport {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
    pub series_description: String,
    /// Instance files.
    pub instances: usize,
    /// Images: single-frame instances plus frames of multi-frame instances.
    pub images: usize,
    pub transfer_syntaxes: Vec<String>,
    /// Expected image count stated by the headers (completion rule), if consistent.
    pub expected_images: Option<u32>,
    /// Dixon channel (`water`, `fat`, `in_phase`, `opposed_phase`) and the attribute it was read from.
    pub dixon: Option<(String, String)>,
    pub problems: Vec<String>,
    pub stacks: Vec<StackReport>,
    /// Images left out of every stack (localizers), with the reason.
    pub dropped: Vec<String>,
    /// Summary of what the node would do with the series.
    pub action: String,
}

/// The whole folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectReport {
    pub input: PathBuf,
    pub files: usize,
    /// Files that are not usable DICOM images (not DICOM, missing UIDs, ...); they would be
    /// refused at C-STORE or quarantined.
    pub unusable_files: Vec<FileProblem>,
    pub series: Vec<SeriesReport>,
}

/// Every regular file under `dir` (recursively), sorted; unreadable directories are skipped.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Inspect the DICOM files under `dir` (see the module documentation).
///
/// # Errors
/// `std::io::Error` when `dir` is not a readable directory.
pub fn inspect(dir: &Path, cfg: &AssembleConfig) -> std::io::Result<InspectReport> {
    std::fs::read_dir(dir)?;
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    let mut unusable = Vec::new();
    let mut by_series: BTreeMap<String, Vec<ImageFacts>> = BTreeMap::new();
    let mut files_of: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in &files {
        match read_images(f) {
            Ok(images) => {
                let uid = images[0].series_instance_uid.clone();
                files_of.entry(uid.clone()).or_default().push(f.clone());
                by_series.entry(uid).or_default().extend(images);
            }
            Err(e) => unusable.push(FileProblem { path: f.clone(), problem: e.to_string() }),
        }
    }
    let series = by_series.into_iter().map(|(uid, images)| series_report(&uid, images, &files_of[&uid], cfg)).collect();
    Ok(InspectReport { input: dir.to_path_buf(), files: files.len(), unusable_files: unusable, series })
}

fn series_report(uid: &str, images: Vec<ImageFacts>, files: &[PathBuf], cfg: &AssembleConfig) -> SeriesReport {
    let first = &images[0];
    let header = first.dataset.clone();
    let string = |tag| {
        header
            .get(tag)
            .and_then(|e| e.to_str().ok().map(|s| s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string()))
            .unwrap_or_default()
    };
    let hints: BTreeSet<Option<u32>> = files.iter().map(|f| instance_hints(f).expected_images).collect();
    let expected_images = match hints.iter().collect::<Vec<_>>().as_slice() {
        [Some(n)] => Some(*n),
        _ => None,
    };
    let mut report = SeriesReport {
        study_instance_uid: first.study_instance_uid.clone(),
        series_instance_uid: uid.to_string(),
        modality: string(dicom_dictionary_std::tags::MODALITY),
        series_description: first.series_description.clone(),
        instances: files.len(),
        images: images.len(),
        transfer_syntaxes: images.iter().map(|i| i.transfer_syntax_uid.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
        expected_images,
        dixon: classify(&header).map(|c| (c.kind.as_str().to_string(), c.source.to_string())),
        problems: Vec::new(),
        stacks: Vec::new(),
        dropped: Vec::new(),
        action: String::new(),
    };
    if let Err(e) = check_identity(&images) {
        report.problems.push(e.to_string());
        report.action = format!("quarantine the series: {e}");
        return report;
    }
    let split = split_stacks(images);
    report.dropped = split.dropped.iter().map(|d| d.reason.clone()).collect();
    let n = split.stacks.len();
    let mut jobs = 0;
    for (k, s) in split.stacks.into_iter().enumerate() {
        let o = s.key.orientation;
        let orientation = orientation_label([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let description = s.key.describe();
        let distinguished_by = s.distinguished_by.iter().map(|d| d.to_string()).collect();
        let images = s.images.len();
        let id = if n == 1 { job_id(uid, 1) } else { stack_job_id(uid, k + 1, 1) };
        let plan = plan_images(s.images, cfg).and_then(|p| match &p.frame_of_reference_uid {
            Some(_) => Ok(p),
            None => Err(AssembleError::MissingAttribute { path: p.slices[0].path.clone(), attribute: "FrameOfReferenceUID" }),
        });
        let (dimensions, spacing_mm, problems, action) = match plan {
            Ok(p) => {
                jobs += 1;
                let action = match &report.dixon {
                    Some((kind, _)) => format!(
                        "job {id} as Dixon {kind} channel (waits up to {} s for the other channels of its study, \
                         less once {} are in)",
                        cfg.study_window_seconds,
                        cfg.dixon_channels.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    None => format!("job {id}"),
                };
                let notes = if p.duplicates_dropped.is_empty() {
                    Vec::new()
                } else {
                    vec![format!(
                        "{} exact duplicate image(s) at an occupied position dropped: {}",
                        p.duplicates_dropped.len(),
                        p.duplicates_dropped.join(", ")
                    )]
                };
                (Some([p.columns, p.rows, p.len()]), Some([p.spacing[2], p.spacing[1], p.spacing[0]]), notes, action)
            }
            Err(e) => (None, None, vec![e.to_string()], format!("refuse: {e}")),
        };
        report.stacks.push(StackReport {
            stack: k + 1,
            images,
            description,
            distinguished_by,
            dimensions,
            spacing_mm,
            orientation,
            problems,
            action,
        });
    }
    report.action = match (jobs, n) {
        (0, _) => "quarantine the series: no stack forms a volume".to_string(),
        (j, n) if j == n => format!("{j} job(s)"),
        (j, n) => format!("{j} job(s); {} stack(s) refused (noted in quarantine/<series>/REASON.txt)", n - j),
    };
    report
}

impl InspectReport {
    /// Human-readable table, one block per series and one line per stack.
    pub fn to_table(&self) -> String {
        let mut s = format!("{}: {} file(s), {} series\n", self.input.display(), self.files, self.series.len());
        for r in &self.series {
            s.push_str(&format!(
                "\nseries {}  {} {:?}\n  study {}\n  {} instance(s), {} image(s); transfer syntaxes {}\n",
                r.series_instance_uid,
                r.modality,
                r.series_description,
                r.study_instance_uid,
                r.instances,
                r.images,
                r.transfer_syntaxes.join(", ")
            ));
            match r.expected_images {
                Some(n) if n as usize == r.images => {
                    s.push_str(&format!("  headers announce {n} image(s): complete when all have arrived\n"))
                }
                Some(n) => s.push_str(&format!(
                    "  headers announce {n} image(s), {} here: the count does not decide completion\n",
                    r.images
                )),
                None => {}
            }
            if let Some((kind, from)) = &r.dixon {
                s.push_str(&format!("  Dixon channel: {kind} (from {from})\n"));
            }
            for p in &r.problems {
                s.push_str(&format!("  problem: {p}\n"));
            }
            for d in &r.dropped {
                s.push_str(&format!("  dropped: {d}\n"));
            }
            if !r.stacks.is_empty() {
                s.push_str(&format!(
                    "  {:<5} {:>6} {:<18} {:<26} {:<34} {}\n",
                    "stack", "images", "dimensions", "spacing mm (x,y,z)", "orientation", "action"
                ));
            }
            for st in &r.stacks {
                let dims = st.dimensions.map(|d| format!("{}x{}x{}", d[0], d[1], d[2])).unwrap_or_else(|| "-".into());
                let sp = st
                    .spacing_mm
                    .map(|d| format!("{:.4},{:.4},{:.4}", d[0], d[1], d[2]))
                    .unwrap_or_else(|| "-".into());
                s.push_str(&format!(
                    "  {:<5} {:>6} {:<18} {:<26} {:<34} {}\n",
                    st.stack, st.images, dims, sp, st.orientation, st.action
                ));
                let why = if st.distinguished_by.is_empty() {
                    "single stack".to_string()
                } else {
                    format!("split by {}", st.distinguished_by.join(", "))
                };
                s.push_str(&format!("        {why}: {}\n", st.description));
                for p in st.problems.iter().filter(|_| st.dimensions.is_some()) {
                    s.push_str(&format!("        note: {p}\n"));
                }
            }
            s.push_str(&format!("  => {}\n", r.action));
        }
        if !self.unusable_files.is_empty() {
            s.push_str(&format!("\n{} unusable file(s):\n", self.unusable_files.len()));
            for p in &self.unusable_files {
                s.push_str(&format!("  {}\n", p.problem));
            }
        }
        s
    }
}
