//! Dixon pairing: the water, fat, in-phase and opposed-phase series of one chemical-shift
//! acquisition become ONE job whose [`StudyJob::channels`] name each image.
//!
//! **Classification** ([`classify`]) of a series from its first image's header, first match wins:
//! 1. ImageType (0008,0008) values 3 and later (PS3.3 C.8.3.1.1.1 leaves them to vendors):
//!    `WATER`/`W` → water, `FAT`/`F` → fat, `IN_PHASE`/`IP`/`INPHASE` → in-phase,
//!    `OPP_PHASE`/`OUT_PHASE`/`OP`/`OPPOSED_PHASE` → opposed-phase (Siemens `DIXON\WATER`,
//!    Philips `W`/`F`/`IP`/`OP`, GE `WATER`/`FAT`/`IN_PHASE`/`OUT_PHASE`);
//! 2. SeriesDescription (0008,103E) words (split at non-alphanumerics, case-insensitive):
//!    `water`/`w`, `fat`/`f`, `in`/`inphase`/`ip`, `opp`/`out`/`op`/`opposed`/`outphase`
//!    (e.g. Siemens `t1_vibe_dixon_tra_opp`), only when the description also says `dixon`
//!    or the ImageType has a `DIXON` value — "fat" alone (e.g. "fat sat") is not Dixon;
//! 3. for a series marked DIXON but without a channel word, the echo time against the
//!    water–fat chemical shift: at field B0 (MagneticFieldStrength (0018,0087), T) fat precesses
//!    `3.4 ppm × 42.577 MHz/T × B0` slower; an echo time `TE` with `TE·Δf` within 0.15 of a
//!    whole number is in phase, within 0.15 of a half-integer opposed phase.
//!
//! **Pairing** ([`DixonPairer`]): a classified job waits in a buffer keyed by
//! (StudyInstanceUID, FrameOfReferenceUID) until either the kinds the site's scanners send
//! (`assemble.dixon_channels`, default all four) are present on one grid or
//! `assemble.study_window_seconds` passed since the first one arrived. Jobs on the same grid
//! (shape, spacing within 1e-3 mm, origin within 0.01 mm, directions within 1e-4) then form one
//! job; the primary (the series the SEG/SR reference) is water, else fat, in-phase,
//! opposed-phase. Series of other studies or frames of reference never pair (the knee DESS
//! echoes share a FrameOfReferenceUID but not a study, and carry no Dixon marking). A lone
//! series stays a valid job with no channels. Jobs that are not Dixon pass straight through.
//!
//! **Consistency**: where water, fat and in-phase are all present, `in ≈ water + fat` is
//! measured as `‖in − (water + fat)‖₂ / ‖in‖₂` over all voxels and written with the pairing to
//! `<job_dir>/dixon.json`; a value above [`CONSISTENCY_WARN_RATIO`] is logged as a warning
//! (vendors scale channels differently), never an error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use tracing::{info, warn};

use crate::pipeline::messages::{Channel, ChannelKind, StudyJob};
use crate::volume::Volume;

/// Relative residual `‖in − (water + fat)‖ / ‖in‖` above which the pairing is logged as inconsistent.
pub const CONSISTENCY_WARN_RATIO: f64 = 0.25;

/// Fat–water chemical shift, ppm (the main methylene peak; Bernstein et al., Handbook of MRI Pulse Sequences, 17.3).
pub const FAT_WATER_SHIFT_PPM: f64 = 3.4;

/// Proton gyromagnetic ratio γ/2π, MHz/T.
pub const PROTON_GAMMA_MHZ_PER_T: f64 = 42.577;

/// File written into the job directory of a paired job.
pub const DIXON_FILE: &str = "dixon.json";

/// How a series was classified and from which attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub kind: ChannelKind,
    /// `ImageType`, `SeriesDescription` or `EchoTime`.
    pub source: &'static str,
}

fn kind_of_token(t: &str) -> Option<ChannelKind> {
    match t {
        "WATER" | "W" => Some(ChannelKind::Water),
        "FAT" | "F" => Some(ChannelKind::Fat),
        "IN_PHASE" | "IP" | "INPHASE" | "IN" => Some(ChannelKind::InPhase),
        "OPP_PHASE" | "OUT_PHASE" | "OP" | "OPPOSED_PHASE" | "OPP" | "OUT" | "OUTPHASE" | "OPPOSED" | "OPPPHASE" => {
            Some(ChannelKind::OpposedPhase)
        }
        _ => None,
    }
}

fn strings(ds: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<String> {
    ds.get(tag)
        .and_then(|e| e.to_multi_str().ok().map(|v| v.iter().map(|s| s.trim().to_ascii_uppercase()).collect()))
        .unwrap_or_default()
}

fn float(ds: &InMemDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    ds.get(tag).and_then(|e| e.to_float64().ok()).filter(|v| v.is_finite())
}

/// Classify a series by its first image's header (see the module documentation); `None`
/// when it is not recognisably a Dixon channel.
pub fn classify(ds: &InMemDicomObject) -> Option<Classification> {
    let image_type = strings(ds, tags::IMAGE_TYPE);
    let tail: Vec<&str> = image_type.iter().skip(2).map(String::as_str).collect();
    // "IN"/"OUT"/"OPP" are only meaningful as description words, not as ImageType values
    if let Some(kind) = tail.iter().filter(|t| !matches!(**t, "IN" | "OUT" | "OPP")).find_map(|t| kind_of_token(t)) {
        // Philips marks every image with M/W/F/IP/OP; a plain magnitude "M" never gets here.
        return Some(Classification { kind, source: "ImageType" });
    }
    let description = ds
        .get(tags::SERIES_DESCRIPTION)
        .and_then(|e| e.to_str().ok().map(|s| s.to_ascii_uppercase()))
        .unwrap_or_default();
    let words: Vec<&str> = description.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let marked_dixon = tail.contains(&"DIXON") || words.iter().any(|w| w.contains("DIXON"));
    if !marked_dixon {
        return None;
    }
    // "in phase" / "opp phase" as two words
    let mut kinds = words.iter().filter_map(|w| kind_of_token(w)).collect::<Vec<_>>();
    kinds.dedup();
    if kinds.len() == 1 {
        return Some(Classification { kind: kinds[0], source: "SeriesDescription" });
    }
    let te_ms = float(ds, tags::ECHO_TIME)?;
    let b0 = float(ds, tags::MAGNETIC_FIELD_STRENGTH).filter(|b| *b > 0.0)?;
    let cycles = te_ms * 1e-3 * FAT_WATER_SHIFT_PPM * PROTON_GAMMA_MHZ_PER_T * b0;
    let frac = cycles - cycles.floor();
    if !(0.15..=0.85).contains(&frac) {
        Some(Classification { kind: ChannelKind::InPhase, source: "EchoTime" })
    } else if (frac - 0.5).abs() < 0.15 {
        Some(Classification { kind: ChannelKind::OpposedPhase, source: "EchoTime" })
    } else {
        None
    }
}

/// `true` when `a` and `b` lie on the same grid (shape, spacing, origin, directions).
pub fn same_grid(a: &Volume, b: &Volume) -> bool {
    let close = |x: &[f64], y: &[f64], tol: f64| x.iter().zip(y).all(|(p, q)| (p - q).abs() <= tol);
    a.shape() == b.shape()
        && close(&a.spacing, &b.spacing, 1e-3)
        && close(&a.origin, &b.origin, 1e-2)
        && close(&a.row_direction, &b.row_direction, 1e-4)
        && close(&a.column_direction, &b.column_direction, 1e-4)
        && close(&a.slice_direction, &b.slice_direction, 1e-4)
}

/// `‖in − (water + fat)‖₂ / ‖in‖₂` over all voxels (`None` if `in` is all zero or shapes differ).
pub fn in_phase_residual(water: &Volume, fat: &Volume, in_phase: &Volume) -> Option<f64> {
    if water.data.shape() != fat.data.shape() || water.data.shape() != in_phase.data.shape() {
        return None;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for ((w, f), i) in water.data.iter().zip(fat.data.iter()).zip(in_phase.data.iter()) {
        let r = *i as f64 - (*w as f64 + *f as f64);
        num += r * r;
        den += (*i as f64) * (*i as f64);
    }
    (den > 0.0).then(|| (num / den).sqrt())
}

#[derive(Debug)]
struct Pending {
    first_arrival: Instant,
    jobs: Vec<(ChannelKind, StudyJob)>,
}

/// The study-level buffer that pairs Dixon jobs (see the module documentation). Pure state:
/// the caller passes `now`.
#[derive(Debug)]
pub struct DixonPairer {
    window: Duration,
    expected: Vec<ChannelKind>,
    pending: BTreeMap<(String, String), Pending>,
}

/// All four Dixon kinds: what a pairer waits for unless told otherwise.
pub const ALL_KINDS: [ChannelKind; 4] = [ChannelKind::Water, ChannelKind::Fat, ChannelKind::InPhase, ChannelKind::OpposedPhase];

impl DixonPairer {
    /// A pairer waiting at most `window` for the partners of a Dixon series, releasing a group
    /// early once all four kinds are in.
    pub fn new(window: Duration) -> Self {
        Self::expecting(window, &ALL_KINDS)
    }

    /// A pairer waiting at most `window`, releasing a group as soon as every kind in `expected`
    /// (`assemble.dixon_channels`: what the site's scanners send) is in on one grid. Kinds
    /// outside `expected` that arrive in time still join the group.
    pub fn expecting(window: Duration, expected: &[ChannelKind]) -> Self {
        DixonPairer { window, expected: expected.to_vec(), pending: BTreeMap::new() }
    }

    /// Offer a freshly assembled job: returned at once when it is not a Dixon channel (or the
    /// window is zero); otherwise buffered, and the group on its grid returned once the expected kinds are in.
    pub fn offer(&mut self, job: StudyJob, now: Instant) -> Vec<StudyJob> {
        let Some(c) = classify(&job.header.dataset) else { return vec![job] };
        info!(job = %job.job_id, kind = c.kind.as_str(), from = c.source, "Dixon channel recognised");
        if self.window.is_zero() {
            return vec![job];
        }
        let key = (job.header.study_instance_uid.clone(), job.header.frame_of_reference_uid.clone());
        let p = self.pending.entry(key.clone()).or_insert_with(|| Pending { first_arrival: now, jobs: Vec::new() });
        // a newer version of the same series replaces the buffered one
        p.jobs.retain(|(_, j)| j.header.series_instance_uid != job.header.series_instance_uid);
        p.jobs.push((c.kind, job));
        // the new job's grid holds every expected kind: release those, keep the rest waiting
        let grid = Arc::clone(&p.jobs.last().expect("just pushed").1.volume);
        let on_grid = |j: &StudyJob| same_grid(&j.volume, &grid);
        let complete = self.expected.iter().all(|k| p.jobs.iter().any(|(kind, j)| kind == k && on_grid(j)));
        if !complete {
            return Vec::new();
        }
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut p.jobs).into_iter().partition(|(_, j)| on_grid(j));
        if rest.is_empty() {
            self.pending.remove(&key);
        } else {
            p.jobs = rest;
        }
        combine(ready)
    }

    /// Earliest instant at which a buffered group is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.first_arrival + self.window).min()
    }

    /// Groups whose window has passed at `now`, combined.
    pub fn take_due(&mut self, now: Instant) -> Vec<StudyJob> {
        let due: Vec<_> =
            self.pending.iter().filter(|(_, p)| p.first_arrival + self.window <= now).map(|(k, _)| k.clone()).collect();
        due.into_iter().flat_map(|k| combine(self.pending.remove(&k).expect("present").jobs)).collect()
    }

    /// Every buffered group, combined (input ended).
    pub fn take_all(&mut self) -> Vec<StudyJob> {
        std::mem::take(&mut self.pending).into_values().flat_map(|p| combine(p.jobs)).collect()
    }

    /// Number of buffered jobs.
    pub fn pending_jobs(&self) -> usize {
        self.pending.values().map(|p| p.jobs.len()).sum()
    }
}

/// Combine the buffered jobs of one (study, frame of reference): one job per grid; per grid
/// and kind the latest job wins (a second series of one kind on one grid is kept as its own job).
fn combine(jobs: Vec<(ChannelKind, StudyJob)>) -> Vec<StudyJob> {
    let mut groups: Vec<Vec<(ChannelKind, StudyJob)>> = Vec::new();
    for (kind, job) in jobs {
        match groups
            .iter_mut()
            .find(|g| same_grid(&g[0].1.volume, &job.volume) && !g.iter().any(|(k, _)| *k == kind))
        {
            Some(g) => g.push((kind, job)),
            None => groups.push(vec![(kind, job)]),
        }
    }
    groups.into_iter().map(combine_group).collect()
}

fn combine_group(mut group: Vec<(ChannelKind, StudyJob)>) -> StudyJob {
    if group.len() == 1 {
        let (kind, job) = group.pop().expect("one");
        info!(job = %job.job_id, kind = kind.as_str(), "Dixon series without partners on its grid: lone job");
        return job;
    }
    group.sort_by_key(|(k, _)| *k); // Water < Fat < InPhase < OpposedPhase: primary first
    let channels: Vec<Channel> = group
        .iter()
        .map(|(kind, j)| Channel { kind: *kind, header: j.header.clone(), volume: Arc::clone(&j.volume) })
        .collect();
    let get = |k: ChannelKind| channels.iter().find(|c| c.kind == k).map(|c| c.volume.as_ref());
    let residual = match (get(ChannelKind::Water), get(ChannelKind::Fat), get(ChannelKind::InPhase)) {
        (Some(w), Some(f), Some(i)) => in_phase_residual(w, f, i),
        _ => None,
    };
    let mut rest = group.into_iter();
    let (_, mut primary) = rest.next().expect("non-empty");
    for (_, other) in rest {
        // the partner's own job directory was created empty by assemble; it is not used
        let _ = std::fs::remove_dir(&other.job_dir);
    }
    primary.channels = channels;
    let summary = serde_json::json!({
        "job_id": primary.job_id,
        "primary_series_instance_uid": primary.header.series_instance_uid,
        "channels": primary.channels.iter().map(|c| serde_json::json!({
            "kind": c.kind,
            "series_instance_uid": c.header.series_instance_uid,
        })).collect::<Vec<_>>(),
        "in_phase_residual_ratio": residual,
        "consistent": residual.map(|r| r <= CONSISTENCY_WARN_RATIO),
        "consistency_warn_ratio": CONSISTENCY_WARN_RATIO,
    });
    if let Err(e) = std::fs::write(primary.job_dir.join(DIXON_FILE), serde_json::to_vec_pretty(&summary).expect("json")) {
        warn!(error = %e, "could not write dixon.json");
    }
    let kinds: Vec<&str> = primary.channels.iter().map(|c| c.kind.as_str()).collect();
    match residual {
        Some(r) if r > CONSISTENCY_WARN_RATIO => {
            warn!(job = %primary.job_id, channels = ?kinds, residual = r, "Dixon channels paired; in-phase differs from water + fat")
        }
        _ => info!(job = %primary.job_id, channels = ?kinds, residual = ?residual, "Dixon channels paired into one job"),
    }
    primary
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn ds(image_type: &str, description: &str, te: Option<&str>, b0: Option<&str>) -> InMemDicomObject {
        let mut d = InMemDicomObject::new_empty();
        d.put(DataElement::new(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(image_type.split('\\').map(String::from).collect()),
        ));
        d.put(DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, PrimitiveValue::from(description)));
        if let Some(te) = te {
            d.put(DataElement::new(tags::ECHO_TIME, VR::DS, PrimitiveValue::from(te)));
        }
        if let Some(b0) = b0 {
            d.put(DataElement::new(tags::MAGNETIC_FIELD_STRENGTH, VR::DS, PrimitiveValue::from(b0)));
        }
        d
    }

    #[test]
    fn classification_rules() {
        let k = |d: &InMemDicomObject| classify(d).map(|c| (c.kind, c.source));
        use ChannelKind::*;
        assert_eq!(k(&ds("DERIVED\\PRIMARY\\DIXON\\WATER", "", None, None)), Some((Water, "ImageType")));
        assert_eq!(k(&ds("DERIVED\\PRIMARY\\DIXON\\OPP_PHASE", "", None, None)), Some((OpposedPhase, "ImageType")));
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\F\\F", "mDixon", None, None)), Some((Fat, "ImageType")));
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\IN_PHASE", "", None, None)), Some((InPhase, "ImageType")));
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\M\\ND", "t1_vibe_dixon_tra_opp", None, None)), Some((OpposedPhase, "SeriesDescription")));
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\M\\ND", "t1_vibe_dixon_tra_in", None, None)), Some((InPhase, "SeriesDescription")));
        // 3 T: Δf ≈ 434 Hz; TE 2.46 ms ≈ 1.07 cycles (in phase), TE 1.23 ms ≈ 0.53 (opposed)
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\DIXON", "", Some("2.46"), Some("3"))), Some((InPhase, "EchoTime")));
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\DIXON", "", Some("1.23"), Some("3"))), Some((OpposedPhase, "EchoTime")));
        // not Dixon: a fat-saturated series, the knee DESS, an unmarked echo
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\M\\ND", "t2 fat sat", None, None)), None);
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\OTHER", "Sag 3D DESS WE", Some("7.48"), Some("3"))), None);
        assert_eq!(k(&ds("ORIGINAL\\PRIMARY\\M", "", Some("2.46"), Some("3"))), None);
    }
}
