//! Round trip of `encode_binary_seg` through independent readers.
//!
//! Each case encodes a label map, writes the SEG, the label map (`.npy`) and
//! the expected geometry, then runs `integration/check_seg.py` (dciodvfy +
//! pydicom structure checks + highdicom decoding + dcmqi geometry) with the
//! project venv Python, located by `MYONODE_PYTHON` (default
//! `<crate>/.venv/bin/python`; needs pydicom, highdicom, nibabel, dicom3tools, dcmqi).
//! Set `MYONODE_TEST_OUT=DIR` to keep the generated files in `DIR/keep/`.
//! Real-data cases read `MYONODE_DATA` (default `<crate>/../shared/data`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_pixeldata::PixelDecoder;
use ndarray::Array3;
use serde_json::json;

use myonode::encode::{
    encode_binary_seg, encode_seg, SegOptions, SegmentationKind, LABEL_MAP_SEGMENTATION_STORAGE,
};
use myonode::pipeline::messages::{
    AlgorithmIdentification, Code, SegmentAlgorithmType, SegmentDescription, Segmentation,
    SeriesHeader, StudyJob,
};
use myonode::uid::new_uid;
use myonode::volume::{cross, dot, norm, SliceRef, Volume};

const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const ENHANCED_MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4.1";

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv Python; panics (test fails) with a clear message when missing.
fn python() -> PathBuf {
    let p = std::env::var_os("MYONODE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "Python interpreter {} not found: set MYONODE_PYTHON to the venv python \
         (with pydicom, highdicom, numpy, nibabel, dicom3tools, dcmqi)",
        p.display()
    );
    p
}

fn data_dir() -> Option<PathBuf> {
    let d = std::env::var_os("MYONODE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join("../shared/data"));
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!(
            "SKIPPED: test data directory {} not found (set MYONODE_DATA)",
            d.display()
        );
        None
    }
}

/// Run check_seg.py; returns (success, combined output).
fn run_checker(seg: &Path, labels: &Path, source: &[&str]) -> (bool, String) {
    let out = Command::new(python())
        .arg(crate_root().join("integration/check_seg.py"))
        .arg(seg)
        .arg("--labels")
        .arg(labels)
        .args(source)
        .arg("--require-dcmqi")
        .output()
        .expect("failed to start check_seg.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn code(v: &str, s: &str, m: &str) -> Code {
    Code::new(v, s, m)
}

fn segments() -> Vec<SegmentDescription> {
    vec![
        SegmentDescription {
            label_value: 1,
            label: "Left thigh muscle".into(),
            category: code("85756007", "SCT", "Tissue"),
            property_type: code("127954009", "SCT", "Skeletal muscle"),
            type_modifier: Some(code("7771000", "SCT", "Left")),
            anatomic_region: Some(code("68367000", "SCT", "Thigh")),
            color_rgb: [220, 60, 60],
            algorithm_type: SegmentAlgorithmType::Automatic,
        },
        SegmentDescription {
            label_value: 2,
            label: "Right femur".into(),
            category: code("91723000", "SCT", "Anatomical Structure"),
            property_type: code("71341001", "SCT", "Femur"),
            type_modifier: Some(code("24028007", "SCT", "Right")),
            anatomic_region: None,
            color_rgb: [240, 230, 140],
            algorithm_type: SegmentAlgorithmType::Automatic,
        },
    ]
}

fn algorithm() -> AlgorithmIdentification {
    AlgorithmIdentification {
        family: code("123110", "DCM", "Artificial Intelligence"),
        name: "myonode-test".into(),
        version: "0.1".into(),
    }
}

fn options() -> SegOptions {
    SegOptions {
        series_number: 901,
        series_description: "Test segmentation".into(),
        content_label: "MUSCLE".into(),
        manufacturer: "myonode".into(),
        manufacturer_model_name: "myonode".into(),
        software_versions: "0.1.0".into(),
        institution_name: "Test Hospital".into(),
        device_serial_number: "MYONODE".into(),
    }
}

fn put(obj: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn segmentation(volume: Volume, header: SeriesHeader, labels: Array3<u8>) -> Segmentation {
    Segmentation {
        job: StudyJob {
            job_id: "test".into(),
            version: 1,
            header,
            volume: Arc::new(volume),
            job_dir: PathBuf::from("/nonexistent"),
            channels: Vec::new(),
        },
        labels: Arc::new(labels),
        segments: segments(),
        algorithm: algorithm(),
    }
}

/// Rotation matrix columns from Euler angles (radians): an oblique, orthonormal frame.
fn oblique_axes() -> ([f64; 3], [f64; 3]) {
    let (a, b, c) = (0.3f64, -0.45f64, 0.2f64);
    let rz = [
        [a.cos(), -a.sin(), 0.0],
        [a.sin(), a.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    let ry = [
        [b.cos(), 0.0, b.sin()],
        [0.0, 1.0, 0.0],
        [-b.sin(), 0.0, b.cos()],
    ];
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, c.cos(), -c.sin()],
        [0.0, c.sin(), c.cos()],
    ];
    let mul = |m: [[f64; 3]; 3], n: [[f64; 3]; 3]| {
        let mut r = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                r[i][j] = (0..3).map(|k| m[i][k] * n[k][j]).sum();
            }
        }
        r
    };
    let r = mul(mul(rz, ry), rx);
    ([r[0][0], r[1][0], r[2][0]], [r[0][1], r[1][1], r[2][1]])
}

struct Synthetic {
    seg: Segmentation,
    geometry: serde_json::Value,
}

/// 5 slices of 13 rows × 11 columns, oblique; `reversed` stores the slices in
/// descending position along the normal (slice_direction = −n); `multi_frame`
/// makes the source one Enhanced MR instance whose frame `z + 1` is slice `z`.
fn synthetic(labels: Array3<u8>, reversed: bool, multi_frame: bool) -> Synthetic {
    let (row, col) = oblique_axes();
    let n = cross(row, col);
    let slice_direction = if reversed { n.map(|c| -c) } else { n };
    let study = new_uid();
    let series = new_uid();
    let frame_of_reference = new_uid();
    let enhanced_uid = new_uid();
    let slices: Vec<SliceRef> = (0..5u32)
        .map(|z| {
            if multi_frame {
                SliceRef {
                    sop_class_uid: ENHANCED_MR_IMAGE_STORAGE.into(),
                    sop_instance_uid: enhanced_uid.clone(),
                    frame_number: Some(z + 1),
                }
            } else {
                SliceRef {
                    sop_class_uid: MR_IMAGE_STORAGE.into(),
                    sop_instance_uid: new_uid(),
                    frame_number: None,
                }
            }
        })
        .collect();
    let volume = Volume {
        data: Array3::zeros((5, 13, 11)),
        spacing: [2.5, 0.7, 0.9],
        origin: [-10.5, 20.25, 33.0],
        row_direction: row,
        column_direction: col,
        slice_direction,
        slices: slices.clone(),
    };
    let mut ds = InMemDicomObject::new_empty();
    put(&mut ds, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put(&mut ds, tags::PATIENT_NAME, VR::PN, "Müller^Jürgen");
    put(&mut ds, tags::PATIENT_ID, VR::LO, "PID-0042");
    put(&mut ds, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
    put(&mut ds, tags::PATIENT_SEX, VR::CS, "M");
    put(&mut ds, tags::PATIENT_AGE, VR::AS, "056Y");
    put(&mut ds, tags::STUDY_INSTANCE_UID, VR::UI, &study);
    put(&mut ds, tags::SERIES_INSTANCE_UID, VR::UI, &series);
    put(&mut ds, tags::STUDY_DATE, VR::DA, "20260101");
    put(&mut ds, tags::STUDY_TIME, VR::TM, "101500");
    put(&mut ds, tags::ACCESSION_NUMBER, VR::SH, "ACC123");
    put(&mut ds, tags::STUDY_ID, VR::SH, "S1");
    put(&mut ds, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "Doe^Jane");
    put(&mut ds, tags::STUDY_DESCRIPTION, VR::LO, "MR thigh");
    put(
        &mut ds,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &frame_of_reference,
    );
    put(&mut ds, tags::MODALITY, VR::CS, "MR");
    let header = SeriesHeader {
        study_instance_uid: study.clone(),
        series_instance_uid: series.clone(),
        frame_of_reference_uid: frame_of_reference.clone(),
        modality: "MR".into(),
        dataset: Arc::new(ds),
    };
    let geometry = json!({
        "image_orientation": volume.image_orientation(),
        "rows": 13, "columns": 11,
        "study_instance_uid": study,
        "series_instance_uid": series,
        "frame_of_reference_uid": frame_of_reference,
        "slices": (0..5).map(|z| json!({
            "sop_class_uid": slices[z].sop_class_uid,
            "sop_instance_uid": slices[z].sop_instance_uid,
            "frame_number": slices[z].frame_number,
            "position": volume.slice_position(z),
        })).collect::<Vec<_>>(),
        "attributes": {
            "PatientName": "Müller^Jürgen", "PatientID": "PID-0042", "AccessionNumber": "ACC123",
            "StudyID": "S1", "PatientAge": "056Y", "Manufacturer": "myonode",
            "SeriesNumber": "901", "InstitutionName": "Test Hospital"
        },
    });
    Synthetic {
        seg: segmentation(volume, header, labels),
        geometry,
    }
}

/// Segment 1 (label 1) on slices 0, 1, 3 (a diamond), segment 2 on slices 1, 2
/// (a rectangle, disjoint from the diamond); slice 4 is empty for both.
fn pattern() -> Array3<u8> {
    let mut l = Array3::<u8>::zeros((5, 13, 11));
    for z in [0usize, 1, 3] {
        for y in 0..13i32 {
            for x in 0..11i32 {
                if (y - 6).abs() + (x - 5).abs() <= 3 + z as i32 {
                    l[[z, y as usize, x as usize]] = 1;
                }
            }
        }
    }
    for z in [1usize, 2] {
        for y in 0..3 {
            for x in 7..11 {
                l[[z, y, x]] = 2;
            }
        }
    }
    // Single voxels at the last pixel of a frame (bit-stream boundaries).
    l[[2, 12, 10]] = 2;
    l[[0, 12, 10]] = 1;
    l
}

/// Writes the SEG, labels and geometry of a case into `dir` (and, for
/// inspection, also into `$MYONODE_TEST_OUT` when that variable is set).
fn write_case(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    labels: &Array3<u8>,
    geometry: Option<&serde_json::Value>,
) -> (PathBuf, PathBuf, Option<PathBuf>) {
    if let Some(out) = std::env::var_os("MYONODE_TEST_OUT").filter(|_| !dir.ends_with("keep")) {
        let keep = PathBuf::from(out).join("keep");
        std::fs::create_dir_all(&keep).unwrap();
        write_case(&keep, name, bytes, labels, geometry);
    }
    let seg = dir.join(format!("{name}.seg.dcm"));
    std::fs::write(&seg, bytes).unwrap();
    let npy = dir.join(format!("{name}.labels.npy"));
    ndarray_npy::write_npy(&npy, labels).unwrap();
    let geo = geometry.map(|g| {
        let p = dir.join(format!("{name}.geometry.json"));
        std::fs::write(&p, serde_json::to_vec_pretty(g).unwrap()).unwrap();
        p
    });
    (seg, npy, geo)
}

fn frame_count(bytes: &[u8]) -> (InMemDicomObject, u32) {
    let obj = dicom_object::from_reader(&bytes[128..]).expect("SEG parses with dicom-object");
    let n: u32 = obj
        .element(tags::NUMBER_OF_FRAMES)
        .unwrap()
        .to_int()
        .unwrap();
    (obj.into_inner(), n)
}

fn synthetic_round_trip(reversed: bool, multi_frame: bool) {
    synthetic_round_trip_of(SegmentationKind::Binary, reversed, multi_frame)
}

fn synthetic_round_trip_of(kind: SegmentationKind, reversed: bool, multi_frame: bool) {
    let labels = pattern();
    let case = synthetic(labels.clone(), reversed, multi_frame);
    let enc = encode_seg(&case.seg, &options(), kind).expect("encode");
    let (obj, frames) = frame_count(&enc.bytes);
    let labelmap = kind == SegmentationKind::Labelmap;
    if labelmap {
        assert_eq!(enc.sop_class_uid, LABEL_MAP_SEGMENTATION_STORAGE);
        // one frame per plane holding any segment: slices 0, 1, 2, 3
        assert_eq!(frames, 4);
        assert_eq!(ds_str(&obj, tags::SEGMENTATION_TYPE), "LABELMAP");
        // 4 frames · 13 · 11 bytes = 572 (even)
        assert_eq!(obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().len(), 572);
        let numbers: Vec<u16> = obj
            .element(tags::SEGMENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .map(|i| i.element(tags::SEGMENT_NUMBER).unwrap().to_int().unwrap())
            .collect();
        assert_eq!(numbers, vec![0, 1, 2], "background segment 0, then 1..N");
    } else {
        assert_eq!(enc.sop_class_uid, uids::SEGMENTATION_STORAGE);
        // segment 1: slices 0, 1, 3; segment 2: slices 1, 2 → 5 frames
        assert_eq!(frames, 5);
    }
    assert_eq!(
        obj.element(tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap(),
        enc.sop_instance_uid
    );
    assert_eq!(
        obj.element(tags::SERIES_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap(),
        enc.series_instance_uid
    );
    assert_eq!(
        obj.element(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
        "Müller^Jürgen"
    );
    assert_eq!(
        obj.element(tags::SPECIFIC_CHARACTER_SET)
            .unwrap()
            .to_str()
            .unwrap(),
        "ISO_IR 192"
    );
    let series_item = &obj
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let instances = series_item
        .element(tags::REFERENCED_INSTANCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        instances.len(),
        if multi_frame { 1 } else { 5 },
        "distinct source instances"
    );
    if !labelmap {
        // ceil(5·13·11 / 8) = 90 bytes (even).
        assert_eq!(obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().len(), 90);
    }

    let dir = tempfile::tempdir().unwrap();
    let name = match (reversed, multi_frame) {
        (false, false) => "synthetic",
        (true, false) => "synthetic-reversed",
        (_, true) => "synthetic-multiframe",
    };
    let name = format!("{name}-{}", kind.segmentation_type().to_lowercase());
    let name = name.as_str();
    let (seg, npy, geo) = write_case(dir.path(), name, &enc.bytes, &labels, Some(&case.geometry));
    let geo = geo.unwrap();
    let (ok, out) = run_checker(&seg, &npy, &["--geometry", geo.to_str().unwrap()]);
    println!("{out}");
    assert!(ok, "check_seg.py rejected the SEG:\n{out}");

    // The checker must notice a single wrong voxel.
    let mut wrong = labels.clone();
    wrong[[3, 6, 5]] = 0;
    let bad = dir.path().join("wrong.labels.npy");
    ndarray_npy::write_npy(&bad, &wrong).unwrap();
    let (ok, out) = run_checker(&seg, &bad, &["--geometry", geo.to_str().unwrap()]);
    assert!(
        !ok,
        "check_seg.py accepted a label map with one wrong voxel:\n{out}"
    );
    assert!(out.contains("voxels differ"), "{out}");
}

#[test]
fn synthetic_oblique_odd_grid_round_trips() {
    synthetic_round_trip(false, false);
}

#[test]
fn synthetic_descending_slice_order_round_trips() {
    synthetic_round_trip(true, false);
}

#[test]
fn synthetic_multi_frame_source_round_trips() {
    synthetic_round_trip(false, true);
}

#[test]
fn labelmap_synthetic_oblique_odd_grid_round_trips() {
    synthetic_round_trip_of(SegmentationKind::Labelmap, false, false);
}

#[test]
fn labelmap_synthetic_descending_multi_frame_source_round_trips() {
    synthetic_round_trip_of(SegmentationKind::Labelmap, true, true);
}

#[test]
fn labelmap_empty_mask_keeps_every_plane_and_round_trips() {
    let labels = Array3::<u8>::zeros((5, 13, 11));
    let case = synthetic(labels.clone(), false, false);
    let enc = encode_seg(&case.seg, &options(), SegmentationKind::Labelmap).expect("encode");
    let (_, frames) = frame_count(&enc.bytes);
    assert_eq!(frames, 5, "one frame per slice");
    let dir = tempfile::tempdir().unwrap();
    let (seg, npy, geo) = write_case(dir.path(), "empty-labelmap", &enc.bytes, &labels, Some(&case.geometry));
    let (ok, out) = run_checker(&seg, &npy, &["--geometry", geo.unwrap().to_str().unwrap()]);
    assert!(ok, "check_seg.py rejected the empty LABELMAP SEG:\n{out}");
}

#[test]
fn empty_mask_keeps_all_frames_and_round_trips() {
    let labels = Array3::<u8>::zeros((5, 13, 11));
    let case = synthetic(labels.clone(), false, false);
    let enc = encode_binary_seg(&case.seg, &options()).expect("encode");
    let (_, frames) = frame_count(&enc.bytes);
    assert_eq!(frames, 10, "2 segments × 5 slices");
    let dir = tempfile::tempdir().unwrap();
    let (seg, npy, geo) = write_case(
        dir.path(),
        "empty",
        &enc.bytes,
        &labels,
        Some(&case.geometry),
    );
    let (ok, out) = run_checker(&seg, &npy, &["--geometry", geo.unwrap().to_str().unwrap()]);
    assert!(ok, "check_seg.py rejected the empty SEG:\n{out}");
}

#[test]
fn ascii_only_headers_have_no_specific_character_set() {
    let mut case = synthetic(pattern(), false, false);
    let mut ds = (*case.seg.job.header.dataset).clone();
    put(&mut ds, tags::PATIENT_NAME, VR::PN, "Doe^John");
    ds.remove_element(tags::SPECIFIC_CHARACTER_SET);
    case.seg.job.header.dataset = Arc::new(ds);
    let enc = encode_binary_seg(&case.seg, &options()).unwrap();
    let (obj, _) = frame_count(&enc.bytes);
    assert!(obj.get(tags::SPECIFIC_CHARACTER_SET).is_none());
    assert_eq!(
        obj.element(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
        "Doe^John"
    );
}

#[test]
fn label_map_of_wrong_shape_is_rejected() {
    let case = synthetic(pattern(), false, false);
    let mut seg = case.seg;
    seg.labels = Arc::new(Array3::zeros((5, 13, 10)));
    let err = encode_binary_seg(&seg, &options()).unwrap_err();
    assert!(
        matches!(err, myonode::encode::EncodeError::ShapeMismatch { .. }),
        "{err}"
    );
}

#[test]
fn invalid_inputs_are_rejected_with_typed_errors() {
    use myonode::encode::EncodeError;
    let mut case = synthetic(pattern(), false, false);
    case.seg.job.header.frame_of_reference_uid.clear();
    let mut ds = (*case.seg.job.header.dataset).clone();
    ds.remove_element(tags::FRAME_OF_REFERENCE_UID);
    case.seg.job.header.dataset = Arc::new(ds);
    let err = encode_binary_seg(&case.seg, &options()).unwrap_err();
    assert!(
        matches!(
            err,
            EncodeError::MissingAttribute {
                name: "FrameOfReferenceUID",
                ..
            }
        ),
        "{err}"
    );

    let mut case = synthetic(pattern(), false, false);
    case.seg.segments.truncate(1); // label 2 is no longer declared
    let err = encode_binary_seg(&case.seg, &options()).unwrap_err();
    assert!(
        matches!(err, EncodeError::UndeclaredLabelValue { value: 2, .. }),
        "{err}"
    );

    let mut case = synthetic(pattern(), false, false);
    let mut volume = (*case.seg.job.volume).clone();
    volume.slice_direction = volume.row_direction; // in-plane: every slice at one position along n
    case.seg.job.volume = Arc::new(volume);
    let err = encode_binary_seg(&case.seg, &options()).unwrap_err();
    assert!(matches!(err, EncodeError::Geometry(_)), "{err}");

    let mut case = synthetic(pattern(), false, false);
    case.seg.segments.clear();
    assert!(matches!(
        encode_binary_seg(&case.seg, &options()),
        Err(EncodeError::NoSegments)
    ));
}

#[test]
fn segment_numbers_follow_sorted_label_values() {
    // Label values 5 and 9, described out of order: segment 1 ↔ 5, segment 2 ↔ 9.
    let mut labels = pattern();
    labels.mapv_inplace(|v| match v {
        1 => 9,
        2 => 5,
        v => v,
    });
    let mut case = synthetic(labels.clone(), false, false);
    case.seg.labels = Arc::new(labels.clone());
    case.seg.segments[0].label_value = 9;
    case.seg.segments[1].label_value = 5;
    let enc = encode_binary_seg(&case.seg, &options()).unwrap();
    let (obj, _) = frame_count(&enc.bytes);
    let items = obj
        .element(tags::SEGMENT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        items[0]
            .element(tags::SEGMENT_LABEL)
            .unwrap()
            .to_str()
            .unwrap(),
        "Right femur"
    );
    assert_eq!(
        items[1]
            .element(tags::SEGMENT_LABEL)
            .unwrap()
            .to_str()
            .unwrap(),
        "Left thigh muscle"
    );
    let dir = tempfile::tempdir().unwrap();
    let (seg, npy, geo) = write_case(
        dir.path(),
        "relabelled",
        &enc.bytes,
        &labels,
        Some(&case.geometry),
    );
    let geo = geo.unwrap();
    let (ok, out) = run_checker(
        &seg,
        &npy,
        &["--geometry", geo.to_str().unwrap(), "--label-values", "5,9"],
    );
    assert!(ok, "check_seg.py rejected the relabelled SEG:\n{out}");
}

// ------------------------------------------------------------ real geometry

struct SourceSlice {
    sop_class_uid: String,
    sop_instance_uid: String,
    ipp: [f64; 3],
    path: PathBuf,
}

fn ds_f64s(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<f64> {
    obj.element(tag)
        .unwrap()
        .to_multi_float64()
        .unwrap()
        .to_vec()
}

fn ds_str(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Build a Volume from a folder of single-frame images, sorted by ascending
/// projection of ImagePositionPatient on n = row × column (the assembler's convention).
fn load_series(dir: &Path, decode: bool) -> (Volume, SeriesHeader, Vec<SourceSlice>) {
    let mut slices = Vec::new();
    let mut first: Option<InMemDicomObject> = None;
    let mut iop = Vec::new();
    let mut pixel_spacing = Vec::new();
    let (mut rows, mut cols) = (0usize, 0usize);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        let obj = dicom_object::open_file(&p).unwrap().into_inner();
        if first.is_none() {
            iop = ds_f64s(&obj, tags::IMAGE_ORIENTATION_PATIENT);
            pixel_spacing = ds_f64s(&obj, tags::PIXEL_SPACING);
            rows = obj.element(tags::ROWS).unwrap().to_int::<usize>().unwrap();
            cols = obj
                .element(tags::COLUMNS)
                .unwrap()
                .to_int::<usize>()
                .unwrap();
            let mut header = obj.clone();
            header.remove_element(tags::PIXEL_DATA);
            first = Some(header);
        }
        let ipp = ds_f64s(&obj, tags::IMAGE_POSITION_PATIENT);
        slices.push(SourceSlice {
            sop_class_uid: ds_str(&obj, tags::SOP_CLASS_UID),
            sop_instance_uid: ds_str(&obj, tags::SOP_INSTANCE_UID),
            ipp: [ipp[0], ipp[1], ipp[2]],
            path: p,
        });
    }
    let row = [iop[0], iop[1], iop[2]];
    let col = [iop[3], iop[4], iop[5]];
    let n = cross(row, col);
    let n = n.map(|c| c / norm(n));
    slices.sort_by(|a, b| dot(a.ipp, n).total_cmp(&dot(b.ipp, n)));
    let nz = slices.len();
    let span = [0, 1, 2].map(|i| slices[nz - 1].ipp[i] - slices[0].ipp[i]);
    let dz = norm(span) / (nz - 1) as f64;
    let slice_direction = span.map(|c| c / norm(span));

    let mut data = Array3::<f32>::zeros((nz, rows, cols));
    if decode {
        for (z, s) in slices.iter().enumerate() {
            let obj = dicom_object::open_file(&s.path).unwrap();
            let px: Vec<f32> = obj.decode_pixel_data().unwrap().to_vec().unwrap();
            assert_eq!(px.len(), rows * cols);
            for (i, v) in px.into_iter().enumerate() {
                data[[z, i / cols, i % cols]] = v;
            }
        }
    }
    let header_ds = first.unwrap();
    let header = SeriesHeader {
        study_instance_uid: ds_str(&header_ds, tags::STUDY_INSTANCE_UID),
        series_instance_uid: ds_str(&header_ds, tags::SERIES_INSTANCE_UID),
        frame_of_reference_uid: ds_str(&header_ds, tags::FRAME_OF_REFERENCE_UID),
        modality: ds_str(&header_ds, tags::MODALITY),
        dataset: Arc::new(header_ds),
    };
    let volume = Volume {
        data,
        spacing: [dz, pixel_spacing[0], pixel_spacing[1]],
        origin: slices[0].ipp,
        row_direction: row,
        column_direction: col,
        slice_direction,
        slices: slices
            .iter()
            .map(|s| SliceRef {
                sop_class_uid: s.sop_class_uid.clone(),
                sop_instance_uid: s.sop_instance_uid.clone(),
                frame_number: None,
            })
            .collect(),
    };
    (volume, header, slices)
}

/// Ellipsoid (in voxel units) centred in the grid, for a geometric mask.
fn in_ellipsoid(
    z: usize,
    y: usize,
    x: usize,
    shape: (usize, usize, usize),
    radii: [f64; 3],
) -> bool {
    let c = [
        shape.0 as f64 / 2.0,
        shape.1 as f64 / 2.0,
        shape.2 as f64 / 2.0,
    ];
    let d = [
        (z as f64 - c[0]) / radii[0],
        (y as f64 - c[1]) / radii[1],
        (x as f64 - c[2]) / radii[2],
    ];
    d.iter().map(|v| v * v).sum::<f64>() <= 1.0
}

fn real_round_trip(series: &str, threshold: bool) {
    real_round_trip_of(series, threshold, SegmentationKind::Binary)
}

fn real_round_trip_of(series: &str, threshold: bool, kind: SegmentationKind) {
    let Some(data) = data_dir() else { return };
    let dir = data.join("series").join(series);
    assert!(dir.is_dir(), "{} missing from the test data", dir.display());
    let (volume, header, _) = load_series(&dir, threshold);
    let shape = volume.shape();
    let mut labels = Array3::<u8>::zeros(shape);
    // Threshold mask (label 1) from the real pixel values: brightest voxels
    // inside the central third of the slices; geometric ellipsoid (label 2) elsewhere.
    let t = if threshold {
        let max = volume.data.iter().cloned().fold(f32::MIN, f32::max);
        0.35 * max
    } else {
        f32::INFINITY
    };
    for ((z, y, x), l) in labels.indexed_iter_mut() {
        if threshold && z >= shape.0 / 3 && z < 2 * shape.0 / 3 && volume.data[[z, y, x]] > t {
            *l = 1;
        } else if in_ellipsoid(
            z,
            y,
            x,
            shape,
            [
                shape.0 as f64 / 3.0,
                shape.1 as f64 / 5.0,
                shape.2 as f64 / 4.0,
            ],
        ) {
            *l = 2;
        }
    }
    if !threshold {
        // Geometric label 1: a slab in the upper-left quarter on every other slice.
        for z in (0..shape.0).step_by(2) {
            for y in 10..shape.1 / 4 {
                for x in 10..shape.2 / 4 {
                    labels[[z, y, x]] = 1;
                }
            }
        }
    }
    let n1 = labels.iter().filter(|&&v| v == 1).count();
    let n2 = labels.iter().filter(|&&v| v == 2).count();
    assert!(
        n1 > 100 && n2 > 100,
        "degenerate test mask: {n1} / {n2} voxels"
    );

    let seg = segmentation(volume, header, labels.clone());
    let enc = encode_seg(&seg, &options(), kind).expect("encode");
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("{series}-{}", kind.segmentation_type().to_lowercase());
    let (seg_path, npy, _) = write_case(tmp.path(), &name, &enc.bytes, &labels, None);
    let (ok, out) = run_checker(&seg_path, &npy, &["--source-dir", dir.to_str().unwrap()]);
    println!("{out}");
    assert!(ok, "check_seg.py rejected the SEG of {series}:\n{out}");
}

#[test]
fn real_mr_knee_threshold_mask_round_trips() {
    real_round_trip("mr-knee-dess-echo1", true);
}

#[test]
fn labelmap_real_mr_knee_threshold_mask_round_trips() {
    real_round_trip_of("mr-knee-dess-echo1", true, SegmentationKind::Labelmap);
}

#[test]
fn real_ct_abdomen_geometric_mask_round_trips() {
    real_round_trip("ct-abdomen-j2k", false);
}

/// TotalSegmentator's reference output for `ct-abdomen-j2k` (31 classes, values 1..117),
/// put on the DICOM grid exactly by `integration/nifti_to_grid.py` (affine inversion, no
/// interpolation), encoded with segment coding from
/// [`myonode::encode::codes::TOTALSEGMENTATOR_CLASSES`], read back by check_seg.py
/// (dciodvfy, own decoder, highdicom, dcmqi) and compared voxel for voxel.
fn totalsegmentator_round_trip(kind: SegmentationKind) {
    use myonode::encode::codes::{totalsegmentator_class, TOTALSEGMENTATOR_CATEGORY};
    let Some(data) = data_dir() else { return };
    let dir = data.join("series/ct-abdomen-j2k");
    let nifti = data.join("labels/ct-abdomen-j2k.totalsegmentator.nii.gz");
    assert!(dir.is_dir() && nifti.is_file(), "TotalSegmentator case missing from {}", data.display());
    let tmp = tempfile::tempdir().unwrap();
    let npy = tmp.path().join("grid.npy");
    let names_json = tmp.path().join("names.json");
    let out = Command::new(python())
        .arg(crate_root().join("integration/nifti_to_grid.py"))
        .arg(&nifti)
        .arg("--source-dir")
        .arg(&dir)
        .arg("--out")
        .arg(&npy)
        .arg("--names")
        .arg(&names_json)
        .output()
        .expect("failed to start nifti_to_grid.py");
    assert!(out.status.success(), "nifti_to_grid.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let labels: Array3<u8> = ndarray_npy::read_npy(&npy).unwrap();
    let names: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&names_json).unwrap()).unwrap();
    let (volume, header, _) = load_series(&dir, false);
    assert_eq!(labels.shape(), &[volume.shape().0, volume.shape().1, volume.shape().2]);

    let mut present: Vec<u8> = labels.iter().copied().filter(|&v| v != 0).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    present.sort_unstable();
    assert_eq!(present.len(), 31, "TotalSegmentator classes in the reference output");
    let segments: Vec<SegmentDescription> = present
        .iter()
        .map(|&v| {
            let name = names.get(&v.to_string()).unwrap_or_else(|| panic!("label {v} has no name in the NIfTI"));
            let class = totalsegmentator_class(name)
                .unwrap_or_else(|| panic!("TotalSegmentator class `{name}` has no coding in codes.rs"));
            SegmentDescription {
                label_value: v,
                label: name.clone(),
                category: TOTALSEGMENTATOR_CATEGORY.code(),
                property_type: class.property_type.code(),
                type_modifier: class.type_modifier.map(|m| m.code()),
                anatomic_region: None,
                color_rgb: class.color_rgb,
                algorithm_type: SegmentAlgorithmType::Automatic,
            }
        })
        .collect();
    let mut seg = segmentation(volume, header, labels.clone());
    seg.segments = segments;
    seg.algorithm = AlgorithmIdentification {
        family: code("123110", "DCM", "Artificial Intelligence"),
        name: "TotalSegmentator".into(),
        version: "reference output".into(),
    };
    let enc = encode_seg(&seg, &options(), kind).expect("encode");
    let name = format!("totalsegmentator-{}", kind.segmentation_type().to_lowercase());
    let (seg_path, npy, _) = write_case(tmp.path(), &name, &enc.bytes, &labels, None);
    let values = present.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
    let (ok, out) = run_checker(
        &seg_path,
        &npy,
        &["--source-dir", dir.to_str().unwrap(), "--label-values", &values],
    );
    println!("{out}");
    assert!(ok, "check_seg.py rejected the TotalSegmentator {name} SEG:\n{out}");
}

#[test]
fn totalsegmentator_label_map_round_trips_as_binary_seg() {
    totalsegmentator_round_trip(SegmentationKind::Binary);
}

#[test]
fn totalsegmentator_label_map_round_trips_as_labelmap_seg() {
    totalsegmentator_round_trip(SegmentationKind::Labelmap);
}
