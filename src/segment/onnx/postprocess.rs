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

use super::manifest::LevelOrder;

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

/// The largest 26-connected component of each of several labels, found in one pass
/// ([`LargestComponents::find`]) and applied label by label ([`LargestComponents::apply`]);
/// same result as [`keep_largest_component`] for each label in turn (ties: the component found
/// first in `[z][y][x]` scan order wins), as long as the voxels of a label are unchanged
/// between `find` and its `apply` (true for the manifest's post-processing order: keeping a
/// component only clears voxels of that label, filling holes only turns background into that
/// label).
///
/// Works on runs rather than voxels (two-pass labelling with union-find over runs, as in
/// He, Chao & Suzuki, "A run-based two-scan labeling algorithm", IEEE TIP 17(5), 2008, here in
/// 3-D): each row `(z, y)` is split into runs of one wanted label value (one rayon task per
/// `z` plane); a run joins the runs of the same value in the four rows before it that can touch
/// it under 26-connectivity (`(z, y−1)`, `(z−1, y−1)`, `(z−1, y)`, `(z−1, y+1)`) whose x range
/// overlaps its own grown by one voxel. Runs are numbered in scan order, so a component's
/// smallest run number is its first voxel in scan order, which breaks size ties as
/// [`keep_largest_component`] does.
pub struct LargestComponents {
    /// Per label value: runs `(z, y, x0, x1)` (x1 exclusive) of its voxels outside its largest
    /// component (empty for a label with at most one component).
    clear: Vec<Vec<(u32, u32, u32, u32)>>,
}

/// One run of equal wanted label values in a row: `x0..x1` of row `(z, y)`.
#[derive(Clone, Copy)]
struct Run {
    y: u32,
    x0: u32,
    x1: u32,
    label: u8,
}

fn find_root(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let p = parent[i as usize];
        parent[i as usize] = parent[p as usize]; // path halving
        i = p;
    }
    i
}

impl LargestComponents {
    /// Label all 26-connected components of the voxels whose value is in `labels`
    /// (neighbours join only when they have the same value).
    pub fn find(map: &Array3<u8>, labels: &[u8]) -> LargestComponents {
        let mut out = LargestComponents { clear: vec![Vec::new(); 256] };
        let mut want = [false; 256];
        for &l in labels {
            want[l as usize] = true;
        }
        want[0] = false;
        let (nz, ny, _) = map.dim();
        if nz * ny == 0 || labels.is_empty() {
            return out;
        }
        // runs per z plane, in scan order
        let planes: Vec<Vec<Run>> = (0..nz)
            .into_par_iter()
            .map(|z| {
                let mut runs = Vec::new();
                for (y, row) in map.index_axis(ndarray::Axis(0), z).outer_iter().enumerate() {
                    let row = row.as_slice().map(std::borrow::Cow::Borrowed).unwrap_or_else(|| row.to_vec().into());
                    let mut x = 0usize;
                    while x < row.len() {
                        let l = row[x];
                        if !want[l as usize] {
                            x += 1;
                            continue;
                        }
                        let x0 = x;
                        while x < row.len() && row[x] == l {
                            x += 1;
                        }
                        runs.push(Run { y: y as u32, x0: x0 as u32, x1: x as u32, label: l });
                    }
                }
                runs
            })
            .collect();
        // first run of every row (z, y): row_start[z * (ny + 1) + y] .. row_start[z * (ny + 1) + y + 1]
        let mut runs: Vec<Run> = Vec::with_capacity(planes.iter().map(Vec::len).sum());
        let mut row_start = vec![0u32; nz * (ny + 1)];
        for (z, plane) in planes.iter().enumerate() {
            let base = runs.len();
            let mut k = 0usize;
            for y in 0..=ny {
                while k < plane.len() && (plane[k].y as usize) < y {
                    k += 1;
                }
                row_start[z * (ny + 1) + y] = (base + k) as u32;
            }
            runs.extend_from_slice(plane);
        }
        drop(planes);
        if runs.is_empty() {
            return out;
        }
        let row = |z: usize, y: usize| (row_start[z * (ny + 1) + y] as usize)..(row_start[z * (ny + 1) + y + 1] as usize);
        let mut parent: Vec<u32> = (0..runs.len() as u32).collect();
        for z in 0..nz {
            for y in 0..ny {
                let current = row(z, y);
                if current.is_empty() {
                    continue;
                }
                let mut neighbours = Vec::with_capacity(4);
                if y > 0 {
                    neighbours.push(row(z, y - 1));
                }
                if z > 0 {
                    for yy in y.saturating_sub(1)..(y + 2).min(ny) {
                        neighbours.push(row(z - 1, yy));
                    }
                }
                for nb in neighbours {
                    // both rows are sorted by x: sweep them together
                    let mut j = nb.start;
                    for i in current.clone() {
                        let a = runs[i];
                        // skip runs that end before a's grown range starts
                        while j < nb.end && runs[j].x1 < a.x0 {
                            j += 1;
                        }
                        let mut k = j;
                        while k < nb.end && runs[k].x0 <= a.x1 {
                            let b = runs[k];
                            if b.label == a.label {
                                let (ra, rb) = (find_root(&mut parent, i as u32), find_root(&mut parent, k as u32));
                                if ra != rb {
                                    // the smaller run number (earlier in scan order) stays the root
                                    let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
                                    parent[hi as usize] = lo;
                                }
                            }
                            k += 1;
                        }
                    }
                }
            }
        }
        // sizes per root; roots are each component's first run in scan order
        let mut size = vec![0usize; runs.len()];
        for i in 0..runs.len() {
            let r = find_root(&mut parent, i as u32) as usize;
            size[r] += (runs[i].x1 - runs[i].x0) as usize;
        }
        // per label: the largest component (first in scan order on ties) and the component count
        let mut best: [Option<(u32, usize)>; 256] = [None; 256];
        let mut count = [0usize; 256];
        for (i, r) in runs.iter().enumerate() {
            if parent[i] != i as u32 {
                continue;
            }
            let l = r.label as usize;
            count[l] += 1;
            match best[l] {
                Some((_, s)) if s >= size[i] => {}
                _ => best[l] = Some((i as u32, size[i])),
            }
        }
        let mut z = 0usize;
        for (i, r) in runs.iter().enumerate() {
            while row_start[z * (ny + 1) + ny] as usize <= i {
                z += 1;
            }
            let l = r.label as usize;
            if count[l] > 1 && best[l].is_some_and(|(keep, _)| parent[i] != keep) {
                out.clear[l].push((z as u32, r.y, r.x0, r.x1));
            }
        }
        out
    }

    /// Clear (set to 0) the voxels of `label` outside its largest component; no-op for a label
    /// with at most one component or not given to [`LargestComponents::find`].
    pub fn apply(&mut self, map: &mut Array3<u8>, label: u8) {
        for (z, y, x0, x1) in std::mem::take(&mut self.clear[label as usize]) {
            let mut row = map.slice_mut(ndarray::s![z as usize, y as usize, x0 as usize..x1 as usize]);
            row.iter_mut().filter(|v| **v == label).for_each(|v| *v = 0);
        }
    }
}

/// Fill the holes of `label` (see module docs).
///
/// Computed inside the label's bounding box grown by one voxel on each side (clipped to the
/// volume), with "touches the volume border" replaced by "touches the border of that box":
/// the voxels outside the bounding box are all non-label and each reaches the volume border
/// through them, so a component of the box touches its border exactly when the component of
/// the whole volume it belongs to touches the volume border. Same result as the whole-volume
/// computation (tested against it), at a fraction of the cost for small structures.
pub fn fill_holes(labels: &mut Array3<u8>, label: u8) {
    let (nz, ny, nx) = labels.dim();
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for ((z, y, x), &v) in labels.indexed_iter() {
        if v == label {
            for (a, c) in [z, y, x].into_iter().enumerate() {
                lo[a] = lo[a].min(c);
                hi[a] = hi[a].max(c + 1);
            }
        }
    }
    if lo[0] == usize::MAX {
        return; // no voxel of the label: no hole
    }
    let n = [nz, ny, nx];
    let lo = lo.map(|c| c.saturating_sub(1));
    let hi = [0, 1, 2].map(|a| (hi[a] + 1).min(n[a]));
    let dims = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let [bz, by, bx] = dims;
    let mut boxed = labels.slice_mut(ndarray::s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]);
    let mask: Vec<bool> = boxed.iter().map(|&v| v != label).collect();
    let (comp, sizes) = components(&mask, dims, false);
    let mut touches = vec![false; sizes.len()];
    for z in 0..bz {
        for y in 0..by {
            for x in 0..bx {
                if z == 0 || y == 0 || x == 0 || z == bz - 1 || y == by - 1 || x == bx - 1 {
                    touches[comp[(z * by + y) * bx + x] as usize] = true;
                }
            }
        }
    }
    for (v, &c) in boxed.iter_mut().zip(&comp) {
        if c != 0 && !touches[c as usize] && *v == 0 {
            *v = label;
        }
    }
}

/// What [`order_levels`] did, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelOrderSummary {
    /// Bodies found (after merging and splitting), head to foot.
    pub bodies: usize,
    /// Level (1-based index into `LevelOrder::labels`) given to the first body; bodies mapped
    /// outside `1..=labels.len()` became background. `None` when no body was found.
    pub first_level: Option<i64>,
    /// Pieces (6-connected components of the level labels) split into the network's labels.
    pub split: usize,
    /// Voxels whose label changed (relabelled or cleared).
    pub changed: usize,
}

/// Give the bodies of a chain of serially ordered structures consecutive levels, head to foot
/// (`[output.level_order]`, [`LevelOrder`]), in place on the label map `labels` `(z, y, x)`.
///
/// 1. The voxels whose label is one of `order.labels` are split into 6-connected pieces; pieces
///    below `order.min_volume_ml` (mL) become background.
/// 2. With `order.split_factor = f`, a piece with more than `f` times the median piece's voxels
///    (several bodies joined through a disc) is split into its voxels of each label; parts
///    below the minimum volume become background.
/// 3. The pieces are sorted by their centroid's head-foot position (mm along −S of LPS); a
///    piece whose centroid lies less than `order.merge_mm` below the first piece of the current
///    body joins that body (a body cut in parts by dark marrow), otherwise it starts the next.
/// 4. Body `j` (0 = nearest the head) gets level `j + o` (level `i` = `order.labels[i − 1]`),
///    with the offset `o` that agrees with the most voxels' own labels, over every offset that
///    maps at least one body to a level (ties: the smallest `o`). Bodies mapped outside the
///    levels become background.
///
/// So a body whose voxels the network split between two neighbouring levels gets one level, and
/// levels follow each other without gaps or repeats. Voxels of other labels are never changed.
///
/// `foot_step_mm` is the head-to-foot displacement (mm along −S, patient LPS, PS3.3
/// C.7.6.2.1.1) of one index step along `(z, y, x)`: for a [`Volume`](crate::volume::Volume)
/// `[−Δz·slice_direction[2], −Δy·column_direction[2], −Δx·row_direction[2]]`. `voxel_mm3` is
/// the voxel volume in mm³.
///
/// Reference: the experiment it reproduces, `relabel_by_order` in
/// `models/lumbar-vertebrae-mr/train/calibrate.py` (scored by cross-validation,
/// `train/crossval.py`; MODEL_CARD.md "Cross-validation").
pub fn order_levels(labels: &mut Array3<u8>, order: &LevelOrder, foot_step_mm: [f64; 3], voxel_mm3: f64) -> LevelOrderSummary {
    let (nz, ny, nx) = labels.dim();
    let dims = [nz, ny, nx];
    let nl = order.labels.len();
    // level index (0-based) of each label value, or usize::MAX
    let mut level_of = [usize::MAX; 256];
    for (i, &v) in order.labels.iter().enumerate() {
        level_of[v as usize] = i;
    }
    let flat = labels.as_slice_mut().expect("standard layout");
    let mask: Vec<bool> = flat.iter().map(|&v| level_of[v as usize] != usize::MAX).collect();
    let (comp, sizes) = components(&mask, dims, false);
    let min_voxels = if voxel_mm3 > 0.0 { order.min_volume_ml * 1000.0 / voxel_mm3 } else { 0.0 };
    // pieces at least min_voxels large, numbered 0.. in component (scan) order
    let mut piece_of = vec![u32::MAX; sizes.len()];
    let mut npieces = 0usize;
    for (c, &sz) in sizes.iter().enumerate().skip(1) {
        if sz as f64 >= min_voxels {
            piece_of[c] = npieces as u32;
            npieces += 1;
        }
    }
    // per (piece, level): voxel count and the sum of head-foot positions
    let mut count = vec![0usize; npieces * nl];
    let mut pos_sum = vec![0f64; npieces * nl];
    for (i, (&c, &v)) in comp.iter().zip(flat.iter()).enumerate() {
        if c == 0 || piece_of[c as usize] == u32::MAX {
            continue;
        }
        let (z, y, x) = (i / (ny * nx), (i / nx) % ny, i % nx);
        let h = z as f64 * foot_step_mm[0] + y as f64 * foot_step_mm[1] + x as f64 * foot_step_mm[2];
        let k = piece_of[c as usize] as usize * nl + level_of[v as usize];
        count[k] += 1;
        pos_sum[k] += h;
    }
    // parts: (head-foot centroid, piece, Some(level) for a part of a split piece, votes per level)
    struct Part {
        pos: f64,
        piece: usize,
        level: Option<usize>,
    }
    let piece_size = |p: usize| count[p * nl..(p + 1) * nl].iter().sum::<usize>();
    let piece_pos = |p: usize| pos_sum[p * nl..(p + 1) * nl].iter().sum::<f64>() / piece_size(p) as f64;
    let median = {
        let mut s: Vec<usize> = (0..npieces).map(piece_size).collect();
        s.sort_unstable();
        match s.len() {
            0 => 0.0,
            n if n % 2 == 1 => s[n / 2] as f64,
            n => (s[n / 2 - 1] + s[n / 2]) as f64 / 2.0,
        }
    };
    let mut parts: Vec<Part> = Vec::new();
    let mut split = 0usize;
    for p in 0..npieces {
        match order.split_factor {
            Some(f) if piece_size(p) as f64 > f * median => {
                split += 1;
                for l in 0..nl {
                    let n = count[p * nl + l];
                    if n > 0 && n as f64 >= min_voxels {
                        parts.push(Part { pos: pos_sum[p * nl + l] / n as f64, piece: p, level: Some(l) });
                    }
                }
            }
            _ => parts.push(Part { pos: piece_pos(p), piece: p, level: None }),
        }
    }
    parts.sort_by(|a, b| a.pos.total_cmp(&b.pos)); // stable: equal positions keep scan order
    // bodies: (head-foot centroid of the first part, parts); votes per level
    let mut body_of_part = vec![0usize; parts.len()];
    let mut first_pos: Vec<f64> = Vec::new();
    let mut votes: Vec<Vec<usize>> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if first_pos.last().is_none_or(|&f| part.pos - f >= order.merge_mm) {
            first_pos.push(part.pos);
            votes.push(vec![0; nl]);
        }
        let b = first_pos.len() - 1;
        body_of_part[i] = b;
        match part.level {
            Some(l) => votes[b][l] += count[part.piece * nl + l],
            None => {
                for l in 0..nl {
                    votes[b][l] += count[part.piece * nl + l];
                }
            }
        }
    }
    let nb = votes.len() as i64;
    let (mut best, mut best_o) = (-1i64, 0i64);
    for o in (2 - nb)..=(nl as i64) {
        let score: i64 = (0..nb)
            .filter(|j| (1..=nl as i64).contains(&(j + o)))
            .map(|j| votes[j as usize][(j + o - 1) as usize] as i64)
            .sum();
        if score > best {
            best = score;
            best_o = o;
        }
    }
    // new label per (piece, level): 0 unless the voxel's part was kept and its body mapped
    let mut new_label = vec![0u8; npieces * nl];
    for (i, part) in parts.iter().enumerate() {
        let level = body_of_part[i] as i64 + best_o;
        let value = if (1..=nl as i64).contains(&level) { order.labels[(level - 1) as usize] } else { 0 };
        match part.level {
            Some(l) => new_label[part.piece * nl + l] = value,
            None => new_label[part.piece * nl..(part.piece + 1) * nl].fill(value),
        }
    }
    let mut changed = 0usize;
    for (v, &c) in flat.iter_mut().zip(&comp) {
        if c == 0 {
            continue;
        }
        let p = piece_of[c as usize];
        let nv = if p == u32::MAX { 0 } else { new_label[p as usize * nl + level_of[*v as usize]] };
        if nv != *v {
            *v = nv;
            changed += 1;
        }
    }
    LevelOrderSummary { bodies: votes.len(), first_level: (!votes.is_empty()).then_some(best_o), split, changed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn chain_order(split_factor: Option<f64>) -> LevelOrder {
        LevelOrder { labels: vec![1, 2, 3, 4, 5], min_volume_ml: 0.5, merge_mm: 8.0, split_factor }
    }

    /// Boxes of 10 (z) x `h` (y) x 10 (x) voxels at 1 mm starting at the given y rows, each
    /// with its label; y runs head to foot (foot_step [0, 1, 0]).
    fn chain(rows: &[(usize, usize, u8)]) -> Array3<u8> {
        let mut m = Array3::<u8>::zeros((12, 80, 12));
        for &(y0, h, l) in rows {
            m.slice_mut(ndarray::s![1..11, y0..y0 + h, 1..11]).fill(l);
        }
        m
    }

    #[test]
    fn order_levels_makes_levels_consecutive() {
        // five bodies 10 mm tall, 4 mm discs; the network labelled them 1, 2, 2, 4, 5: body 2
        // gets 3 (offset 0 agrees with 4 of 5 bodies)
        let mut m = chain(&[(2, 10, 1), (16, 10, 2), (30, 10, 2), (44, 10, 4), (58, 10, 5)]);
        // a speck of 8 voxels (< 0.5 mL) labelled 3 and a voxel of another label (7)
        m.slice_mut(ndarray::s![5..7, 75..77, 5..7]).fill(3);
        m[[0, 0, 0]] = 7;
        let s = order_levels(&mut m, &chain_order(None), [0.0, 1.0, 0.0], 1.0);
        assert_eq!(s, LevelOrderSummary { bodies: 5, first_level: Some(1), split: 0, changed: 1000 + 8 });
        assert_eq!(m, {
            let mut want = chain(&[(2, 10, 1), (16, 10, 2), (30, 10, 3), (44, 10, 4), (58, 10, 5)]);
            want[[0, 0, 0]] = 7;
            want
        });
    }

    #[test]
    fn order_levels_gives_a_body_one_level_and_merges_its_pieces() {
        // body 1 half L2, half L3 by voxel count (network undecided); body 0 cut in two pieces
        // by a 2 mm gap (dark marrow), centroids 7 mm apart, which join it
        let mut m = chain(&[(2, 5, 1), (9, 5, 1), (20, 5, 2), (25, 5, 3), (38, 10, 3), (52, 10, 4)]);
        let s = order_levels(&mut m, &chain_order(None), [0.0, 1.0, 0.0], 1.0);
        assert_eq!((s.bodies, s.first_level), (4, Some(1)));
        assert_eq!(m, chain(&[(2, 5, 1), (9, 5, 1), (20, 10, 2), (38, 10, 3), (52, 10, 4)]));
    }

    #[test]
    fn order_levels_follows_patient_head_foot_not_the_index() {
        // same map, but the y axis runs foot to head: the last rows are L1
        let mut m = chain(&[(2, 10, 4), (16, 10, 3), (30, 10, 3), (44, 10, 1)]);
        let s = order_levels(&mut m, &chain_order(None), [0.0, -1.0, 0.0], 1.0);
        assert_eq!((s.bodies, s.first_level), (4, Some(1)));
        assert_eq!(m, chain(&[(2, 10, 4), (16, 10, 3), (30, 10, 2), (44, 10, 1)]));
        // millimetres, not voxels: with 0.5 mm steps the bodies lie 7 mm apart and merge_mm 8
        // joins them into two bodies, {1, 2} and {3, 4}; offset 2 (levels 2, 3) agrees with
        // 2,000 voxels, offsets 1 and 3 with 1,000
        let mut m = chain(&[(2, 10, 1), (16, 10, 2), (30, 10, 3), (44, 10, 4)]);
        let s = order_levels(&mut m, &chain_order(None), [0.0, 0.5, 0.0], 0.5);
        assert_eq!((s.bodies, s.first_level), (2, Some(2)));
        assert_eq!(m, chain(&[(2, 10, 2), (16, 10, 2), (30, 10, 3), (44, 10, 3)]));
    }

    #[test]
    fn order_levels_splits_joined_bodies_with_split_factor() {
        // L2 and L3 touch through a missing disc: one piece of 2,000 voxels; median 1,000
        let rows = [(2, 10, 1), (16, 10, 2), (26, 10, 3), (40, 10, 4), (54, 10, 5)];
        let mut m = chain(&rows);
        let s = order_levels(&mut m, &chain_order(None), [0.0, 1.0, 0.0], 1.0);
        // without splitting the joined piece is one body and the chain has four: offset 2
        // (agrees with 3,000 voxels) moves every level one down, the head-end shift seen in
        // cross-validation
        assert_eq!((s.bodies, s.first_level, s.split), (4, Some(2), 0));
        assert_eq!(m, chain(&[(2, 10, 2), (16, 20, 3), (40, 10, 4), (54, 10, 5)]));
        let mut m = chain(&rows);
        let s = order_levels(&mut m, &chain_order(Some(1.5)), [0.0, 1.0, 0.0], 1.0);
        assert_eq!(s, LevelOrderSummary { bodies: 5, first_level: Some(1), split: 1, changed: 0 });
        assert_eq!(m, chain(&rows));
    }

    #[test]
    fn order_levels_drops_bodies_beyond_the_chain_and_keeps_empty_maps() {
        // six bodies labelled 1..5 + a T12 above labelled 1 too: offset 0 maps the T12 to
        // level 0 -> background; the others keep their labels
        let mut m = Array3::<u8>::zeros((12, 100, 12));
        for (i, l) in [1u8, 1, 2, 3, 4, 5].into_iter().enumerate() {
            m.slice_mut(ndarray::s![1..11, 2 + 14 * i..12 + 14 * i, 1..11]).fill(l);
        }
        let before = m.clone();
        let s = order_levels(&mut m, &chain_order(None), [0.0, 1.0, 0.0], 1.0);
        assert_eq!((s.bodies, s.first_level, s.changed), (6, Some(0), 1000));
        assert!(m.slice(ndarray::s![.., 2..12, ..]).iter().all(|&v| v == 0));
        assert_eq!(m.slice(ndarray::s![.., 12.., ..]), before.slice(ndarray::s![.., 12.., ..]));
        let mut e = Array3::<u8>::zeros((3, 3, 3));
        let s = order_levels(&mut e, &chain_order(None), [0.0, 1.0, 0.0], 1.0);
        assert_eq!((s.bodies, s.first_level, s.changed), (0, None, 0));
    }

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

    /// The definition of the module docs over the whole volume (the implementation before the
    /// bounding box), as the reference of `fill_holes_in_the_box_match_the_whole_volume`.
    fn fill_holes_whole_volume(labels: &mut Array3<u8>, label: u8) {
        let dims = [labels.dim().0, labels.dim().1, labels.dim().2];
        let [nz, ny, nx] = dims;
        let flat = labels.as_slice_mut().unwrap();
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

    /// Random label maps (several labels, blobs with and without holes, structures at the
    /// volume border and away from it, an absent label): the bounding-box computation gives
    /// exactly the whole-volume result.
    #[test]
    fn fill_holes_in_the_box_match_the_whole_volume() {
        let mut state = 987654321u64;
        let mut next = move |m: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        let mut filled_any = 0;
        for case in 0..300 {
            let shape = (1 + next(9) as usize, 1 + next(12) as usize, 1 + next(12) as usize);
            let mut map = Array3::<u8>::zeros(shape);
            // a few boxes of labels 1..3, each hollowed out (maybe), plus noise
            for _ in 0..1 + next(4) {
                let l = 1 + next(3) as u8;
                let (z0, y0, x0) = (next(shape.0 as u64) as usize, next(shape.1 as u64) as usize, next(shape.2 as u64) as usize);
                let (z1, y1, x1) = ((z0 + 1 + next(6) as usize).min(shape.0), (y0 + 1 + next(8) as usize).min(shape.1), (x0 + 1 + next(8) as usize).min(shape.2));
                for z in z0..z1 {
                    for y in y0..y1 {
                        for x in x0..x1 {
                            let inner = z > z0 && z + 1 < z1 && y > y0 && y + 1 < y1 && x > x0 && x + 1 < x1;
                            map[[z, y, x]] = if inner && next(3) > 0 { if next(5) == 0 { 4 } else { 0 } } else { l };
                        }
                    }
                }
            }
            for _ in 0..next(6) {
                let (z, y, x) = (next(shape.0 as u64) as usize, next(shape.1 as u64) as usize, next(shape.2 as u64) as usize);
                map[[z, y, x]] = next(5) as u8;
            }
            for label in 1..=5u8 {
                let mut fast = map.clone();
                let mut reference = map.clone();
                fill_holes(&mut fast, label);
                fill_holes_whole_volume(&mut reference, label);
                assert_eq!(fast, reference, "case {case}, label {label}, shape {shape:?}");
                if fast != map {
                    filled_any += 1;
                }
            }
        }
        assert!(filled_any >= 25, "the cases must contain holes ({filled_any} filled)");
    }

    #[test]
    fn largest_components_in_one_pass_match_label_by_label() {
        // pseudo-random labels 0..4 with many small components, ties included; several shapes
        // and densities, and flat shapes (one plane, one row) for the row/plane edges
        let mut state = 12345u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        let mut changed = 0;
        for case in 0..400 {
            let shape = match case % 5 {
                0 => (6, 9, 11),
                1 => (1, 7, 13),
                2 => (5, 1, 17),
                3 => (4, 6, 1),
                _ => (2 + (next() % 6) as usize, 2 + (next() % 9) as usize, 2 + (next() % 12) as usize),
            };
            let density = 2 + next() % 8; // of 10
            let map = Array3::from_shape_simple_fn(shape, || {
                let r = next() % 10;
                if r >= density { 0 } else { (1 + next() % 4) as u8 }
            });
            let mut want = map.clone();
            for l in [1u8, 2, 4] {
                keep_largest_component(&mut want, l);
            }
            let mut got = map.clone();
            let mut lc = LargestComponents::find(&got, &[1, 2, 4]);
            for l in [1u8, 2, 4] {
                lc.apply(&mut got, l);
            }
            assert_eq!(got, want, "case {case}, shape {shape:?}");
            if want != map {
                changed += 1;
            }
        }
        assert!(changed > 200, "the cases need several components per label ({changed})");
        // a map without those labels is unchanged
        let empty = Array3::<u8>::zeros((2, 3, 4));
        let mut e = empty.clone();
        LargestComponents::find(&e, &[1]).apply(&mut e, 1);
        assert_eq!(e, empty);
    }
}
