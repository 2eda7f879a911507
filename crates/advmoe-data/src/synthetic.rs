//! The built-in `synthetic` set: seeded, procedurally generated 32×32 RGB images of 10 classes.
//!
//! Each image is a windowed sinusoidal grating on a random background. The class fixes the
//! grating's orientation (five directions 36° apart) and frequency band (coarse or fine); phase,
//! window position and size, contrast, colour, background, a distractor square and pixel noise are
//! random. The signal is low-contrast texture, which CNNs learn quickly and which small L∞
//! perturbations (8/255) can overturn unless the model is trained adversarially.

use advmoe_core::Rng;

use crate::ImageSet;

/// Side of a synthetic image.
pub const SIDE: usize = 32;
/// Number of classes.
pub const CLASSES: usize = 10;

const ORIENTATIONS: usize = 5;
const FREQUENCIES: [f32; 2] = [2.5, 5.0];

fn class_name(label: usize) -> String {
    let degrees = (label % ORIENTATIONS) * 180 / ORIENTATIONS;
    let band = if label / ORIENTATIONS == 0 {
        "coarse"
    } else {
        "fine"
    };
    format!("{band} {degrees}°")
}

/// Draw one image of class `label` into `out` (3·32·32 bytes, CHW).
fn draw(rng: &mut Rng, label: usize, out: &mut [u8]) {
    use std::f32::consts::{PI, TAU};
    let theta =
        (label % ORIENTATIONS) as f32 * PI / ORIENTATIONS as f32 + rng.uniform_range(-0.12, 0.12);
    let cycles = FREQUENCIES[label / ORIENTATIONS] * rng.uniform_range(0.9, 1.1);
    let k = TAU * cycles / SIDE as f32;
    let (kx, ky) = (k * theta.cos(), k * theta.sin());
    let phase = rng.uniform_range(0.0, TAU);
    let contrast = rng.uniform_range(0.12, 0.25);
    let centre = [rng.uniform_range(10.0, 22.0), rng.uniform_range(10.0, 22.0)];
    let sigma = rng.uniform_range(7.0, 12.0);
    let background: [f32; 3] = std::array::from_fn(|_| rng.uniform_range(0.25, 0.75));
    let tint: [f32; 3] = std::array::from_fn(|_| rng.uniform_range(0.6, 1.0));
    let distractor = rng.coin().then(|| {
        let side = 4 + rng.below(5);
        let x0 = rng.below(SIDE - side);
        let y0 = rng.below(SIDE - side);
        let colour: [f32; 3] = std::array::from_fn(|_| rng.uniform_range(-0.2, 0.2));
        (x0, y0, side, colour)
    });
    for y in 0..SIDE {
        for x in 0..SIDE {
            let (fx, fy) = (x as f32, y as f32);
            let d2 = (fx - centre[0]).powi(2) + (fy - centre[1]).powi(2);
            let window = (-d2 / (2.0 * sigma * sigma)).exp();
            let wave = (kx * fx + ky * fy + phase).sin() * contrast * window;
            for c in 0..3 {
                let mut v = background[c] + wave * tint[c] + 0.04 * rng.normal();
                if let Some((x0, y0, side, colour)) = distractor
                    && (x0..x0 + side).contains(&x)
                    && (y0..y0 + side).contains(&y)
                {
                    v += colour[c];
                }
                out[(c * SIDE + y) * SIDE + x] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

/// Generate `count` images of the train or test split. The same `(seed, train, index)` always
/// gives the same image, and the splits never share an image. Labels cycle through the classes,
/// so every class has `count / 10` images (± 1).
pub fn generate_synthetic(seed: u64, train: bool, count: usize) -> ImageSet {
    let image_len = 3 * SIDE * SIDE;
    let mut pixels = vec![0u8; count * image_len];
    let mut labels = Vec::with_capacity(count);
    let split_salt = if train {
        0x7472_6169_6e00
    } else {
        0x7465_7374_0000
    };
    for (index, out) in pixels.chunks_exact_mut(image_len).enumerate() {
        let label = index % CLASSES;
        let mut rng = Rng::stream(seed ^ split_salt, index as u64);
        draw(&mut rng, label, out);
        labels.push(label as u16);
    }
    ImageSet {
        name: format!("synthetic/{}", if train { "train" } else { "test" }),
        channels: 3,
        size: [SIDE, SIDE],
        num_classes: CLASSES,
        pixels,
        labels,
        class_names: (0..CLASSES).map(class_name).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_balanced_and_split_disjoint() {
        let a = generate_synthetic(3, true, 50);
        let b = generate_synthetic(3, true, 50);
        assert_eq!(a, b);
        let c = generate_synthetic(4, true, 50);
        assert_ne!(a.pixels, c.pixels);
        let test = generate_synthetic(3, false, 50);
        assert_ne!(a.image(0), test.image(0));
        for class in 0..CLASSES as u16 {
            assert_eq!(a.labels.iter().filter(|&&l| l == class).count(), 5);
        }
        // Pixels use most of the range but stay away from saturation on average.
        let mean = a.pixels.iter().map(|&p| p as f64).sum::<f64>() / a.pixels.len() as f64;
        assert!((80.0..175.0).contains(&mean), "{mean}");
    }
}
