//! Bit packing of BINARY segmentation frames into Pixel Data (7FE0,0010).
//!
//! With Bits Allocated = 1 (PS3.5 8.1.1, PS3.3 C.8.20.2.1) the frames are
//! concatenated as one bit stream without any padding between rows or
//! frames: pixel `k` of the stream (frame-major, then row-major within the
//! frame) is bit `k & 7` (least significant bit first) of byte `k >> 3`.
//! The value is padded with zero bits to a whole byte and then with one zero
//! byte to an even length (PS3.5 7.1.1: values have even length).

/// Accumulates pixels (`true` = inside the segment) into the packed
/// Bits Allocated = 1 representation described in the module docs.
#[derive(Debug, Default, Clone)]
pub struct BitPacker {
    bytes: Vec<u8>,
    bits: u64,
}

impl BitPacker {
    /// An empty packer with room for `pixel_capacity` pixels.
    pub fn with_capacity(pixel_capacity: usize) -> Self {
        BitPacker {
            bytes: Vec::with_capacity(pixel_capacity.div_ceil(8) + 1),
            bits: 0,
        }
    }

    /// Append one pixel to the stream.
    #[inline]
    pub fn push(&mut self, set: bool) {
        let bit = (self.bits & 7) as u8;
        if bit == 0 {
            self.bytes.push(0);
        }
        if set {
            // `bytes` is non-empty: a byte was pushed when bit == 0.
            *self.bytes.last_mut().expect("byte allocated at bit 0") |= 1 << bit;
        }
        self.bits += 1;
    }

    /// Number of pixels appended so far.
    pub fn pixel_count(&self) -> u64 {
        self.bits
    }

    /// The packed value: `ceil(pixel_count / 8)` bytes, plus one zero byte if
    /// that count is odd, so the length is even.
    pub fn finish(mut self) -> Vec<u8> {
        if self.bytes.len() % 2 == 1 {
            self.bytes.push(0);
        }
        self.bytes
    }
}

/// Pack a sequence of pixels into a Bits Allocated = 1 Pixel Data value
/// (see the module docs); convenience over [`BitPacker`].
pub fn pack_bits(pixels: impl IntoIterator<Item = bool>) -> Vec<u8> {
    let mut p = BitPacker::default();
    for px in pixels {
        p.push(px);
    }
    p.finish()
}

/// Pack binary frames taken from a label map `(z, y, x)`: frame `i` is plane
/// `frames[i].0` with pixel set where the label equals `frames[i].1`, frames concatenated in
/// order (the Pixel Data of a BINARY SEG, PS3.3 C.8.20.2.1). Same bytes as [`pack_bits`] over
/// that pixel stream. When a frame has a whole number of bytes (`y·x` divisible by 8, as for
/// every usual matrix) the frames are packed in parallel (rayon), 8 pixels per byte; otherwise
/// frames share bytes and the stream is packed serially.
pub fn pack_label_frames(labels: ndarray::ArrayView3<u8>, frames: &[(usize, u8)]) -> Vec<u8> {
    use rayon::prelude::*;
    let frame_pixels = labels.shape()[1] * labels.shape()[2];
    if frame_pixels % 8 != 0 || frame_pixels == 0 {
        let mut p = BitPacker::with_capacity(frames.len() * frame_pixels);
        for &(z, value) in frames {
            for &v in labels.index_axis(ndarray::Axis(0), z).iter() {
                p.push(v == value);
            }
        }
        return p.finish();
    }
    let frame_bytes = frame_pixels / 8;
    let mut out = vec![0u8; frames.len() * frame_bytes + (frames.len() * frame_bytes) % 2];
    out.par_chunks_mut(frame_bytes).zip(frames.par_iter()).for_each(|(dst, &(z, value))| {
        let plane = labels.index_axis(ndarray::Axis(0), z);
        let pack = |d: &mut u8, px: &mut dyn Iterator<Item = u8>| {
            let mut b = 0u8;
            for (bit, v) in px.enumerate() {
                b |= u8::from(v == value) << bit;
            }
            *d = b;
        };
        match plane.as_slice() {
            Some(px) => dst.iter_mut().zip(px.chunks_exact(8)).for_each(|(d, c)| pack(d, &mut c.iter().copied())),
            None => {
                let mut it = plane.iter().copied();
                for d in dst.iter_mut() {
                    pack(d, &mut it.by_ref().take(8));
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_byte_is_lsb_first_and_padded_to_even_length() {
        // pixels 0..8: 1,0,0,0,0,0,0,1 → bit0 and bit7 → 0x81
        let px = [true, false, false, false, false, false, false, true];
        assert_eq!(pack_bits(px), vec![0x81, 0x00]);
        assert_eq!(pack_bits(std::iter::empty()), Vec::<u8>::new());
    }

    #[test]
    fn two_odd_frames_of_3x5_are_packed_without_per_frame_padding() {
        // Frame 0 (3 rows × 5 columns):      Frame 1:
        //   1 0 0 0 1                          0 0 0 0 0
        //   0 1 0 1 0                          1 1 1 1 1
        //   0 0 1 0 0                          0 0 0 0 1
        let f0 = [1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0];
        let f1 = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1];
        let stream: Vec<bool> = f0.iter().chain(f1.iter()).map(|&v| v == 1).collect();
        // 30 pixels → 4 bytes (already even).
        // byte0: pixels 0..8  = 1,0,0,0,1,0,1,0 → bits 0,4,6        = 0x51
        // byte1: pixels 8..16 = 1,0,0,0,1,0,0,0 → bits 0,4          = 0x11
        //        (pixel 15 is frame 1 pixel 0 = 0)
        // byte2: pixels 16..24 = f1[1..9] = 0,0,0,0,1,1,1,1 → bits 4..7 = 0xF0
        // byte3: pixels 24..30 = f1[9..15] = 1,0,0,0,0,1 → bits 0,5  = 0x21
        assert_eq!(pack_bits(stream), vec![0x51, 0x11, 0xF0, 0x21]);
    }

    #[test]
    fn odd_byte_count_gets_one_padding_byte() {
        // 3×5 = 15 pixels, all set → 2 bytes: 0xFF, 0x7F.
        assert_eq!(pack_bits([true; 15]), vec![0xFF, 0x7F]);
        // 17 pixels → 3 bytes + 1 padding byte.
        let mut p = BitPacker::with_capacity(17);
        for _ in 0..17 {
            p.push(true);
        }
        assert_eq!(p.pixel_count(), 17);
        assert_eq!(p.finish(), vec![0xFF, 0xFF, 0x01, 0x00]);
    }

    #[test]
    fn label_frames_match_the_serial_bit_stream() {
        let labels = ndarray::Array3::from_shape_fn((3, 4, 6), |(z, y, x)| ((z * 7 + y * 3 + x) % 4) as u8);
        let frames = [(2, 1u8), (0, 3), (1, 1), (2, 2)];
        let want: Vec<bool> =
            frames.iter().flat_map(|&(z, v)| labels.index_axis(ndarray::Axis(0), z).iter().map(move |&l| l == v).collect::<Vec<_>>()).collect();
        // 24 pixels per frame: byte-aligned, parallel path; odd frame count → padding byte
        assert_eq!(pack_label_frames(labels.view(), &frames[..3]), pack_bits(want[..72].iter().copied()));
        assert_eq!(pack_label_frames(labels.view(), &frames), pack_bits(want.iter().copied()));
        // non-standard layout takes the iterator branch
        let t = labels.view().permuted_axes([0, 2, 1]);
        let want_t: Vec<bool> = frames.iter().flat_map(|&(z, v)| t.index_axis(ndarray::Axis(0), z).iter().map(move |&l| l == v).collect::<Vec<_>>()).collect();
        assert_eq!(pack_label_frames(t, &frames), pack_bits(want_t));
        // 3×5 frames: not byte-aligned, serial path
        let odd = ndarray::Array3::from_shape_fn((2, 3, 5), |(z, y, x)| ((z + y + x) % 2) as u8);
        let want_odd: Vec<bool> = [(1usize, 1u8), (0, 0)].iter().flat_map(|&(z, v)| odd.index_axis(ndarray::Axis(0), z).iter().map(move |&l| l == v).collect::<Vec<_>>()).collect();
        assert_eq!(pack_label_frames(odd.view(), &[(1, 1), (0, 0)]), pack_bits(want_odd));
    }
}
