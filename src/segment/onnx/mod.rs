//! ONNX models as analyses: `models/<name>/model.toml` ([`manifest`]) +
//! `model.onnx`, run through ONNX Runtime ([`runtime`]).
//!
//! Flow of [`OnnxModel::segment`] (axis conventions: [`Volume`] is `[z][y][x]`
//! with spacing `(z, y, x)` in mm; network tensors are NCHW `(1, C, y, x)` for
//! 2D models, one slice along `z` per run, and NCDHW `(1, C, z, y, x)` for 3D):
//!
//! 1. match the job's images to the manifest's `input.channels`;
//! 2. normalise each channel on the source grid ([`preprocess`]);
//! 3. resample to the model spacing, linear ([`crate::segment::resample`]);
//!    2D models are never resampled along `z`; orientation is untouched;
//! 4. sliding-window inference with Gaussian weighting and optional mirroring
//!    ([`sliding_window`]) → class scores `(K, z, y, x)` on the model grid
//!    (a `labels` output is one-hot encoded first, so blending is a vote);
//! 5. resample the scores back to the exact source shape, linear
//!    ("probability resampling"), then [`postprocess::argmax`];
//! 6. optional consecutive levels head to foot for a chain of structures such as vertebral
//!    bodies (`[output.level_order]`, [`postprocess::order_levels`]); then per label:
//!    optional largest connected component, hole filling.
//!
//! 2D models run steps 2–5 slice by slice on three threads ([`OnnxModel::segment`]): slice
//! `z + 1` is pre-processed and slice `z − 1` blended and resampled back while the network
//! runs on slice `z`; the result is bit-identical to [`OnnxModel::segment_whole_volume`],
//! which runs each step on the whole volume (and is the path of 3D models).

pub mod manifest;
pub mod postprocess;
pub mod preprocess;
pub mod runtime;
pub mod sliding_window;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::{Array3, Array4, ArrayView4, Axis};
use ort::session::Session;
use ort::value::TensorRef;

use self::manifest::{Dimensions, Manifest, ManifestError, OutputKind};
use self::runtime::ExecutionProviderStatus;
use crate::config::SegmentConfig;
use crate::pipeline::messages::{AlgorithmIdentification, ChannelKind, SegmentDescription, StudyJob};
use crate::segment::{resample, Analysis, SegmentError};
use crate::volume::Volume;

/// Errors of the ONNX engine.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The ONNX Runtime shared library could not be loaded.
    #[error("ONNX Runtime library {path}: {message}")]
    Library { path: PathBuf, message: String },
    /// A requested execution provider is required but unavailable.
    #[error("execution provider: {message}")]
    ExecutionProvider { message: String },
    /// The manifest is missing or invalid.
    #[error("model manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// ONNX Runtime could not create the session (bad model file, options).
    #[error("ONNX session for {path}: {message}")]
    Session { path: PathBuf, message: String },
    /// The ONNX model's inputs/outputs disagree with its manifest.
    #[error("model `{model}`: the ONNX graph does not match {manifest}: {message}")]
    ModelMismatch { model: String, manifest: PathBuf, message: String },
    /// The job's images do not fit the model's input (channels, shape).
    #[error("model `{model}` cannot run on this job: model expects {expected}; job provides {provided}")]
    InputMismatch { model: String, expected: String, provided: String },
    /// `Session::run` failed or returned an unexpected tensor.
    #[error("model `{model}`: inference failed: {message}")]
    Inference { model: String, message: String },
}

/// Time spent in one model's inference calls since load (or [`OnnxModel::reset_timing`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InferenceTiming {
    /// Wall time inside `Session::run` (including tensor creation and output extraction).
    pub session_run: Duration,
    /// Wall time of whole [`OnnxModel::segment`] calls (pre-processing to label map).
    pub total: Duration,
    /// Number of `Session::run` calls.
    pub runs: u64,
    /// Wall time of steps 2–3 (normalisation and resampling to the model grid).
    pub preprocess: Duration,
    /// Wall time of steps 5–6 (resampling back, argmax, connected components, hole filling).
    pub postprocess: Duration,
}

/// A loaded model: manifest + one ONNX Runtime session (use one per worker thread).
pub struct OnnxModel {
    manifest: Manifest,
    session: Session,
    providers: Vec<ExecutionProviderStatus>,
    timing: InferenceTiming,
}

/// How a job's images are offered to [`OnnxModel::segment`]: one per channel, with the
/// image kind (e.g. `water`, `fat`; `image` when unknown) and the volume.
pub type ChannelInput<'a> = (&'a str, &'a Volume);

/// Channel names of a manifest that name a Dixon image kind ([`ChannelKind::as_str`]).
const DIXON_KINDS: [ChannelKind; 4] = [ChannelKind::Water, ChannelKind::Fat, ChannelKind::InPhase, ChannelKind::OpposedPhase];

/// Manifest channel names that are DICOM Modality (0008,0060) defined terms checked against the
/// job's Modality (PS3.3 C.7.3.1.1.1).
const MODALITY_NAMES: [&str; 7] = ["ct", "mr", "pt", "us", "cr", "dx", "mg"];

fn names_dixon_kind(channel: &str) -> bool {
    DIXON_KINDS.iter().any(|k| k.as_str().eq_ignore_ascii_case(channel))
}

/// The images of `job` as inputs of a model whose manifest lists `wanted` (`input.channels`),
/// in the manifest's order, for [`OnnxModel::segment`].
///
/// * What the job offers: a paired Dixon job ([`StudyJob::channels`]) each channel under its
///   kind (`water`, `fat`, `in_phase`, `opposed_phase`); a lone series its one image under the
///   kind its header names ([`crate::assemble::dixon::classify`]: ImageType, then a Dixon
///   SeriesDescription, then the echo time), else as `image`.
/// * A wanted Dixon kind takes the offered image of that kind. Any other name (`any`, a modality
///   such as `mr`, a contrast such as `t1`) takes the job's primary image, when the model wants
///   one channel.
/// * When a wanted image is not offered, everything offered is returned instead, so that
///   [`OnnxModel::check_channels`] refuses the job naming what the model expects and what the
///   job has (e.g. a water-only model and a lone fat series, or a water+fat model and a lone
///   water series).
pub fn job_inputs<'a>(wanted: &[String], job: &'a StudyJob) -> Vec<ChannelInput<'a>> {
    let offered: Vec<ChannelInput<'a>> = if job.channels.is_empty() {
        let kind = crate::assemble::dixon::classify(&job.header.dataset).map_or("image", |c| c.kind.as_str());
        vec![(kind, job.volume.as_ref())]
    } else {
        job.channels.iter().map(|c| (c.kind.as_str(), c.volume.as_ref())).collect()
    };
    let mut chosen = Vec::with_capacity(wanted.len());
    for w in wanted {
        let pick = if names_dixon_kind(w) {
            offered.iter().find(|(k, _)| k.eq_ignore_ascii_case(w)).copied()
        } else if wanted.len() == 1 {
            // the primary: the lone image, or the first channel of a paired job (water first)
            offered.first().copied()
        } else {
            None
        };
        match pick {
            Some(p) => chosen.push(p),
            None => return offered,
        }
    }
    chosen
}

impl OnnxModel {
    /// Load `<dir>/model.toml`, open `model.onnx` with the providers of `cfg`, and check that
    /// the graph's input/output names, ranks, channel counts and fixed dimensions match the manifest.
    ///
    /// # Errors
    /// [`OnnxError::Manifest`], [`OnnxError::Library`], [`OnnxError::ExecutionProvider`],
    /// [`OnnxError::Session`], [`OnnxError::ModelMismatch`].
    pub fn load(dir: &Path, cfg: &SegmentConfig) -> Result<OnnxModel, OnnxError> {
        let manifest = Manifest::load(dir)?;
        let file = manifest.model_file();
        if !file.is_file() {
            return Err(OnnxError::Session { path: file, message: "model file not found".into() });
        }
        let (session, providers) = runtime::open_session(&file, cfg)?;
        let model = OnnxModel { manifest, session, providers, timing: InferenceTiming::default() };
        model.check_io()?;
        Ok(model)
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Execution-provider outcome of this model's session.
    pub fn execution_providers(&self) -> &[ExecutionProviderStatus] {
        &self.providers
    }

    /// Accumulated timing.
    pub fn timing(&self) -> InferenceTiming {
        self.timing
    }

    /// Reset [`OnnxModel::timing`].
    pub fn reset_timing(&mut self) {
        self.timing = InferenceTiming::default();
    }

    fn mismatch(&self, message: String) -> OnnxError {
        OnnxError::ModelMismatch { model: self.manifest.name(), manifest: self.manifest.path.clone(), message }
    }

    fn check_io(&self) -> Result<(), OnnxError> {
        let m = &self.manifest;
        let rank = match m.input.dimensions {
            Dimensions::TwoD => 4,
            Dimensions::ThreeD => 5,
        };
        let names = |outlets: &[ort::value::Outlet]| outlets.iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        let input = self.session.inputs().iter().find(|o| o.name() == m.input.tensor).ok_or_else(|| {
            self.mismatch(format!("input.tensor `{}` is not an input of the graph (inputs: {:?})", m.input.tensor, names(self.session.inputs())))
        })?;
        let output = self.session.outputs().iter().find(|o| o.name() == m.output.tensor).ok_or_else(|| {
            self.mismatch(format!(
                "output.tensor `{}` is not an output of the graph (outputs: {:?})",
                m.output.tensor,
                names(self.session.outputs())
            ))
        })?;
        if input.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32) {
            return Err(self.mismatch(format!("input `{}` must be a float32 tensor, graph has {:?}", input.name(), input.dtype())));
        }
        let ishape: Vec<i64> = input.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        if ishape.len() != rank {
            return Err(self.mismatch(format!(
                "input.dimensions = {:?} needs a rank-{rank} input ({}), graph input `{}` has shape {ishape:?}",
                m.input.dimensions,
                if rank == 4 { "N,C,H,W" } else { "N,C,D,H,W" },
                input.name()
            )));
        }
        if ishape[1] > 0 && ishape[1] as usize != m.input_channels() {
            return Err(self.mismatch(format!(
                "input.channels lists {} channel(s) {:?} with context_slices = {} ({} graph channels), graph input `{}` has {} (shape {ishape:?})",
                m.input.channels.len(),
                m.input.channels,
                m.input.context_slices,
                m.input_channels(),
                input.name(),
                ishape[1]
            )));
        }
        if ishape[0] > 1 {
            return Err(self.mismatch(format!("graph input batch dimension is {}, myonode runs batch 1", ishape[0])));
        }
        let spatial = &ishape[2..];
        for (i, (&d, &p)) in spatial.iter().zip(&m.inference.patch_size).enumerate() {
            if d > 0 && d as usize != p {
                return Err(self.mismatch(format!(
                    "inference.patch_size[{i}] = {p} but graph input `{}` has fixed size {d} there (shape {ishape:?})",
                    input.name()
                )));
            }
        }
        let oshape: Vec<i64> = output.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
        if matches!(m.output.kind, OutputKind::Logits | OutputKind::Probabilities) {
            if !oshape.is_empty() && oshape.len() != rank {
                return Err(self.mismatch(format!("output `{}` has rank {}, expected {rank}", output.name(), oshape.len())));
            }
            if oshape.len() == rank && oshape[1] > 0 && (oshape[1] as usize) < m.num_classes() {
                return Err(self.mismatch(format!(
                    "[[labels]] go up to value {} (needs {} class channels), graph output `{}` has {} (shape {oshape:?})",
                    m.num_classes() - 1,
                    m.num_classes(),
                    output.name(),
                    oshape[1]
                )));
            }
        }
        Ok(())
    }

    /// Check that the job's images fit `input.channels`: same count; a named channel must match
    /// the image kind, or the job's Modality for `ct`/`mr`; `any` accepts one image of any kind.
    /// `modality` is the source Modality (0008,0060) when known. All images must share one grid.
    ///
    /// # Errors
    /// [`OnnxError::InputMismatch`] naming what the model expects and what the job provides.
    pub fn check_channels(&self, channels: &[ChannelInput<'_>], modality: Option<&str>) -> Result<(), OnnxError> {
        let want = &self.manifest.input.channels;
        let provided = || {
            let kinds: Vec<String> = channels.iter().map(|(k, v)| format!("{k} {:?}", v.shape())).collect();
            format!(
                "{} image(s) [{}]{}",
                channels.len(),
                kinds.join(", "),
                modality.map(|m| format!(", Modality {m}")).unwrap_or_default()
            )
        };
        let err = || OnnxError::InputMismatch {
            model: self.manifest.name(),
            expected: format!("{} channel(s) {:?}", want.len(), want),
            provided: provided(),
        };
        if channels.len() != want.len() {
            return Err(err());
        }
        for (w, (kind, _)) in want.iter().zip(channels) {
            let w = w.to_ascii_lowercase();
            // A single image whose kind the header does not name, for a single-channel model: accepted
            // when the modality is unknown (`Analysis::run`, no header), or when the model's channel
            // names neither a Dixon kind nor a modality (a contrast such as `t1` cannot be read from
            // the header; the route chose the model). A `water` model is not run on a T1 image.
            let unnamed_single = want.len() == 1
                && kind.eq_ignore_ascii_case("image")
                && (modality.is_none() || !(names_dixon_kind(&w) || MODALITY_NAMES.contains(&w.as_str())));
            let ok = w == "any"
                || w.eq_ignore_ascii_case(kind)
                || modality.is_some_and(|m| m.eq_ignore_ascii_case(&w))
                || unnamed_single;
            if !ok {
                return Err(err());
            }
        }
        let shape0 = channels[0].1.shape();
        if channels.iter().any(|(_, v)| v.shape() != shape0) {
            return Err(OnnxError::InputMismatch {
                model: self.manifest.name(),
                expected: "all channels on one grid".into(),
                provided: provided(),
            });
        }
        Ok(())
    }

    /// Steps 2–3 of the module flow: normalised, resampled input `(C, z, y, x)` on the model
    /// grid; with `input.context_slices = n` (2.5D) the shape is `(C·(2n+1), z, y, x)`, ordered
    /// as [`manifest::InputSection::context_slices`] describes.
    pub fn preprocess(&self, channels: &[ChannelInput<'_>]) -> Array4<f32> {
        let v0 = channels[0].1;
        let (nz, ny, nx) = v0.shape();
        let mut target = self.manifest.input.spacing_mm;
        if self.manifest.input.dimensions == Dimensions::TwoD {
            target[0] = 0.0;
        }
        let mshape = resample::resampled_shape([nz, ny, nx], v0.spacing, target);
        let mut out = Array4::<f32>::zeros((channels.len(), mshape[0], mshape[1], mshape[2]));
        for (c, (_, v)) in channels.iter().enumerate() {
            // normalise while the first resampling pass reads the source: no normalised copy
            let norm = preprocess::Normalizer::fit(v.data.view(), &self.manifest.normalization);
            let r = resample::resample_linear_map(v.data.view(), mshape, |x| norm.apply(x));
            out.index_axis_mut(Axis(0), c).assign(&r);
        }
        let n = self.manifest.input.context_slices;
        if n == 0 || self.manifest.input.dimensions != Dimensions::TwoD {
            return out;
        }
        // 2.5D: channel c·(2n+1) + j holds slice clamp(z - n + j) of image channel c
        let (c_in, mz, my, mx) = out.dim();
        let width = 2 * n + 1;
        let mut wide = Array4::<f32>::zeros((c_in * width, mz, my, mx));
        for c in 0..c_in {
            for j in 0..width {
                let mut dst = wide.index_axis_mut(Axis(0), c * width + j);
                for z in 0..mz {
                    let src = (z as isize - n as isize + j as isize).clamp(0, mz as isize - 1) as usize;
                    dst.index_axis_mut(Axis(0), z).assign(&out.slice(ndarray::s![c, src, .., ..]));
                }
            }
        }
        wide
    }

    /// One `Session::run` on a raw input tensor (`shape` as the graph expects, e.g.
    /// `(1, C, z, y, x)`); returns the output named in the manifest as `f32` with its shape.
    ///
    /// # Errors
    /// [`OnnxError::Inference`] when ONNX Runtime fails or the output is missing / not numeric.
    pub fn run_tensor(&mut self, data: &[f32], shape: &[usize]) -> Result<(Vec<usize>, Vec<f32>), OnnxError> {
        let started = Instant::now();
        let name = self.manifest.name();
        let inf = |message: String| OnnxError::Inference { model: name.clone(), message };
        let tensor = TensorRef::from_array_view((shape.to_vec(), data)).map_err(|e| inf(format!("input tensor: {e}")))?;
        let out_name = self.manifest.output.tensor.clone();
        let outputs = self
            .session
            .run(ort::inputs![self.manifest.input.tensor.as_str() => tensor])
            .map_err(|e| inf(format!("Session::run with input shape {shape:?}: {e}")))?;
        let value = outputs.get(&out_name).ok_or_else(|| inf(format!("output `{out_name}` missing")))?;
        let result = if let Ok((s, d)) = value.try_extract_tensor::<f32>() {
            (s.iter().map(|&x| x as usize).collect(), d.to_vec())
        } else if let Ok((s, d)) = value.try_extract_tensor::<i64>() {
            (s.iter().map(|&x| x as usize).collect(), d.iter().map(|&x| x as f32).collect())
        } else if let Ok((s, d)) = value.try_extract_tensor::<i32>() {
            (s.iter().map(|&x| x as usize).collect(), d.iter().map(|&x| x as f32).collect())
        } else if let Ok((s, d)) = value.try_extract_tensor::<u8>() {
            (s.iter().map(|&x| x as usize).collect(), d.iter().map(|&x| x as f32).collect())
        } else {
            return Err(inf(format!("output `{out_name}` is not a float32/int64/int32/uint8 tensor: {:?}", value.dtype())));
        };
        drop(outputs);
        self.timing.session_run += started.elapsed();
        self.timing.runs += 1;
        Ok(result)
    }

    /// Run the network on one channel-first patch `(C, pz, py, px)` (2D: `pz = 1`) and return
    /// `(K, pz, py, px)` scores; `labels` outputs are one-hot encoded (K = highest label + 1).
    fn run_patch(&mut self, data: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, OnnxError> {
        let [c, pz, py, px] = shape;
        let tshape: Vec<usize> = match self.manifest.input.dimensions {
            Dimensions::TwoD => vec![1, c, py, px],
            Dimensions::ThreeD => vec![1, c, pz, py, px],
        };
        let (oshape, out) = self.run_tensor(data, &tshape)?;
        let n = pz * py * px;
        let name = self.manifest.name();
        let bad = |what: &str| OnnxError::Inference {
            model: name.clone(),
            message: format!("output `{}` has shape {oshape:?}; {what} for input {tshape:?}", self.manifest.output.tensor),
        };
        let spatial_ok = oshape.len() >= 2 && oshape[oshape.len() - 2..] == tshape[tshape.len() - 2..] && oshape[0] == 1;
        match self.manifest.output.kind {
            OutputKind::Logits | OutputKind::Probabilities => {
                if !spatial_ok || oshape.len() != tshape.len() || out.len() != oshape[1] * n {
                    return Err(bad("expected (1, K, spatial…) with the input's spatial size"));
                }
                if oshape[1] < self.manifest.num_classes() {
                    return Err(bad(&format!("needs at least {} class channels", self.manifest.num_classes())));
                }
                Ok(out)
            }
            OutputKind::Labels => {
                if !spatial_ok || out.len() != n {
                    return Err(bad("expected (1, [1,] spatial…) labels with the input's spatial size"));
                }
                let k = self.manifest.num_classes();
                let mut onehot = vec![0f32; k * n];
                for (i, &v) in out.iter().enumerate() {
                    let l = v.round();
                    if l >= 0.0 && (l as usize) < k {
                        onehot[l as usize * n + i] = 1.0;
                    }
                }
                Ok(onehot)
            }
        }
    }

    /// Axes of a `(C, pz, py, px)` window that test-time mirroring flips (`inference.mirroring`):
    /// y and x for 2D models, z, y and x for 3D; empty without mirroring.
    fn mirror_axes(&self) -> Vec<usize> {
        if !self.manifest.inference.mirroring {
            return vec![];
        }
        match self.manifest.input.dimensions {
            Dimensions::TwoD => vec![2, 3],
            Dimensions::ThreeD => vec![1, 2, 3],
        }
    }

    /// The network's `(K, pz, py, px)` scores for one window `(C, pz, py, px)`, averaged over
    /// every combination of flips of `mirror_axes` (each output flipped back) when given.
    fn run_window(&mut self, data: &[f32], shape: [usize; 4], mirror_axes: &[usize]) -> Result<Vec<f32>, OnnxError> {
        if mirror_axes.is_empty() {
            return self.run_patch(data, shape);
        }
        let mut sum: Option<Vec<f32>> = None;
        let combos = 1usize << mirror_axes.len();
        for mask in 0..combos {
            let axes: Vec<usize> =
                mirror_axes.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, &a)| a).collect();
            let flipped = flip(data, shape, &axes);
            let out = self.run_patch(&flipped, shape)?;
            let k = out.len() / (shape[1] * shape[2] * shape[3]);
            let back = flip(&out, [k, shape[1], shape[2], shape[3]], &axes);
            match sum.as_mut() {
                None => sum = Some(back),
                Some(s) => s.iter_mut().zip(&back).for_each(|(a, b)| *a += b),
            }
        }
        let mut s = sum.expect("at least one combination");
        let inv = 1.0 / combos as f32;
        s.iter_mut().for_each(|v| *v *= inv);
        Ok(s)
    }

    /// Step 4: sliding-window inference on a normalised input `(C, z, y, x)` on the model grid;
    /// returns class scores `(K, z, y, x)` on the same grid.
    ///
    /// # Errors
    /// [`OnnxError::Inference`].
    pub fn predict(&mut self, input: ArrayView4<f32>) -> Result<Array4<f32>, OnnxError> {
        let patch = self.manifest.patch_zyx();
        let overlap = self.manifest.inference.overlap;
        let mirror_axes = self.mirror_axes();
        let name = self.manifest.name();
        sliding_window::sliding_window(
            input,
            patch,
            overlap,
            true,
            |w| self.run_window(w.data, w.shape, &mirror_axes),
            |message| OnnxError::Inference { model: name.clone(), message },
        )
    }

    /// Apply the manifest's `output.class_weights` to class scores `(K, z, y, x)` in place:
    /// `+ ln w_k` for logits, `· w_k` for probabilities (see
    /// [`manifest::OutputSection::class_weights`]). No-op without weights or for label outputs.
    pub fn apply_class_weights(&self, scores: &mut Array4<f32>) {
        ClassWeights::of(&self.manifest).apply(scores);
    }

    /// The whole analysis (module docs, steps 1–6): label map on the exact grid of the
    /// first channel's volume, shape `(nz, ny, nx)`, values from the manifest's `[[labels]]`.
    ///
    /// 2D models run slice-streamed ([`OnnxModel::segment_whole_volume`] gives the same label
    /// map, bit for bit): one thread normalises and resamples the source slices ahead of the
    /// network, this thread runs `Session::run` window after window, and a third blends each
    /// slice's windows, applies the decision weights and resamples the slice back with its
    /// argmax as soon as the slice's last window is out. Pre- and post-processing thus run on
    /// the cores that the network (one intra-op thread per worker by default) leaves free, and
    /// only the normalisation statistics before the first slice and the connected components
    /// after the last one wait for them. 3D models run [`OnnxModel::segment_whole_volume`].
    ///
    /// # Errors
    /// [`OnnxError::InputMismatch`] when the images do not fit the model's channels;
    /// [`OnnxError::Inference`].
    pub fn segment(&mut self, channels: &[ChannelInput<'_>], modality: Option<&str>) -> Result<Array3<u8>, OnnxError> {
        if self.manifest.input.dimensions != Dimensions::TwoD {
            return self.segment_whole_volume(channels, modality);
        }
        let started = Instant::now();
        self.check_channels(channels, modality)?;
        let mut labels = self.segment_2d_streamed(channels, started)?;
        let post_started = Instant::now();
        self.level_order(&mut labels, channels[0].1);
        self.components(&mut labels);
        self.timing.postprocess += post_started.elapsed();
        self.timing.total += started.elapsed();
        Ok(labels)
    }

    /// [`OnnxModel::segment`] one step after the other on whole volumes: pre-processing of the
    /// whole volume ([`OnnxModel::preprocess`]), [`OnnxModel::predict`], the decision weights,
    /// resampling back fused with the argmax, then the connected-component steps. The reference
    /// for the slice-streamed 2D path, and the path of 3D models.
    ///
    /// # Errors
    /// As [`OnnxModel::segment`].
    pub fn segment_whole_volume(&mut self, channels: &[ChannelInput<'_>], modality: Option<&str>) -> Result<Array3<u8>, OnnxError> {
        let started = Instant::now();
        self.check_channels(channels, modality)?;
        let input = self.preprocess(channels);
        self.timing.preprocess += started.elapsed();
        let mut scores = self.predict(input.view())?;
        self.apply_class_weights(&mut scores);
        let post_started = Instant::now();
        let (nz, ny, nx) = channels[0].1.shape();
        let valid: Vec<u8> = self.manifest.labels.iter().map(|l| l.value).collect();
        let mut labels = if scores.dim().1 == nz && scores.dim().2 == ny && scores.dim().3 == nx {
            postprocess::argmax(scores.view(), &valid)
        } else {
            // resampling back fused with the argmax: no class is materialised on the source grid
            resample::resample_linear_argmax(scores.view(), [nz, ny, nx], &valid)
        };
        drop(scores);
        self.level_order(&mut labels, channels[0].1);
        self.components(&mut labels);
        self.timing.postprocess += post_started.elapsed();
        self.timing.total += started.elapsed();
        Ok(labels)
    }

    /// Step 6a on a label map `(z, y, x)` on the grid of `volume`: consecutive levels head to
    /// foot when the manifest has `[output.level_order]` ([`postprocess::order_levels`]).
    fn level_order(&self, labels: &mut Array3<u8>, volume: &Volume) {
        let Some(order) = &self.manifest.output.level_order else {
            return;
        };
        // head -> foot is -S in LPS: the S component of each index step, negated
        let foot_step_mm = [
            -volume.spacing[0] * volume.slice_direction[2],
            -volume.spacing[1] * volume.column_direction[2],
            -volume.spacing[2] * volume.row_direction[2],
        ];
        let summary = postprocess::order_levels(labels, order, foot_step_mm, volume.voxel_volume_mm3());
        tracing::debug!(
            model = %self.manifest.name(),
            bodies = summary.bodies,
            first_level = ?summary.first_level,
            split = summary.split,
            changed_voxels = summary.changed,
            "level order"
        );
    }

    /// Step 6b on a label map: largest connected component and hole filling per label, in
    /// manifest order.
    fn components(&self, labels: &mut Array3<u8>) {
        // components of every `largest_component` label in one pass; valid in manifest order
        // because no step changes the voxels of a label before that label's own step
        let largest: Vec<u8> = self.manifest.labels.iter().filter(|l| l.largest_component).map(|l| l.value).collect();
        if largest.is_empty() && !self.manifest.labels.iter().any(|l| l.fill_holes) {
            return;
        }
        let mut keep = postprocess::LargestComponents::find(labels, &largest);
        for l in &self.manifest.labels {
            if l.largest_component {
                keep.apply(labels, l.value);
            }
            if l.fill_holes {
                postprocess::fill_holes(labels, l.value);
            }
        }
    }

    /// Steps 2–5 of a 2D model, slice-streamed (see [`OnnxModel::segment`]): the label map
    /// `(nz, ny, nx)` before the connected-component steps. `started` is when the analysis
    /// began (for [`InferenceTiming::preprocess`]: until the first model-grid slice is ready).
    fn segment_2d_streamed(&mut self, channels: &[ChannelInput<'_>], started: Instant) -> Result<Array3<u8>, OnnxError> {
        let v0 = channels[0].1;
        let (nz, ny, nx) = v0.shape();
        let mut target = self.manifest.input.spacing_mm;
        target[0] = 0.0;
        let mshape = resample::resampled_shape([nz, ny, nx], v0.spacing, target);
        let (my, mx) = (mshape[1], mshape[2]);
        let patch = self.manifest.patch_zyx();
        let (padded, starts) = sliding_window::window_grid([1, my, mx], patch, self.manifest.inference.overlap);
        let windows_per_slice = starts[1].len() * starts[2].len();
        let context = self.manifest.input.context_slices;
        let width = 2 * context + 1;
        let c_in = channels.len();
        let mirror_axes = self.mirror_axes();
        let weights = ClassWeights::of(&self.manifest);
        let valid: Vec<u8> = self.manifest.labels.iter().map(|l| l.value).collect();
        let norms: Vec<preprocess::Normalizer> =
            channels.iter().map(|(_, v)| preprocess::Normalizer::fit(v.data.view(), &self.manifest.normalization)).collect();
        let name = self.manifest.name();
        let inference_error = |message: String| OnnxError::Inference { model: name.clone(), message };

        std::thread::scope(|scope| -> Result<Array3<u8>, OnnxError> {
            // pre-processing: model-grid slice z of every channel, (C, my, mx), in z order
            let (pre_tx, pre_rx) = crossbeam_channel::bounded::<Array3<f32>>(8);
            let norms = &norms;
            let pre = scope.spawn(move || {
                for z in 0..nz {
                    let mut slice = Array3::<f32>::zeros((c_in, my, mx));
                    for (c, (_, v)) in channels.iter().enumerate() {
                        let norm = norms[c];
                        let src = v.data.slice(ndarray::s![z..z + 1, .., ..]);
                        let r = resample::resample_linear_map(src, [1, my, mx], |x| norm.apply(x));
                        slice.index_axis_mut(Axis(0), c).assign(&r.index_axis(Axis(0), 0));
                    }
                    if pre_tx.send(slice).is_err() {
                        return;
                    }
                }
            });
            // post-processing: blend a slice's windows, decision weights, back to the source grid.
            // Unbounded: a send never waits for this thread (a bounded channel made the network
            // wait for it when it was descheduled); it holds at most every slice's scores, what
            // the whole-volume path holds at once.
            let (post_tx, post_rx) = crossbeam_channel::unbounded::<(usize, [usize; 3], Vec<f32>)>();
            let post = scope.spawn(move || -> Result<Vec<u8>, String> {
                let mut labels = vec![0u8; nz * ny * nx];
                let mut argmax = resample::PlaneArgmax::new([my, mx], [ny, nx], &valid);
                let mut blender = sliding_window::Blender::new(padded, patch, true);
                let mut received = 0usize;
                for (z, start, out) in post_rx {
                    blender.add(start, &out)?;
                    received += 1;
                    if received < windows_per_slice {
                        continue;
                    }
                    received = 0;
                    let done = std::mem::replace(&mut blender, sliding_window::Blender::new(padded, patch, true));
                    let mut scores = done.finish([1, my, mx]).expect("windows_per_slice >= 1");
                    weights.apply(&mut scores);
                    argmax.run(scores.index_axis(Axis(1), 0), &mut labels[z * ny * nx..(z + 1) * ny * nx]);
                }
                Ok(labels)
            });

            // the network, on this thread; slices kept while a later slice's context needs them
            let run = (|| -> Result<(), OnnxError> {
                let mut slices: std::collections::VecDeque<(usize, Array3<f32>)> = std::collections::VecDeque::new();
                let mut next_in = 0usize;
                let mut window_input = Array4::<f32>::zeros((c_in * width, 1, my, mx));
                let mut buf = Vec::new();
                for z in 0..nz {
                    let need = (z + context).min(nz - 1);
                    while next_in <= need {
                        let slice = pre_rx.recv().map_err(|_| inference_error("pre-processing stopped".into()))?;
                        slices.push_back((next_in, slice));
                        next_in += 1;
                    }
                    if z == 0 {
                        self.timing.preprocess += started.elapsed();
                    }
                    while slices.front().is_some_and(|(i, _)| *i + context < z) {
                        slices.pop_front();
                    }
                    // 2.5D: channel c·(2n+1) + j holds slice clamp(z - n + j) of image channel c
                    let first = slices.front().expect("slice z is held").0;
                    for c in 0..c_in {
                        for j in 0..width {
                            let src = (z as isize - context as isize + j as isize).clamp(0, nz as isize - 1) as usize;
                            let (_, s) = &slices[src - first];
                            window_input
                                .slice_mut(ndarray::s![c * width + j, 0, .., ..])
                                .assign(&s.index_axis(Axis(0), c));
                        }
                    }
                    for &y0 in &starts[1] {
                        for &x0 in &starts[2] {
                            sliding_window::copy_window(window_input.view(), [0, y0, x0], patch, &mut buf);
                            let out = self.run_window(&buf, [c_in * width, patch[0], patch[1], patch[2]], &mirror_axes)?;
                            if post_tx.send((z, [0, y0, x0], out)).is_err() {
                                return Ok(()); // the post-processing thread stopped: its error is reported below
                            }
                        }
                    }
                }
                Ok(())
            })();
            drop(pre_rx);
            drop(post_tx);
            let _ = pre.join();
            let labels = match post.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            run?;
            let labels = labels.map_err(inference_error)?;
            Ok(Array3::from_shape_vec((nz, ny, nx), labels).expect("label map shape"))
        })
    }
}

/// The manifest's `output.class_weights` as the per-element map [`OnnxModel::apply_class_weights`]
/// applies (`+ ln w_k` on logits, `· w_k` on probabilities; none for label outputs).
#[derive(Debug, Clone)]
struct ClassWeights {
    kind: OutputKind,
    weights: Option<Vec<f64>>,
}

impl ClassWeights {
    fn of(manifest: &Manifest) -> ClassWeights {
        ClassWeights { kind: manifest.output.kind, weights: manifest.output.class_weights.clone() }
    }

    /// Apply to scores `(K, z, y, x)` in place.
    fn apply(&self, scores: &mut Array4<f32>) {
        let Some(weights) = &self.weights else { return };
        for (k, mut ch) in scores.outer_iter_mut().enumerate() {
            let Some(&w) = weights.get(k) else { break };
            match self.kind {
                OutputKind::Logits => {
                    let add = w.ln() as f32;
                    ch.mapv_inplace(|v| v + add);
                }
                OutputKind::Probabilities => {
                    let w = w as f32;
                    ch.mapv_inplace(|v| v * w);
                }
                OutputKind::Labels => {}
            }
        }
    }
}

/// Reverse the given axes of a standard-layout `(A, B, C, D)` buffer.
fn flip(data: &[f32], shape: [usize; 4], axes: &[usize]) -> Vec<f32> {
    if axes.is_empty() {
        return data.to_vec();
    }
    let mut v = ArrayView4::from_shape(shape, data).expect("buffer matches shape");
    for &a in axes {
        v.invert_axis(Axis(a));
    }
    v.iter().copied().collect()
}

/// An installed ONNX model as an [`Analysis`] (one per worker thread).
pub struct OnnxAnalysis {
    model: OnnxModel,
    name: String,
}

impl OnnxAnalysis {
    /// Load the model in `dir` (see [`OnnxModel::load`]); the analysis name is the directory name.
    ///
    /// # Errors
    /// As [`OnnxModel::load`].
    pub fn load(dir: &Path, cfg: &SegmentConfig) -> Result<OnnxAnalysis, OnnxError> {
        let model = OnnxModel::load(dir, cfg)?;
        let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| model.manifest.name());
        Ok(OnnxAnalysis { model, name })
    }

    /// The underlying model (timing, manifest, providers).
    pub fn model(&mut self) -> &mut OnnxModel {
        &mut self.model
    }
}

impl Analysis for OnnxAnalysis {
    fn name(&self) -> &str {
        &self.name
    }
    fn segments(&self) -> Vec<SegmentDescription> {
        self.model.manifest.segment_descriptions()
    }
    fn algorithm(&self) -> AlgorithmIdentification {
        self.model.manifest.algorithm()
    }
    /// Runs the model on `volume` as a single image of unknown kind and modality: a model
    /// that needs several channels (e.g. `["water", "fat"]`) fails with
    /// [`OnnxError::InputMismatch`]; use [`OnnxModel::segment`] for multi-channel jobs.
    fn run(&mut self, volume: &Volume) -> Result<Array3<u8>, SegmentError> {
        Ok(self.model.segment(&[("image", volume)], None)?)
    }
    /// Runs the model on the job's images chosen by [`job_inputs`] (Dixon channels by kind) and
    /// checked against the manifest with the job's Modality: a water+fat model gets both images
    /// of a paired Dixon job; a job without the images the model needs fails with
    /// [`OnnxError::InputMismatch`] naming both sides, instead of being segmented from the
    /// wrong contrast.
    fn run_job(&mut self, job: &StudyJob) -> Result<Array3<u8>, SegmentError> {
        let inputs = job_inputs(&self.model.manifest.input.channels, job);
        let modality = Some(job.header.modality.trim()).filter(|m| !m.is_empty());
        Ok(self.model.segment(&inputs, modality)?)
    }
    fn model_time(&self) -> Option<Duration> {
        Some(self.model.timing.session_run)
    }
}

/// One installed model as listed by `myonode models`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    /// Directory name under `segment.models_dir` (the analysis name).
    pub name: String,
    /// The model directory.
    pub dir: PathBuf,
    /// AlgorithmVersion from the manifest, if it parsed.
    pub version: Option<String>,
    /// `2d` / `3d` and channels, if the manifest parsed, e.g. `3d ["water", "fat"]`.
    pub input: Option<String>,
    /// Segment labels, if the manifest parsed.
    pub labels: Vec<String>,
    /// The manifest is valid and a session could be created with the configured providers.
    pub loads: bool,
    /// Why not.
    pub error: Option<String>,
    /// Outcome per requested execution provider (empty if the session was not attempted).
    pub execution_providers: Vec<ExecutionProviderStatus>,
}

/// List the models installed in `cfg.models_dir` (each subdirectory with a `model.toml`),
/// sorted by name, and whether each loads (manifest valid, ONNX Runtime session created with
/// the configured providers, graph matches manifest). A missing `models_dir` gives an empty list.
pub fn list_models(cfg: &SegmentConfig) -> Vec<ModelStatus> {
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&cfg.models_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join(manifest::MANIFEST_FILE).is_file())
            .collect(),
        Err(_) => vec![],
    };
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let mut st = ModelStatus {
                name,
                dir: dir.clone(),
                version: None,
                input: None,
                labels: vec![],
                loads: false,
                error: None,
                execution_providers: vec![],
            };
            match Manifest::load(&dir) {
                Ok(m) => {
                    st.version = Some(m.model.version.clone());
                    st.input = Some(format!(
                        "{} {:?}",
                        if m.input.dimensions == Dimensions::TwoD { "2d" } else { "3d" },
                        m.input.channels
                    ));
                    st.labels = m.segment_descriptions().into_iter().map(|s| s.label).collect();
                    match OnnxModel::load(&dir, cfg) {
                        Ok(model) => {
                            st.loads = true;
                            st.execution_providers = model.providers.clone();
                        }
                        Err(e) => {
                            st.error = Some(e.to_string());
                            st.execution_providers = runtime::execution_provider_report();
                        }
                    }
                }
                Err(e) => st.error = Some(e.to_string()),
            }
            st
        })
        .collect()
}
