//! Seeded shuffling, augmentation and batching.
//!
//! The order of epoch `e` is a shuffle drawn from `Rng::stream(seed, e)` and the augmentation of
//! batch `k` from its own stream, so a loader's whole state is `(epoch, position)`: a resumed run
//! sees exactly the batches the uninterrupted run would have seen.

use advmoe_core::Rng;
use serde::{Deserialize, Serialize};

use crate::ImageSet;

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    /// Zero padding before a random crop back to the original size (0: no crop).
    pub pad: usize,
    /// Random horizontal flip with probability 1/2.
    pub flip: bool,
}

/// A mini-batch as floats in [0, 1], NCHW, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch, channels, height, width]`.
    pub shape: [usize; 4],
    /// `batch * channels * height * width` pixel values in [0, 1].
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u16>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Collect `indices` of `set`, augmenting with `augment` drawn from `rng`.
    pub fn gather(set: &ImageSet, indices: &[usize], augment: Option<(Augment, &mut Rng)>) -> Self {
        let [h, w] = set.size;
        let c = set.channels;
        let mut images = Vec::with_capacity(indices.len() * c * h * w);
        let mut labels = Vec::with_capacity(indices.len());
        let mut augment = augment;
        for &index in indices {
            let src = set.image(index);
            labels.push(set.labels[index]);
            let (dy, dx, flip) = match augment.as_mut() {
                Some((aug, rng)) => {
                    let p = aug.pad as isize;
                    let dy = rng.below(2 * aug.pad + 1) as isize - p;
                    let dx = rng.below(2 * aug.pad + 1) as isize - p;
                    (dy, dx, aug.flip && rng.coin())
                }
                None => (0, 0, false),
            };
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let sx = if flip { w - 1 - x } else { x } as isize + dx;
                        let sy = y as isize + dy;
                        let v = if (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx) {
                            src[(ch * h + sy as usize) * w + sx as usize] as f32 / 255.0
                        } else {
                            0.0
                        };
                        images.push(v);
                    }
                }
            }
        }
        Self {
            shape: [indices.len(), c, h, w],
            images,
            labels,
        }
    }
}

/// Where a loader is: enough to continue exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Completed epochs.
    pub epoch: usize,
    /// Next position in this epoch's order.
    pub position: usize,
    /// Batches produced so far (seeds augmentation).
    pub batches: u64,
}

/// Endless, seeded, shuffled mini-batches of full size (an epoch's remainder is dropped).
#[derive(Debug, Clone)]
pub struct Loader {
    seed: u64,
    batch_size: usize,
    augment: Option<Augment>,
    len: usize,
    order: Vec<usize>,
    state: LoaderState,
}

impl Loader {
    /// A loader over `len` images. `batch_size` is clamped to `len`.
    pub fn new(len: usize, batch_size: usize, seed: u64, augment: Option<Augment>) -> Self {
        let mut loader = Self {
            seed,
            batch_size: batch_size.clamp(1, len.max(1)),
            augment,
            len,
            order: Vec::new(),
            state: LoaderState {
                epoch: 0,
                position: 0,
                batches: 0,
            },
        };
        loader.shuffle();
        loader
    }

    fn shuffle(&mut self) {
        self.order = (0..self.len).collect();
        Rng::stream(self.seed, self.state.epoch as u64).shuffle(&mut self.order);
    }

    /// The state to store in a checkpoint.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Continue from a stored state.
    pub fn restore(&mut self, state: LoaderState) {
        self.state = state;
        self.shuffle();
    }

    /// Completed epochs plus the fraction of the current one.
    pub fn epochs(&self) -> f64 {
        self.state.epoch as f64 + self.state.position as f64 / self.len.max(1) as f64
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        (self.len / self.batch_size).max(1)
    }

    /// The next mini-batch of `set` (which must have the `len` given at creation).
    pub fn next_batch(&mut self, set: &ImageSet) -> Batch {
        debug_assert_eq!(set.len(), self.len);
        // Saturating: a restored state comes from a file (run.json), and must not overflow.
        if self.state.position.saturating_add(self.batch_size) > self.len {
            self.state.epoch = self.state.epoch.saturating_add(1);
            self.state.position = 0;
            self.shuffle();
        }
        let indices = &self.order[self.state.position..self.state.position + self.batch_size];
        let mut rng = Rng::stream(self.seed ^ 0x6175_676d, self.state.batches);
        let batch = Batch::gather(set, indices, self.augment.map(|a| (a, &mut rng)));
        self.state.position += self.batch_size;
        self.state.batches = self.state.batches.wrapping_add(1);
        batch
    }
}
