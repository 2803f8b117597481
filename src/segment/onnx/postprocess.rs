//! Post-processing of model output into a label map (manifest `[[labels]]`).
//!
//! Arrays are `(K, z, y, x)` class scores or `(z, y, x)` label maps, as in
//! [`Volume`](crate::volume::Volume).
//!
//! * [`argmax`]: class index with the highest score; ties go to the lower index
//!   (as `numpy.argmax`); indices without a manifest label become 0.
//! * [`keep_largest_component`]: voxels of one label outside its largest
//!   26-connected component become background (0). Ties: the component found
//!   first in `[z][y][x]` scan order wins.
//! * [`fill_holes`]: background (0) voxels of one label's "holes" become that
//!   label. A hole is a 6-connected component of voxels that are not the label
//!   and do not touch the volume border (as `scipy.ndimage.binary_fill_holes`);
//!   voxels of other labels inside a hole are kept.

use ndarray::{Array3, ArrayView4};
use rayon::prelude::*;

/// Label map from class scores `(K, z, y, x)`: `labels[v] = argmax_k scores[k, v]` if `k` is in
/// `valid` (label values present in the manifest), else 0.
pub fn argmax(scores: ArrayView4<f32>, valid: &[u8]) -> Array3<u8> {
    let (_, nz, ny, nx) = scores.dim();
    let mut r = RunningArgmax::new((nz, ny, nx));
    for ch in scores.outer_iter() {
        r.push(ch);
    }
    r.finish(valid)
}

/// Argmax over class score maps `(z, y, x)` pushed one at a time in class order (class `k` is
/// the `k`-th push; at most 256 classes, later ones are ignored). Same result as [`argmax`].
pub struct RunningArgmax {
    best: Array3<f32>,
    idx: Array3<u8>,
    next: usize,
}

impl RunningArgmax {
    /// Empty accumulator for maps of shape `dim`.
    pub fn new(dim: (usize, usize, usize)) -> Self {
        RunningArgmax { best: Array3::from_elem(dim, f32::NEG_INFINITY), idx: Array3::zeros(dim), next: 0 }
    }

    /// Add the score map of the next class.
    ///
    /// # Panics
    /// If `scores` has another shape than given to [`RunningArgmax::new`].
    pub fn push(&mut self, scores: ndarray::ArrayView3<f32>) {
        if self.next > 255 {
            return;
        }
        let c = self.next as u8;
        let update = |b: &mut f32, i: &mut u8, s: f32| {
            if s > *b {
                *b = s;
                *i = c;
            }
        };
        match (self.best.as_slice_mut(), self.idx.as_slice_mut(), scores.as_slice()) {
            (Some(best), Some(idx), Some(s)) if s.len() == best.len() => {
                // element-wise and independent: parallel chunks give the serial result
                const CHUNK: usize = 1 << 16;
                best.par_chunks_mut(CHUNK).zip(idx.par_chunks_mut(CHUNK)).zip(s.par_chunks(CHUNK)).for_each(
                    |((b, i), s)| {
                        for ((b, i), &s) in b.iter_mut().zip(i.iter_mut()).zip(s) {
                            update(b, i, s);
                        }
                    },
                );
            }
            _ => ndarray::Zip::from(&mut self.best).and(&mut self.idx).and(&scores).for_each(|b, i, &s| update(b, i, s)),
        }
        self.next += 1;
    }

    /// The label map; class indices not in `valid` become 0.
    pub fn finish(self, valid: &[u8]) -> Array3<u8> {
        let mut ok = [false; 256];
        for &v in valid {
            ok[v as usize] = true;
        }
        let mut idx = self.idx;
        idx.mapv_inplace(|v| if ok[v as usize] { v } else { 0 });
        idx
    }
}

/// Connected components of `mask` (flattened `(nz, ny, nx)`); returns per-voxel component id
/// (0 = not in mask, 1.. = component) and the component sizes (index 0 unused).
fn components(mask: &[bool], dims: [usize; 3], full26: bool) -> (Vec<u32>, Vec<usize>) {
    let [nz, ny, nx] = dims;
    let mut comp = vec![0u32; mask.len()];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    let mut offsets: Vec<[isize; 3]> = Vec::new();
    for dz in -1isize..=1 {
        for dy in -1isize..=1 {
            for dx in -1isize..=1 {
                let n = dz.abs() + dy.abs() + dx.abs();
                if n == 0 || (!full26 && n > 1) {
                    continue;
                }
                offsets.push([dz, dy, dx]);
            }
        }
    }
    for start in 0..mask.len() {
        if !mask[start] || comp[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        let mut size = 0usize;
        comp[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            size += 1;
            let (z, y, x) = ((i / (ny * nx)) as isize, ((i / nx) % ny) as isize, (i % nx) as isize);
            for o in &offsets {
                let (zz, yy, xx) = (z + o[0], y + o[1], x + o[2]);
                if zz < 0 || yy < 0 || xx < 0 || zz >= nz as isize || yy >= ny as isize || xx >= nx as isize {
                    continue;
                }
                let j = (zz as usize * ny + yy as usize) * nx + xx as usize;
                if mask[j] && comp[j] == 0 {
                    comp[j] = id;
                    stack.push(j);
                }
            }
        }
        sizes.push(size);
    }
    (comp, sizes)
}

/// Keep only the largest 26-connected component of `label` (see module docs).
pub fn keep_largest_component(labels: &mut Array3<u8>, label: u8) {
    let dims = [labels.dim().0, labels.dim().1, labels.dim().2];
    let flat = labels.as_slice_mut().expect("standard layout");
    let mask: Vec<bool> = flat.iter().map(|&v| v == label).collect();
    let (comp, sizes) = components(&mask, dims, true);
    if sizes.len() <= 2 {
        return;
    }
    let mut keep = 1;
    for (i, &s) in sizes.iter().enumerate().skip(1) {
        if s > sizes[keep] {
            keep = i;
        }
    }
    for (v, &c) in flat.iter_mut().zip(&comp) {
        if c != 0 && c as usize != keep {
            *v = 0;
        }
    }
}

/// Fill the holes of `label` (see module docs).
pub fn fill_holes(labels: &mut Array3<u8>, label: u8) {
    let dims = [labels.dim().0, labels.dim().1, labels.dim().2];
    let [nz, ny, nx] = dims;
    let flat = labels.as_slice_mut().expect("standard layout");
    let mask: Vec<bool> = flat.iter().map(|&v| v != label).collect();
    let (comp, sizes) = components(&mask, dims, false);
    let mut touches = vec![false; sizes.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if z == 0 || y == 0 || x == 0 || z == nz - 1 || y == ny - 1 || x == nx - 1 {
                    touches[comp[(z * ny + y) * nx + x] as usize] = true;
                }
            }
        }
    }
    for (v, &c) in flat.iter_mut().zip(&comp) {
        if c != 0 && !touches[c as usize] && *v == 0 {
            *v = label;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn argmax_ties_and_invalid() {
        let s = Array4::from_shape_vec((3, 1, 1, 3), vec![1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0, 5.0]).unwrap();
        assert_eq!(argmax(s.view(), &[1, 2]).as_slice().unwrap(), &[0, 1, 2]);
        assert_eq!(argmax(s.view(), &[1]).as_slice().unwrap(), &[0, 1, 0]);
    }

    #[test]
    fn running_argmax_parallel_matches_elementwise() {
        // more voxels than one parallel chunk, with ties and a non-contiguous class view
        let (k, dim) = (4usize, (3usize, 150usize, 301usize));
        let s = Array4::from_shape_fn((k, dim.0, dim.1, dim.2), |(c, z, y, x)| ((c * 7 + z * 5 + y * 3 + x) % 11) as f32);
        let got = argmax(s.view(), &[0, 1, 2, 3]);
        let t = s.view().permuted_axes([0, 1, 3, 2]);
        let mut r = RunningArgmax::new((dim.0, dim.2, dim.1));
        for ch in t.outer_iter() {
            r.push(ch);
        }
        let got_t = r.finish(&[0, 1, 2, 3]);
        for ((z, y, x), &l) in got.indexed_iter() {
            let mut best = 0;
            for c in 1..k {
                if s[[c, z, y, x]] > s[[best, z, y, x]] {
                    best = c;
                }
            }
            assert_eq!(l as usize, best, "at {z},{y},{x}");
            assert_eq!(got_t[[z, x, y]], l);
        }
    }

    #[test]
    fn largest_component_and_holes() {
        let mut l = Array3::<u8>::zeros((1, 5, 7));
        // big ring of label 1 with a hole at (2,2); a lone voxel of 1 at (0,6); label 2 inside the ring at (2,3)
        for y in 1..4 {
            for x in 1..5 {
                l[[0, y, x]] = 1;
            }
        }
        l[[0, 2, 2]] = 0;
        l[[0, 2, 3]] = 2;
        l[[0, 0, 6]] = 1;
        keep_largest_component(&mut l, 1);
        assert_eq!(l[[0, 0, 6]], 0);
        assert_eq!(l[[0, 1, 1]], 1);
        // a 2-D slice in a 1-slice volume: every voxel touches the z border, so nothing is a hole in 3-D
        fill_holes(&mut l, 1);
        assert_eq!(l[[0, 2, 2]], 0);
        // in a 3-slice volume with the ring in the middle slice and caps above/below, it is a hole
        let mut v = Array3::<u8>::zeros((5, 5, 7));
        for z in 1..4 {
            for y in 1..4 {
                for x in 1..5 {
                    v[[z, y, x]] = 1;
                }
            }
        }
        v[[2, 2, 2]] = 0;
        v[[2, 2, 3]] = 2;
        fill_holes(&mut v, 1);
        assert_eq!(v[[2, 2, 2]], 1);
        assert_eq!(v[[2, 2, 3]], 2);
        assert_eq!(v[[0, 0, 0]], 0);
    }
}
