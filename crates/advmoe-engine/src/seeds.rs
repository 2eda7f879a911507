//! The same comparison trained with several seeds, summarised: each model's figures as a mean
//! and spread over the seeds, and AdvMoE's paired gaps to the other models seed by seed, with a
//! standard error that holds the training noise.
//!
//! A single comparison's paired test ([`crate::paired`]) measures how much a gap could move with
//! other test images, not with another training run. Two models trained again with another seed
//! can trade places (vanilla MoE AT's router collapses onto whichever expert wins early, and may
//! switch later), so a claim that one method beats another needs the gap of every seed. The
//! summary refuses comparisons that differ in anything but their seeds.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compare::{CompareRow, Comparison, paired_rows};
use crate::paired::{Paired, format_p};

/// One figure of one model over the seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Each seed's value, in the order of the seeds.
    pub values: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Their sample standard deviation (0 for one seed).
    pub sd: f64,
}

impl Spread {
    /// The mean and sample standard deviation of `values` (not empty).
    pub fn of(values: Vec<f64>) -> Self {
        let k = values.len() as f64;
        let mean = values.iter().sum::<f64>() / k;
        let sd = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { values, mean, sd }
    }

    /// `mean ± sd (v1, v2, …)` of fractions, in percent.
    fn percent_cell(&self) -> String {
        self.cell(100.0, 1)
    }

    fn cell(&self, scale: f64, decimals: usize) -> String {
        let each: Vec<String> = self
            .values
            .iter()
            .map(|v| format!("{:.decimals$}", scale * v))
            .collect();
        format!(
            "{:.decimals$} ± {:.decimals$} ({})",
            scale * self.mean,
            scale * self.sd,
            each.join(", ")
        )
    }
}

/// One model's figures over the seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSeeds {
    /// The comparison's name for the model.
    pub name: String,
    /// Clean accuracy.
    pub clean_acc: Spread,
    /// Accuracy under the RA attack.
    pub robust_acc: Spread,
    /// The per-image worst case, when every seed measured it.
    pub worst_case: Option<Spread>,
    /// Router robustness, when every seed measured it (MoE models).
    pub router_robustness: Option<Spread>,
    /// The share of the test images that the first MoE layer's busiest expert takes (MoE
    /// models): 1 for a collapsed router, whichever expert it collapsed onto.
    pub busiest_expert: Option<Spread>,
    /// Training seconds.
    pub train_secs: Spread,
}

/// One paired gap over the seeds: `a − b` on one accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedGap {
    /// The first model.
    pub a: String,
    /// The second model.
    pub b: String,
    /// The accuracy: `SA`, `RA (<attack>)` or `worst-case RA`.
    pub what: String,
    /// Each seed's paired difference on its test images.
    pub per_seed: Vec<Paired>,
    /// The mean of those differences and their spread.
    pub difference: Spread,
    /// The standard error of the mean difference: the spread over √k, so it holds both the
    /// training noise and the test images' (0 for one seed).
    pub std_error: f64,
    /// A 95% interval of the mean difference (Student's t with k − 1 degrees of freedom);
    /// `None` for one seed.
    pub interval: Option<(f64, f64)>,
}

/// The header of a table of [`SeedGap::cells`].
pub const GAP_COLUMNS: [&str; 6] = [
    "models",
    "accuracy",
    "each seed: points (McNemar p)",
    "mean over seeds ± SE",
    "95% interval",
    "seeds the first is ahead / behind at p < 0.05",
];

impl SeedGap {
    /// Its cells as tables show them ([`GAP_COLUMNS`]): the models, the accuracy, each seed's
    /// difference in points with its McNemar p, the mean and its standard error over the seeds,
    /// the interval, and the seeds each side won.
    pub fn cells(&self) -> [String; 6] {
        let each: Vec<String> = self
            .per_seed
            .iter()
            .map(|p| format!("{:+.1} ({})", 100.0 * p.difference, format_p(p.p_value)))
            .collect();
        let interval = self.interval.map_or("–".into(), |(lo, hi)| {
            format!("{:+.1} to {:+.1}", 100.0 * lo, 100.0 * hi)
        });
        let (ahead, behind) = self.significant();
        [
            format!("{} − {}", self.a, self.b),
            self.what.clone(),
            each.join(", "),
            format!(
                "{:+.1} ± {:.1}",
                100.0 * self.difference.mean,
                100.0 * self.std_error
            ),
            interval,
            format!("{ahead} / {behind}"),
        ]
    }

    /// Seeds in which `a` was ahead, and in which it was behind, at McNemar p < 0.05.
    pub fn significant(&self) -> (usize, usize) {
        let sig = |p: &&Paired| p.p_value < 0.05;
        let ahead = self
            .per_seed
            .iter()
            .filter(sig)
            .filter(|p| p.difference > 0.0);
        let behind = self
            .per_seed
            .iter()
            .filter(sig)
            .filter(|p| p.difference < 0.0);
        (ahead.count(), behind.count())
    }
}

/// A comparison trained with several seeds, summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedSummary {
    /// The seeds, in the order given.
    pub seeds: Vec<u64>,
    /// The budget the comparisons share ([`Comparison::budget`], seed left out).
    pub budget: String,
    /// Their evaluation in words ([`crate::compare::evaluation_note`] of the first).
    pub evaluation: String,
    /// The models every comparison holds, in the first comparison's order.
    pub models: Vec<ModelSeeds>,
    /// Models some comparisons lack, left out.
    pub left_out: Vec<String>,
    /// AdvMoE's paired gaps to each other model (every pair without an `advmoe` row), on
    /// comparisons that recorded each image's outcomes; empty otherwise.
    pub gaps: Vec<SeedGap>,
}

impl SeedSummary {
    /// Summarise `comparisons`, the same comparison trained with different seeds.
    ///
    /// # Errors
    /// No comparison, a seed given twice, or two comparisons that differ in
    /// anything but their seeds (data, model, training, evaluation), named by the first setting
    /// that differs.
    pub fn of(comparisons: &[&Comparison]) -> Result<Self, String> {
        let Some(&first) = comparisons.first() else {
            return Err("no comparison to summarise".into());
        };
        let seeds: Vec<u64> = comparisons.iter().map(|c| c.base.train.seed).collect();
        for (i, seed) in seeds.iter().enumerate() {
            if let Some(earlier) = seeds[..i].iter().position(|s| s == seed) {
                return Err(format!(
                    "comparisons {} and {} were both trained with seed {seed}: a summary over \
                     seeds needs each seed once",
                    earlier + 1,
                    i + 1
                ));
            }
        }
        for (i, c) in comparisons.iter().enumerate().skip(1) {
            if let Some(path) = difference_beyond_seed(first, c) {
                return Err(format!(
                    "comparison {} differs from comparison 1 in {path}, not only in its seed: \
                     a summary over seeds needs the same budget and evaluation",
                    i + 1
                ));
            }
        }
        let row_of = |c: &Comparison, name: &str| c.rows.iter().find(|r| r.name == name).cloned();
        let mut models = Vec::new();
        let mut left_out = Vec::new();
        for name in first.rows.iter().map(|r| r.name.as_str()) {
            let rows: Option<Vec<CompareRow>> =
                comparisons.iter().map(|&c| row_of(c, name)).collect();
            match rows {
                Some(rows) => models.push(model_seeds(name, &rows)),
                None => left_out.push(name.to_string()),
            }
        }
        for &c in &comparisons[1..] {
            for r in &c.rows {
                if !first.rows.iter().any(|f| f.name == r.name) && !left_out.contains(&r.name) {
                    left_out.push(r.name.clone());
                }
            }
        }
        let kept = |c: &Comparison| -> Vec<CompareRow> {
            models.iter().filter_map(|m| row_of(c, &m.name)).collect()
        };
        let per_seed: Vec<_> = comparisons.iter().map(|&c| paired_rows(&kept(c))).collect();
        let mut gaps = Vec::new();
        for row in &per_seed[0] {
            let same =
                |p: &crate::compare::PairedRow| p.a == row.a && p.b == row.b && p.what == row.what;
            let each: Option<Vec<Paired>> = per_seed
                .iter()
                .map(|rows| rows.iter().find(|p| same(p)).map(|p| p.paired))
                .collect();
            let Some(each) = each else { continue };
            let difference = Spread::of(each.iter().map(|p| p.difference).collect());
            let k = each.len();
            let std_error = difference.sd / (k as f64).sqrt();
            let interval = (k > 1).then(|| {
                let half = student_t_975(k - 1) * std_error;
                (difference.mean - half, difference.mean + half)
            });
            gaps.push(SeedGap {
                a: row.a.clone(),
                b: row.b.clone(),
                what: row.what.clone(),
                per_seed: each,
                difference,
                std_error,
                interval,
            });
        }
        Ok(Self {
            seeds,
            budget: budget_without_seed(first),
            evaluation: crate::compare::evaluation_note(&first.rows),
            models,
            left_out,
            gaps,
        })
    }

    /// The summary as markdown: the budget, a table of the models and a table of the gaps.
    pub fn markdown(&self) -> String {
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut s = format!(
            "Seeds {} ({} runs of the same comparison): {}.\n\n",
            seeds.join(", "),
            self.seeds.len(),
            self.budget
        );
        let worst = self.models.iter().any(|m| m.worst_case.is_some());
        let attack = self
            .gaps
            .iter()
            .find(|g| g.what.starts_with("RA ("))
            .map_or("RA".to_string(), |g| g.what.clone());
        s.push_str(&format!("| model | SA % | {attack} % |"));
        if worst {
            s.push_str(" worst-case RA % |");
        }
        s.push_str(" router rob. % | busiest expert, layer 1 % | train s |\n|---|---|---|");
        if worst {
            s.push_str("---|");
        }
        s.push_str("---|---|---|\n");
        let opt = |v: &Option<Spread>| v.as_ref().map_or("–".into(), Spread::percent_cell);
        for m in &self.models {
            s.push_str(&format!(
                "| {} | {} | {} |",
                m.name,
                m.clean_acc.percent_cell(),
                m.robust_acc.percent_cell()
            ));
            if worst {
                s.push_str(&format!(" {} |", opt(&m.worst_case)));
            }
            s.push_str(&format!(
                " {} | {} | {} |\n",
                opt(&m.router_robustness),
                opt(&m.busiest_expert),
                m.train_secs.cell(1.0, 0)
            ));
        }
        s.push_str(&format!(
            "\nMean ± standard deviation over the seeds, then each seed's value in the order of \
             the seeds. {}\n",
            self.evaluation
        ));
        if !self.left_out.is_empty() {
            s.push_str(&format!(
                "Left out, since not every seed has them: {}.\n",
                self.left_out.join(", ")
            ));
        }
        if self.gaps.is_empty() {
            return s;
        }
        s.push_str(&format!(
            "\n| {} |\n{}\n",
            GAP_COLUMNS.join(" | "),
            "|---".repeat(GAP_COLUMNS.len()) + "|"
        ));
        for g in &self.gaps {
            s.push_str(&format!("| {} |\n", g.cells().join(" | ")));
        }
        s.push_str(
            "\nEach seed's difference is paired on its test images, and its McNemar p measures \
             only how the test images could have fallen. The standard error over the seeds is \
             the spread of those differences over √k: it holds the training noise too, and it \
             is the one to read a claim that one method beats another against. The interval \
             uses Student's t with k − 1 degrees of freedom, wide for a few seeds.\n",
        );
        s
    }
}

/// The first setting (`base.train.total_steps`, `eval.attack.steps`) in which `b` differs
/// from `a` other than the seed of its training and of its attacks; `None` when they are the
/// same comparison trained with another seed (or the same one).
pub fn difference_beyond_seed(a: &Comparison, b: &Comparison) -> Option<String> {
    first_difference(&settings(a), &settings(b), "")
}

/// A comparison's base configuration and evaluation with their seeds set to 0: what two seeds
/// of the same comparison share.
fn settings(c: &Comparison) -> Value {
    let (mut base, mut eval) = (c.base.clone(), c.eval.clone());
    base.train.seed = 0;
    eval.seed = 0;
    serde_json::json!({ "base": base, "eval": eval })
}

/// For each of `comparisons`, the summary over seeds of those that differ from it only in
/// their seed (the first of each seed, in the order given), when they hold two seeds or more;
/// `None` for a comparison with no other seed beside it. Each group is summarised once, and
/// its members share the summary.
pub fn summaries_over_seeds(comparisons: &[&Comparison]) -> Vec<Option<SeedSummary>> {
    let all: Vec<Value> = comparisons.iter().map(|&c| settings(c)).collect();
    let seed = |i: usize| comparisons[i].base.train.seed;
    let mut summarised: Vec<(Vec<usize>, Option<SeedSummary>)> = Vec::new();
    (0..comparisons.len())
        .map(|i| {
            let mut group: Vec<usize> = Vec::new();
            for j in 0..comparisons.len() {
                if all[j] == all[i] && !group.iter().any(|&g| seed(g) == seed(j)) {
                    group.push(j);
                }
            }
            if group.len() < 2 {
                return None;
            }
            if let Some((_, summary)) = summarised.iter().find(|(g, _)| *g == group) {
                return summary.clone();
            }
            let members: Vec<&Comparison> = group.iter().map(|&j| comparisons[j]).collect();
            let summary = SeedSummary::of(&members).ok();
            summarised.push((group, summary.clone()));
            summary
        })
        .collect()
}

/// A model's [`ModelSeeds`] from its row in each comparison.
fn model_seeds(name: &str, rows: &[CompareRow]) -> ModelSeeds {
    let all = |f: &dyn Fn(&CompareRow) -> Option<f64>| -> Option<Spread> {
        rows.iter()
            .map(f)
            .collect::<Option<Vec<f64>>>()
            .map(Spread::of)
    };
    let busiest = |r: &CompareRow| -> Option<f64> {
        let load = r.report.expert_load.first().filter(|_| r.experts > 1)?;
        load.iter().copied().reduce(f64::max)
    };
    ModelSeeds {
        name: name.to_string(),
        clean_acc: Spread::of(rows.iter().map(|r| r.report.clean_acc).collect()),
        robust_acc: Spread::of(rows.iter().map(|r| r.report.robust_acc).collect()),
        worst_case: all(&|r| r.report.worst_case.as_ref().map(|w| w.robust_acc)),
        router_robustness: all(&|r| r.report.router_robustness),
        busiest_expert: all(&busiest),
        train_secs: Spread::of(rows.iter().map(|r| r.train_secs).collect()),
    }
}

/// [`Comparison::budget`] without its closing seed.
fn budget_without_seed(c: &Comparison) -> String {
    let budget = c.budget();
    match budget.rfind("; seed ") {
        Some(at) => budget[..at].to_string(),
        None => budget,
    }
}

/// The path (`base.train.batch_size`, `eval.worst_case[1]`) of the first place where `a` and
/// `b` differ, or `None` when they are equal.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    let here = |p: &str| {
        if p.is_empty() {
            "the whole".to_string()
        } else {
            p.to_string()
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, va) in x {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match y.get(key) {
                    Some(vb) => {
                        if let Some(found) = first_difference(va, vb, &p) {
                            return Some(found);
                        }
                    }
                    None => return Some(p),
                }
            }
            y.keys().find(|k| !x.contains_key(*k)).map(|k| {
                if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                }
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(here(path));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (va, vb))| first_difference(va, vb, &format!("{path}[{i}]")))
        }
        _ => (a != b).then(|| here(path)),
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (at least 1): exact to three
/// decimals up to 10, a Cornish–Fisher expansion around the normal quantile above.
pub fn student_t_975(df: usize) -> f64 {
    const TABLE: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    if (1..=10).contains(&df) {
        return TABLE[df - 1];
    }
    let (z, v) = (1.959_964f64, df.max(1) as f64);
    z + (z.powi(3) + z) / (4.0 * v)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
}
