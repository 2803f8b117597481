//! Geometry of the planar ("viewer-friendly") measurement report: the outline of a
//! segment on one slice as a closed polyline in image coordinates, and its area.
//!
//! The planar SR profile (issue #9) reports, for each segment, a TID 1410 Planar ROI
//! Measurements group on its key slice: an Image Region `SCOORD` `POLYLINE` selected
//! from the source image, and the Area it encloses (DICOM PS3.16 TID 1410; SCOORD
//! PS3.3 C.18.6). This module computes that outline and area from a 2-D mask; the
//! content items are built by the SR encoder.
//!
//! Outline: the outer boundary of the largest 4-connected region of the mask, traced
//! along pixel edges (crack following, region kept on the right-hand side, i.e.
//! clockwise on screen), collinear vertices merged. Vertices lie on pixel corners, so
//! in SCOORD image coordinates (PS3.3 C.18.6.1.2: column then row, the top-left
//! corner of the top-left pixel is (0, 0), its centre (0.5, 0.5)) a vertex at pixel
//! corner (x, y) is written as (x, y) unchanged. The polyline is closed: its last
//! point repeats the first (PS3.3 C.18.6.1.1, POLYLINE).
//!
//! Area: the polygon's area by the shoelace formula, which for an edge-traced outline
//! equals the number of pixels enclosed: the region's pixels plus those of its holes.
//!
//! [`encode_planar_tid1500`] writes the planar report: the document of
//! [`encode_tid1500`](super::sr::encode_tid1500) (same header, observer context, image
//! library and evidence) whose Imaging Measurements hold one TID 1410 group per segment
//! instead of the TID 1411 groups, so that viewers which draw only planar regions
//! (OHIF 3.13) can show it. Choosing it per destination is left to the encode stage.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use ndarray::Axis;

use super::codes::{self, CodeConst};
use super::seg::EncodedObject;
use super::sr::{code_item, el, encode_tid1500, format_ds, seq, SegReference, SrError, SrOptions};
use crate::pipeline::messages::{Code, Findings};

/// Image Region (111030, DCM): the SCOORD of a TID 1410 group (PS3.16 TID 1410 row 7).
pub const IMAGE_REGION: CodeConst = CodeConst {
    value: "111030",
    scheme: "DCM",
    meaning: "Image Region",
};
/// Area (42798000, SCT), CID 7470 Linear / area / volume measurement (PS3.16).
pub const AREA: CodeConst = CodeConst {
    value: "42798000",
    scheme: "SCT",
    meaning: "Area",
};
/// Square centimeter, UCUM `cm2` (CID 7181 Abstract Multi-dimensional Image Model Component Units).
pub const UNIT_SQUARE_CENTIMETER: CodeConst = CodeConst {
    value: "cm2",
    scheme: "UCUM",
    meaning: "square centimeter",
};
/// SeriesDescription of the planar report.
pub const PLANAR_SERIES_DESCRIPTION: &str = "Planar Measurement Report";

/// Why an outline could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanarError {
    /// The mask slice has `len` elements, not `rows × columns`.
    #[error("mask has {len} elements, expected rows {rows} × columns {columns}")]
    ShapeMismatch {
        len: usize,
        rows: usize,
        columns: usize,
    },
    /// Pixel spacing must be finite and > 0 (mm).
    #[error("pixel spacing {row_mm} mm × {column_mm} mm is not positive and finite")]
    BadSpacing { row_mm: f64, column_mm: f64 },
}

/// The outline of one region on one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Outline {
    /// Closed polyline, `(column, row)` pairs in SCOORD image coordinates (pixel
    /// corners; PS3.3 C.18.6.1.2), clockwise on screen; last point == first point.
    pub points: Vec<(f32, f32)>,
    /// Pixels enclosed by the polyline (the region plus its holes), = shoelace area.
    pub enclosed_pixels: u64,
    /// Pixels of the traced 4-connected region itself.
    pub region_pixels: u64,
}

impl Outline {
    /// Enclosed area in cm² for a pixel spacing of `row_mm` (between rows, PixelSpacing
    /// first value) × `column_mm` (between columns) millimetres (PS3.3 C.7.6.2.1.1).
    ///
    /// Errors: [`PlanarError::BadSpacing`] for non-finite or non-positive spacing.
    pub fn area_cm2(&self, row_mm: f64, column_mm: f64) -> Result<f64, PlanarError> {
        if !(row_mm.is_finite() && column_mm.is_finite() && row_mm > 0.0 && column_mm > 0.0) {
            return Err(PlanarError::BadSpacing { row_mm, column_mm });
        }
        Ok(self.enclosed_pixels as f64 * row_mm * column_mm / 100.0)
    }

    /// The points flattened as SCOORD GraphicData (0070,0022) expects: column, row, column, row, ...
    pub fn graphic_data(&self) -> Vec<f32> {
        self.points.iter().flat_map(|&(c, r)| [c, r]).collect()
    }
}

/// Shoelace area (pixel² units, always ≥ 0) of a closed polygon given as `(x, y)`
/// vertices; the closing edge is implied (a repeated last point adds nothing).
pub fn polygon_area(points: &[(f32, f32)]) -> f64 {
    if points.len() < 3 {
        return 0.0;
    }
    let mut twice = 0.0f64;
    for i in 0..points.len() {
        let (x0, y0) = points[i];
        let (x1, y1) = points[(i + 1) % points.len()];
        twice += x0 as f64 * y1 as f64 - x1 as f64 * y0 as f64;
    }
    twice.abs() / 2.0
}

/// Outline of the largest 4-connected region of a 2-D mask.
///
/// `mask` is row-major, `rows × columns` (index `row * columns + column`, rows top
/// to bottom as stored in the image). Ties between equally large regions go to the
/// one whose first pixel comes first in raster order. Returns `Ok(None)` when the
/// mask has no set pixel.
///
/// Errors: [`PlanarError::ShapeMismatch`] when `mask.len() != rows * columns`.
pub fn outline_of_largest_region(
    mask: &[bool],
    rows: usize,
    columns: usize,
) -> Result<Option<Outline>, PlanarError> {
    if rows.checked_mul(columns) != Some(mask.len()) {
        return Err(PlanarError::ShapeMismatch {
            len: mask.len(),
            rows,
            columns,
        });
    }
    let Some((labels, label, start, region_pixels)) = largest_region(mask, rows, columns) else {
        return Ok(None);
    };
    let inside = |col: i64, row: i64| -> bool {
        col >= 0
            && row >= 0
            && (col as usize) < columns
            && (row as usize) < rows
            && labels[row as usize * columns + col as usize] == label
    };
    // Start: top-left corner of the region's first pixel in raster order; its top
    // edge is on the outer boundary (nothing of the region above it). Walk east.
    let (sr, sc) = (start / columns, start % columns);
    let (x0, y0) = (sc as i64, sr as i64);
    let (mut x, mut y) = (x0, y0);
    let (mut dx, mut dy) = (1i64, 0i64);
    let mut corners: Vec<(i64, i64)> = vec![(x0, y0)];
    // The start vertex touches only the start pixel (nothing of the region lies above
    // or to the left of it in raster order), so the trace passes it exactly once:
    // returning to it closes the outline.
    loop {
        x += dx;
        y += dy;
        if (x, y) == (x0, y0) {
            break;
        }
        // Pixels ahead of vertex (x, y), left and right of the direction d = (dx, dy).
        // Right of d on screen (y down) is r = (-dy, dx); the pixel containing the
        // point vertex + d/2 ± r/2 is its floor, computed in half units.
        let (rx, ry) = (-dy, dx);
        let pixel_at = |ox: i64, oy: i64| {
            (
                (2 * x + dx + ox).div_euclid(2),
                (2 * y + dy + oy).div_euclid(2),
            )
        };
        let (frc, frr) = pixel_at(rx, ry);
        let (flc, flr) = pixel_at(-rx, -ry);
        let (ndx, ndy) = if !inside(frc, frr) {
            // The region ends ahead (or touches ahead only diagonally: 4-connectivity).
            (rx, ry)
        } else if inside(flc, flr) {
            // The region continues ahead and to the left.
            (-rx, -ry)
        } else {
            (dx, dy)
        };
        if (ndx, ndy) != (dx, dy) {
            corners.push((x, y));
            dx = ndx;
            dy = ndy;
        }
    }
    corners.push((x0, y0));
    let points: Vec<(f32, f32)> = corners.iter().map(|&(c, r)| (c as f32, r as f32)).collect();
    let enclosed = polygon_area(&points).round() as u64;
    Ok(Some(Outline {
        points,
        enclosed_pixels: enclosed,
        region_pixels,
    }))
}

/// Why the planar report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlanarSrError {
    /// The volumetric report it is derived from failed.
    #[error("{0}")]
    Sr(#[from] SrError),
    /// An outline or area failed (bad mask shape or pixel spacing).
    #[error("{0}")]
    Planar(#[from] PlanarError),
    /// No segment has a non-empty key slice: there is nothing to draw.
    #[error("no segment has a non-empty key slice; no planar measurement to report")]
    NothingToReport,
    /// The derived document could not be read back or written (dicom-rs error text).
    #[error("re-encoding the report failed: {0}")]
    Dicom(String),
}

/// One TID 1410 group's content: segment label, key slice `z` (index into
/// `Volume::slices`), the outline on it and its enclosed area (cm²).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanarGroup {
    /// SegmentLabel of the segment, used as Tracking Identifier.
    pub label: String,
    /// Label value in the label map.
    pub label_value: u8,
    /// Key slice: the measure stage's centroid slice (`SegmentMeasurements::centroid_slice`).
    pub slice: usize,
    /// Outline of the segment's largest region on `slice`.
    pub outline: Outline,
    /// Area enclosed by `outline`, cm² (row × column pixel spacing of the volume).
    pub area_cm2: f64,
}

/// The planar groups of a job: for each measured segment with a centroid slice, the
/// outline of its largest region on that slice and the enclosed area, in label order.
///
/// The label map is `(z, y, x)` with `y` = image row and `x` = image column of the
/// source slice `z` (the grid the SEG is written on); pixel spacing is
/// `volume.spacing[1]` (rows, mm) × `volume.spacing[2]` (columns, mm).
///
/// Errors: [`PlanarError::BadSpacing`] for a non-positive spacing.
pub fn planar_groups(findings: &Findings) -> Result<Vec<PlanarGroup>, PlanarError> {
    let seg = &findings.segmentation;
    let labels = &seg.labels;
    let (nz, rows, columns) = labels.dim();
    let spacing = seg.job.volume.spacing;
    let mut measured: Vec<_> = findings.measurements.iter().collect();
    measured.sort_by_key(|m| m.label_value);
    let mut out = Vec::new();
    for m in measured {
        let Some(z) = m.centroid_slice.filter(|&z| z < nz) else {
            continue;
        };
        let mask: Vec<bool> = labels
            .index_axis(Axis(0), z)
            .iter()
            .map(|&v| v == m.label_value)
            .collect();
        let Some(outline) = outline_of_largest_region(&mask, rows, columns)? else {
            continue;
        };
        let area_cm2 = outline.area_cm2(spacing[1], spacing[2])?;
        let label = seg
            .segments
            .iter()
            .find(|d| d.label_value == m.label_value)
            .map(|d| d.label.clone())
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| format!("Segment {}", m.label_value));
        out.push(PlanarGroup {
            label,
            label_value: m.label_value,
            slice: z,
            outline,
            area_cm2,
        });
    }
    Ok(out)
}

/// Encode the planar ("viewer-friendly") measurement report: a Comprehensive 3D SR
/// following PS3.16 TID 1500 whose Imaging Measurements container holds one TID 1410
/// Planar ROI Measurements group per segment (see [`planar_groups`]):
///
/// ```text
/// CONTAINER Measurement Group (125007, DCM), template 1410
///   HAS OBS CONTEXT TEXT   Tracking Identifier (112039, DCM) = segment label
///   HAS OBS CONTEXT UIDREF Tracking Unique Identifier (112040, DCM)
///   CONTAINS CODE          Finding (121071, DCM) = the segment's property type
///   CONTAINS SCOORD        Image Region (111030, DCM), POLYLINE, closed, image coordinates
///     SELECTED FROM IMAGE  the key slice's source instance (and frame)
///   CONTAINS NUM           Area (42798000, SCT), cm2
/// ```
///
/// Everything else (header modules, observer context, image library, evidence) is that
/// of [`encode_tid1500`], except SeriesDescription ([`PLANAR_SERIES_DESCRIPTION`]) and a
/// new SOP Instance UID / Series Instance UID.
///
/// Errors: those of [`encode_tid1500`] and [`planar_groups`];
/// [`PlanarSrError::NothingToReport`] when no segment has a non-empty key slice;
/// [`PlanarSrError::Dicom`] when re-encoding fails.
pub fn encode_planar_tid1500(
    findings: &Findings,
    seg: &SegReference,
    opts: &SrOptions,
) -> Result<EncodedObject, PlanarSrError> {
    let groups = planar_groups(findings)?;
    if groups.is_empty() {
        return Err(PlanarSrError::NothingToReport);
    }
    let base = encode_tid1500(findings, seg, opts)?;
    let mut file = dicom_object::from_reader(&base.bytes[128..])
        .map_err(|e| PlanarSrError::Dicom(e.to_string()))?;
    let description = format!(
        "{PLANAR_SERIES_DESCRIPTION} ({})",
        super::result_version_note(findings.segmentation.job.version)
    );
    file.put(el(tags::SERIES_DESCRIPTION, VR::LO, description.as_str()));

    let slices = &findings.segmentation.job.volume.slices;
    let properties: Vec<Code> = groups
        .iter()
        .map(|g| {
            findings
                .segmentation
                .segments
                .iter()
                .find(|d| d.label_value == g.label_value)
                .map(|d| d.property_type.clone())
                .unwrap_or_else(|| codes::ANATOMICAL_STRUCTURE.code())
        })
        .collect();
    let mut items = Vec::with_capacity(groups.len());
    for (g, property) in groups.iter().zip(&properties) {
        let slice = slices.get(g.slice).ok_or_else(|| {
            PlanarSrError::Dicom(format!(
                "key slice {} has no source instance ({} slices)",
                g.slice,
                slices.len()
            ))
        })?;
        let mut image = item(Some("SELECTED FROM"), "IMAGE", None);
        let mut r = InMemDicomObject::new_empty();
        r.put(el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            slice.sop_class_uid.as_str(),
        ));
        r.put(el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            slice.sop_instance_uid.as_str(),
        ));
        if let Some(f) = slice.frame_number {
            r.put(el(tags::REFERENCED_FRAME_NUMBER, VR::IS, f.to_string()));
        }
        image.put(seq(tags::REFERENCED_SOP_SEQUENCE, vec![r]));

        let mut scoord = item(Some("CONTAINS"), "SCOORD", Some(&IMAGE_REGION.code()));
        scoord.put(el(tags::GRAPHIC_TYPE, VR::CS, "POLYLINE"));
        scoord.put(DataElement::new(
            tags::GRAPHIC_DATA,
            VR::FL,
            PrimitiveValue::F32(g.outline.graphic_data().into()),
        ));
        scoord.put(seq(tags::CONTENT_SEQUENCE, vec![image]));

        let mut tracking = item(
            Some("HAS OBS CONTEXT"),
            "TEXT",
            Some(&codes::TRACKING_IDENTIFIER.code()),
        );
        tracking.put(el(tags::TEXT_VALUE, VR::UT, g.label.as_str()));
        let mut tracking_uid = item(
            Some("HAS OBS CONTEXT"),
            "UIDREF",
            Some(&codes::TRACKING_UNIQUE_IDENTIFIER.code()),
        );
        tracking_uid.put(el(tags::UID, VR::UI, crate::uid::new_uid().as_str()));
        let mut finding = item(Some("CONTAINS"), "CODE", Some(&codes::FINDING.code()));
        finding.put(seq(tags::CONCEPT_CODE_SEQUENCE, vec![code_item(property)]));

        let mut area = item(Some("CONTAINS"), "NUM", Some(&AREA.code()));
        let ds = format_ds(g.area_cm2)?;
        let mut mv = InMemDicomObject::new_empty();
        mv.put(seq(
            tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
            vec![code_item(&UNIT_SQUARE_CENTIMETER.code())],
        ));
        if ds.parse::<f64>().ok() != Some(g.area_cm2) {
            // FloatingPointValue, Type 1C when the DS is not exact (PS3.3 C.18.1).
            mv.put(el(tags::FLOATING_POINT_VALUE, VR::FD, g.area_cm2));
        }
        mv.put(el(tags::NUMERIC_VALUE, VR::DS, ds));
        area.put(seq(tags::MEASURED_VALUE_SEQUENCE, vec![mv]));

        let mut group = item(
            Some("CONTAINS"),
            "CONTAINER",
            Some(&codes::MEASUREMENT_GROUP.code()),
        );
        group.put(el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
        let mut t = InMemDicomObject::new_empty();
        t.put(el(tags::MAPPING_RESOURCE, VR::CS, "DCMR"));
        t.put(el(tags::TEMPLATE_IDENTIFIER, VR::CS, "1410"));
        group.put(seq(tags::CONTENT_TEMPLATE_SEQUENCE, vec![t]));
        group.put(seq(
            tags::CONTENT_SEQUENCE,
            vec![tracking, tracking_uid, finding, scoord, area],
        ));
        items.push(group);
    }

    // Replace the children of the root's Imaging Measurements container.
    let mut root_children: Vec<InMemDicomObject> = file
        .element(tags::CONTENT_SEQUENCE)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()))
        .ok_or_else(|| {
            PlanarSrError::Dicom("the volumetric report has no ContentSequence".into())
        })?;
    let container = root_children
        .iter_mut()
        .find(|c| concept_value(c).as_deref() == Some(codes::IMAGING_MEASUREMENTS.value))
        .ok_or_else(|| {
            PlanarSrError::Dicom(
                "the volumetric report has no Imaging Measurements container".into(),
            )
        })?;
    container.put(seq(tags::CONTENT_SEQUENCE, items));
    file.put(seq(tags::CONTENT_SEQUENCE, root_children));

    let mut bytes = Vec::with_capacity(base.bytes.len());
    file.write_all(&mut bytes)
        .map_err(|e| PlanarSrError::Dicom(e.to_string()))?;
    Ok(EncodedObject { bytes, ..base })
}

/// A content item with RelationshipType (if any), ValueType and ConceptNameCodeSequence
/// (PS3.3 C.17.3 Document Content / Relationship Macros); the value is added by the caller.
fn item(relationship: Option<&str>, value_type: &str, concept: Option<&Code>) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    if let Some(r) = relationship {
        o.put(el(tags::RELATIONSHIP_TYPE, VR::CS, r));
    }
    o.put(el(tags::VALUE_TYPE, VR::CS, value_type));
    if let Some(c) = concept {
        o.put(seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(c)]));
    }
    o
}

/// CodeValue of a content item's concept name, if any.
fn concept_value(o: &InMemDicomObject) -> Option<String> {
    let items = o.element(tags::CONCEPT_NAME_CODE_SEQUENCE).ok()?.items()?;
    let v = items
        .first()?
        .element(tags::CODE_VALUE)
        .ok()?
        .to_str()
        .ok()?;
    Some(v.trim().to_string())
}

/// Label 4-connected regions; return (labels, label of the largest, its first pixel
/// index in raster order, its pixel count), or None for an empty mask. Labels start at 1.
fn largest_region(
    mask: &[bool],
    rows: usize,
    columns: usize,
) -> Option<(Vec<u32>, u32, usize, u64)> {
    let mut labels = vec![0u32; mask.len()];
    let mut best: Option<(u32, usize, u64)> = None;
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        next += 1;
        labels[start] = next;
        stack.push(start);
        let mut count = 0u64;
        while let Some(i) = stack.pop() {
            count += 1;
            let (r, c) = (i / columns, i % columns);
            let mut visit = |j: usize| {
                if mask[j] && labels[j] == 0 {
                    labels[j] = next;
                    stack.push(j);
                }
            };
            if r > 0 {
                visit(i - columns);
            }
            if r + 1 < rows {
                visit(i + columns);
            }
            if c > 0 {
                visit(i - 1);
            }
            if c + 1 < columns {
                visit(i + 1);
            }
        }
        if best.map_or(true, |(_, _, n)| count > n) {
            best = Some((next, start, count));
        }
    }
    best.map(|(label, start, count)| (labels, label, start, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_from(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let r = rows.len();
        let c = rows[0].len();
        let m = rows
            .iter()
            .flat_map(|s| s.chars().map(|ch| ch == '#'))
            .collect();
        (m, r, c)
    }

    /// Pixels enclosed by the outer boundary of region `label` computed independently:
    /// everything not reachable from outside through non-region pixels (8-connected,
    /// the dual of 4-connected regions), on a grid padded by one pixel.
    fn filled_count(mask: &[bool], rows: usize, columns: usize) -> u64 {
        let (labels, label, _, _) = largest_region(mask, rows, columns).unwrap();
        let (pr, pc) = (rows + 2, columns + 2);
        let region = |r: usize, c: usize| {
            r >= 1
                && c >= 1
                && r <= rows
                && c <= columns
                && labels[(r - 1) * columns + c - 1] == label
        };
        let mut outside = vec![false; pr * pc];
        let mut stack = vec![(0usize, 0usize)];
        outside[0] = true;
        while let Some((r, c)) = stack.pop() {
            for dr in -1i64..=1 {
                for dc in -1i64..=1 {
                    let (nr, nc) = (r as i64 + dr, c as i64 + dc);
                    if nr < 0 || nc < 0 || nr >= pr as i64 || nc >= pc as i64 {
                        continue;
                    }
                    let (nr, nc) = (nr as usize, nc as usize);
                    if !outside[nr * pc + nc] && !region(nr, nc) {
                        outside[nr * pc + nc] = true;
                        stack.push((nr, nc));
                    }
                }
            }
        }
        (pr * pc - outside.iter().filter(|&&o| o).count()) as u64
    }

    #[test]
    fn rectangle_has_four_corners_clockwise_and_its_pixel_area() {
        let (m, r, c) = mask_from(&["....", ".##.", ".##.", ".##.", "...."]);
        let o = outline_of_largest_region(&m, r, c).unwrap().unwrap();
        assert_eq!(
            o.points,
            vec![(1.0, 1.0), (3.0, 1.0), (3.0, 4.0), (1.0, 4.0), (1.0, 1.0)]
        );
        assert_eq!(o.enclosed_pixels, 6);
        assert_eq!(o.region_pixels, 6);
        assert_eq!(
            o.graphic_data(),
            vec![1.0, 1.0, 3.0, 1.0, 3.0, 4.0, 1.0, 4.0, 1.0, 1.0]
        );
        assert!((o.area_cm2(2.0, 5.0).unwrap() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn single_pixel_at_the_image_corner() {
        let (m, r, c) = mask_from(&["#.", ".."]);
        let o = outline_of_largest_region(&m, r, c).unwrap().unwrap();
        assert_eq!(
            o.points,
            vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)]
        );
        assert_eq!(o.enclosed_pixels, 1);
    }

    #[test]
    fn largest_region_wins_and_diagonal_pixels_are_separate_regions() {
        let (m, r, c) = mask_from(&["#....", ".#...", "..###", "..###"]);
        let o = outline_of_largest_region(&m, r, c).unwrap().unwrap();
        assert_eq!(o.region_pixels, 6);
        assert_eq!(o.enclosed_pixels, 6);
        assert_eq!(o.points[0], (2.0, 2.0));
    }

    #[test]
    fn ring_encloses_its_hole_and_concave_shapes_keep_every_corner() {
        let (m, r, c) = mask_from(&["#####", "#...#", "#####"]);
        let o = outline_of_largest_region(&m, r, c).unwrap().unwrap();
        assert_eq!(o.region_pixels, 12);
        assert_eq!(o.enclosed_pixels, 15);
        assert_eq!(o.points.len(), 5);
        let (m, r, c) = mask_from(&["#..", "#..", "###"]);
        let o = outline_of_largest_region(&m, r, c).unwrap().unwrap();
        assert_eq!(
            o.points,
            vec![
                (0.0, 0.0),
                (1.0, 0.0),
                (1.0, 2.0),
                (3.0, 2.0),
                (3.0, 3.0),
                (0.0, 3.0),
                (0.0, 0.0)
            ]
        );
        assert_eq!(o.enclosed_pixels, 5);
    }

    #[test]
    fn pinch_at_a_diagonal_inside_one_region_is_traced_through() {
        // One 4-connected region whose outline meets itself at vertex (2, 2), where
        // pixels (r1, c1) and (r2, c2) touch only diagonally; the background pocket
        // at (r2..3, c1) is 8-connected to the outside, so it is not enclosed.
        let (m, r, c) = mask_from(&["##..", "##..", "#.##", "#.##", "####"]);
        let o = outline_of_largest_region(&m, r, c).unwrap().unwrap();
        assert_eq!(o.region_pixels, 14);
        assert_eq!(o.enclosed_pixels, 14);
        assert_eq!(o.enclosed_pixels, filled_count(&m, r, c));
        assert_eq!(o.points.iter().filter(|&&p| p == (2.0, 2.0)).count(), 2);
        assert_eq!(o.points.first(), o.points.last());
    }

    #[test]
    fn empty_mask_and_bad_input() {
        assert_eq!(outline_of_largest_region(&[false; 6], 2, 3), Ok(None));
        assert_eq!(
            outline_of_largest_region(&[true; 5], 2, 3),
            Err(PlanarError::ShapeMismatch {
                len: 5,
                rows: 2,
                columns: 3
            })
        );
        let (m, r, c) = mask_from(&["#"]);
        let o = outline_of_largest_region(&m, r, c).unwrap().unwrap();
        assert!(matches!(
            o.area_cm2(0.0, 1.0),
            Err(PlanarError::BadSpacing { .. })
        ));
        assert!(matches!(
            o.area_cm2(f64::NAN, 1.0),
            Err(PlanarError::BadSpacing { .. })
        ));
    }

    #[test]
    fn enclosed_area_equals_filled_region_on_random_masks() {
        // Deterministic pseudo-random blobs (64-bit LCG, Knuth MMIX constants) smoothed
        // once so that regions have holes, pinches and concavities.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for case in 0..200 {
            let (rows, columns) = (3 + (rnd() % 20) as usize, 3 + (rnd() % 20) as usize);
            let density = 30 + rnd() % 50;
            let raw: Vec<bool> = (0..rows * columns).map(|_| rnd() % 100 < density).collect();
            let m: Vec<bool> = (0..rows * columns)
                .map(|i| {
                    let (r, c) = (i / columns, i % columns);
                    let mut n = 0;
                    for (dr, dc) in [(0i64, 0i64), (0, 1), (1, 0), (0, -1), (-1, 0)] {
                        let (nr, nc) = (r as i64 + dr, c as i64 + dc);
                        if nr >= 0
                            && nc >= 0
                            && (nr as usize) < rows
                            && (nc as usize) < columns
                            && raw[nr as usize * columns + nc as usize]
                        {
                            n += 1;
                        }
                    }
                    n >= 3
                })
                .collect();
            let Some(o) = outline_of_largest_region(&m, rows, columns).unwrap() else {
                assert!(
                    !m.iter().any(|&b| b),
                    "case {case}: no outline for a non-empty mask"
                );
                continue;
            };
            assert_eq!(
                o.enclosed_pixels,
                filled_count(&m, rows, columns),
                "case {case}: {rows}x{columns}"
            );
            assert!(o.enclosed_pixels >= o.region_pixels);
            assert_eq!(o.points.first(), o.points.last(), "case {case}: not closed");
            // Every edge is axis-parallel and consecutive edges turn (collinear points merged).
            for w in o.points.windows(2) {
                assert!(
                    w[0].0 == w[1].0 || w[0].1 == w[1].1,
                    "case {case}: diagonal edge {w:?}"
                );
                assert_ne!(w[0], w[1], "case {case}: repeated vertex");
            }
        }
    }
}
