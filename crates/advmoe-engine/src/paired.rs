//! Per-image outcomes of an evaluation, and the paired difference between two models measured on
//! the same test images.
//!
//! Two models evaluated on the same images are not independent samples: most images are easy
//! (or hard) for both. The standard error of the difference of their accuracies is therefore
//! read from the images on which they disagree, not from each accuracy's own binomial error,
//! and McNemar's exact test says how often a gap at least that large would arise if each
//! disagreement were a coin flip. With the outcomes recorded per image
//! ([`RobustOptions::per_image`](crate::RobustOptions::per_image)), a comparison can say
//! whether a 2-point gap on 1,000 images is a finding or noise.

use serde::{Deserialize, Serialize};

/// Per test image, in the order evaluated (the first image first): whether each measurement left
/// it correctly classified, `'1'` for yes and `'0'` for no. Strings keep `compare.json`
/// readable and small (a byte per image and measurement).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerImage {
    /// Correct when clean.
    pub clean: String,
    /// Correct under the RA attack.
    pub robust: String,
    /// Correct under every attack of the worst case, the RA attack included (the headline);
    /// empty when no worst case was measured.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub worst_case: String,
}

impl PerImage {
    /// Append one batch: each image's clean, RA and worst-case outcome (`worst` is `None`
    /// without a worst case).
    pub fn push(&mut self, clean: &[bool], robust: &[bool], worst: Option<&[bool]>) {
        let bits = |v: &[bool]| {
            v.iter()
                .map(|&b| if b { '1' } else { '0' })
                .collect::<String>()
        };
        self.clean.push_str(&bits(clean));
        self.robust.push_str(&bits(robust));
        if let Some(worst) = worst {
            self.worst_case.push_str(&bits(worst));
        }
    }

    /// Images recorded.
    pub fn len(&self) -> usize {
        self.clean.len()
    }

    /// Whether no image is recorded.
    pub fn is_empty(&self) -> bool {
        self.clean.is_empty()
    }

    /// The headline outcomes: the worst case when measured, else the RA attack.
    pub fn headline(&self) -> &str {
        if self.worst_case.is_empty() {
            &self.robust
        } else {
            &self.worst_case
        }
    }
}

/// The paired difference `a − b` of two models' accuracies on the same images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// Images compared.
    pub images: usize,
    /// Images only `a` got right.
    pub only_a: usize,
    /// Images only `b` got right.
    pub only_b: usize,
    /// `a`'s accuracy minus `b`'s, a fraction.
    pub difference: f64,
    /// Standard error of that difference, from the paired outcomes.
    pub std_error: f64,
    /// Two-sided p-value of McNemar's exact test: the chance of a split of the disagreements at
    /// least this uneven if each were a fair coin flip.
    pub p_value: f64,
}

impl Paired {
    /// Compare two outcome strings of the same images (`'1'`: correct). `None` if their
    /// lengths differ or they are empty.
    pub fn of(a: &str, b: &str) -> Option<Self> {
        if a.len() != b.len() || a.is_empty() {
            return None;
        }
        let (mut only_a, mut only_b) = (0usize, 0usize);
        for (x, y) in a.bytes().zip(b.bytes()) {
            match (x == b'1', y == b'1') {
                (true, false) => only_a += 1,
                (false, true) => only_b += 1,
                _ => {}
            }
        }
        let n = a.len() as f64;
        let diff = (only_a as f64 - only_b as f64) / n;
        // The variance of the mean of the per-image differences (each +1, −1 or 0).
        let discordant = (only_a + only_b) as f64;
        let variance = (discordant / n - diff * diff).max(0.0) / n;
        Some(Self {
            images: a.len(),
            only_a,
            only_b,
            difference: diff,
            std_error: variance.sqrt(),
            p_value: mcnemar_exact(only_a, only_b),
        })
    }
}

/// A p-value to three decimals, or `< 0.001` below that.
pub fn format_p(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// Two-sided exact McNemar p-value for `b` and `c` discordant pairs: twice the binomial tail
/// P(X ≤ min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let m = b + c;
    if m == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // ln C(m, i) − m ln 2, summed in log space so thousands of pairs do not underflow.
    let ln_half = -(m as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64;
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((m - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half).exp();
    }
    (2.0 * tail).min(1.0)
}
