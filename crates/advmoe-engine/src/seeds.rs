//! The same comparison trained with several seeds, summarised: each model's figures as a mean
//! and spread over the seeds, and AdvMoE's paired gaps to the other models seed by seed, with a
//! standard error that holds the training noise.
//!
//! A single comparison's paired test ([`crate::paired`]) measures how much a gap could move with
//! other test images, not with another training run. Two models trained again with another seed
//! can trade places (vanilla MoE AT's router collapses onto whichever expert wins early, and may
//! switch later), so a claim that one method beats another needs the gap of every seed. The
//! summary refuses comparisons that differ in anything but their seeds.
//!
//! A model trained another way (AdvMoE with another router objective, say) joins the summary as
//! an [`Added`] model: the one row of another comparison per seed, measured on the same images
//! with the same attacks, paired with each of that seed's models.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compare::{CompareRow, Comparison, paired_pair, paired_rows};
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

    /// `mean ± sd (v1, v2, …)`, scaled; only the value when there is one.
    fn cell(&self, scale: f64, decimals: usize) -> String {
        if let [one] = self.values.as_slice() {
            return format!("{:.decimals$}", scale * one);
        }
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
        // One seed has no spread over seeds: its ± is the test images' paired standard error.
        let std_error = match self.per_seed.as_slice() {
            [one] => one.std_error,
            _ => self.std_error,
        };
        [
            format!("{} − {}", self.a, self.b),
            self.what.clone(),
            each.join(", "),
            format!(
                "{:+.1} ± {:.1}",
                100.0 * self.difference.mean,
                100.0 * std_error
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
    /// AdvMoE's paired gaps to each other model (every pair without an `advmoe` row), then each
    /// added model's to each of the comparisons' models, on comparisons that recorded each
    /// image's outcomes; empty otherwise.
    pub gaps: Vec<SeedGap>,
    /// Models trained another way and set beside the comparisons' own ([`Added`]), in the order
    /// given; their figures are among `models`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<AddedModel>,
}

/// A model trained another way, to set beside the comparisons' own: the one row of another
/// `advmoe compare` run (`--models <one>`), trained with the seed of one of the comparisons and
/// measured on the same test images with the same attacks, so that it pairs image by image
/// with that seed's models.
#[derive(Debug, Clone, Copy)]
pub struct Added<'a> {
    /// Its name in the summary (none of the comparisons' models may have it).
    pub name: &'a str,
    /// The comparison it was trained in, with one row.
    pub comparison: &'a Comparison,
}

/// A model set beside the comparisons' own, and what its training changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddedModel {
    /// Its name in the summary.
    pub name: String,
    /// The row's name in its own comparison: which of compare's models it is.
    pub row: String,
    /// The settings in which its comparisons differ from the summarised ones, seeds aside, as
    /// paths into compare.json (`base.train.router_objective`).
    pub differs_in: Vec<String>,
}

impl SeedSummary {
    /// Summarise `comparisons`, the same comparison trained with different seeds.
    ///
    /// # Errors
    /// No comparison, a seed given twice, or two comparisons that differ in
    /// anything but their seeds (data, model, training, evaluation), named by the first setting
    /// that differs.
    pub fn of(comparisons: &[&Comparison]) -> Result<Self, String> {
        Self::with_added(comparisons, &[])
    }

    /// [`SeedSummary::of`], with models trained another way set beside the comparisons' own:
    /// each [`Added`] model joins the seed it was trained with, its figures over its seeds join
    /// the models' table, and its paired gaps to each of the comparisons' models, seed by seed,
    /// join the gaps. An added name missing from some seed is left out like a model that some
    /// comparisons lack.
    ///
    /// # Errors
    /// Those of [`SeedSummary::of`]; and an added model whose comparison holds more or less
    /// than one row, whose name is one of the comparisons' models, whose seed none of the
    /// comparisons has or that it gives twice, that was measured otherwise than its seed's
    /// comparison (data, test images, attacks), or whose comparisons differ among themselves in
    /// more than their seeds.
    pub fn with_added(comparisons: &[&Comparison], added: &[Added]) -> Result<Self, String> {
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
        let at_seed = check_added(comparisons, added)?;
        let added_row = |seed: usize, name: &str| -> Option<CompareRow> {
            let a = at_seed[seed].iter().find(|a| a.name == name)?;
            let mut row = a.comparison.rows[0].clone();
            row.name = name.to_string();
            Some(row)
        };
        let mut added_models: Vec<AddedModel> = Vec::new();
        for (i, a) in added.iter().enumerate() {
            if added[..i].iter().any(|b| b.name == a.name) {
                continue;
            }
            let rows: Option<Vec<CompareRow>> = (0..comparisons.len())
                .map(|k| added_row(k, a.name))
                .collect();
            let Some(rows) = rows else {
                left_out.push(a.name.to_string());
                continue;
            };
            models.push(model_seeds(a.name, &rows));
            let mut differs_in = Vec::new();
            differences(
                &settings(first),
                &settings(a.comparison),
                "",
                &mut differs_in,
            );
            added_models.push(AddedModel {
                name: a.name.to_string(),
                row: a.comparison.rows[0].name.clone(),
                differs_in,
            });
        }
        let base_models = models.len() - added_models.len();
        let per_seed: Vec<_> = comparisons
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                let base: Vec<CompareRow> = models[..base_models]
                    .iter()
                    .filter_map(|m| row_of(c, &m.name))
                    .collect();
                let mut paired = paired_rows(&base);
                for a in &added_models {
                    if let Some(row) = added_row(k, &a.name) {
                        paired.extend(base.iter().flat_map(|b| paired_pair(&row, b)));
                    }
                }
                paired
            })
            .collect();
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
            added: added_models,
        })
    }

    /// The summary as markdown: the budget, a table of the models and a table of the gaps.
    pub fn markdown(&self) -> String {
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let mut s = match seeds.as_slice() {
            [one] => format!(
                "Seed {one} (one run of the comparison): {}.\n\n",
                self.budget
            ),
            _ => format!(
                "Seeds {} ({} runs of the same comparison): {}.\n\n",
                seeds.join(", "),
                self.seeds.len(),
                self.budget
            ),
        };
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
        if self.seeds.len() == 1 {
            s.push_str(&format!("\n{}\n", self.evaluation));
        } else {
            s.push_str(&format!(
                "\nMean ± standard deviation over the seeds, then each seed's value in the order \
                 of the seeds. {}\n",
                self.evaluation
            ));
        }
        if !self.left_out.is_empty() {
            s.push_str(&format!(
                "Left out, since not every seed has them: {}.\n",
                self.left_out.join(", ")
            ));
        }
        for a in &self.added {
            let changed: Vec<String> = a.differs_in.iter().map(|p| format!("`{p}`")).collect();
            s.push_str(&format!(
                "Set beside them: {}, the {} model of its own comparison{}, trained with the same \
                 seed and measured on the same images with the same attacks; {}.\n",
                a.name,
                a.row,
                if self.seeds.len() > 1 { "s" } else { "" },
                if changed.is_empty() {
                    "its comparison's settings are these".to_string()
                } else {
                    format!("its settings differ in {}", changed.join(", "))
                }
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
        if self.seeds.len() == 1 {
            s.push_str(
                "\nThe difference is paired on the test images, and its ± and McNemar p measure \
                 only how the test images could have fallen: one seed holds no training noise, \
                 and another seed can turn a gap over (train more seeds to read a claim that one \
                 method beats another).\n",
            );
        } else {
            s.push_str(
                "\nEach seed's difference is paired on its test images, and its McNemar p \
                 measures only how the test images could have fallen. The standard error over the \
                 seeds is the spread of those differences over √k: it holds the training noise \
                 too, and it is the one to read a claim that one method beats another against. \
                 The interval uses Student's t with k − 1 degrees of freedom, wide for a few \
                 seeds.\n",
            );
        }
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
/// its members share the summary. One-model comparisons trained another way but with the
/// group's seeds and measured as it was join it as [`Added`] models ([`companions`]).
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
            let beside = companions(comparisons, &group, &all);
            let added: Vec<Added> = beside
                .iter()
                .map(|(name, j)| Added {
                    name,
                    comparison: comparisons[*j],
                })
                .collect();
            let summary = SeedSummary::with_added(&members, &added)
                .or_else(|_| SeedSummary::of(&members))
                .ok();
            summarised.push((group, summary.clone()));
            summary
        })
        .collect()
}

/// The comparisons to set beside `group` (indices into `comparisons`, whose [`settings`] are
/// `all`) as [`Added`] models, each with its name: those that pair with one of the group's
/// members ([`pairing_member`]) but were trained otherwise than the group; the first of each seed for each way of training. The name is the row's with
/// the first setting that changed and its value (`advmoe, router objective robust`).
fn companions(comparisons: &[&Comparison], group: &[usize], all: &[Value]) -> Vec<(String, usize)> {
    let first = &all[group[0]];
    let members: Vec<&Comparison> = group.iter().map(|&g| comparisons[g]).collect();
    let mut out: Vec<(String, usize, &Value)> = Vec::new();
    for (j, c) in comparisons.iter().enumerate() {
        if all[j] == *first || pairing_member(&members, "", c).is_err() {
            continue;
        }
        let same_way: Vec<&(String, usize, &Value)> =
            out.iter().filter(|(_, _, v)| **v == all[j]).collect();
        if same_way
            .iter()
            .any(|(_, k, _)| comparisons[*k].base.train.seed == c.base.train.seed)
        {
            continue;
        }
        let name = match same_way.first() {
            Some((name, _, _)) => name.clone(),
            None => companion_name(&c.rows[0].name, first, &all[j]),
        };
        out.push((name, j, &all[j]));
    }
    out.into_iter().map(|(name, j, _)| (name, j)).collect()
}

/// `row`, then the first setting in which `other` differs from `first` and its value there
/// (`advmoe, router objective robust`), with `…` when more differ.
fn companion_name(row: &str, first: &Value, other: &Value) -> String {
    let mut paths = Vec::new();
    differences(first, other, "", &mut paths);
    let Some(path) = paths.first() else {
        return format!("{row}, again");
    };
    let leaf = path.rsplit('.').next().unwrap_or(path).replace('_', " ");
    let pointer = format!("/{}", path.replace(['.', '['], "/").replace(']', ""));
    let value = match other.pointer(&pointer) {
        Some(Value::String(v)) => v.clone(),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        _ => "changed".to_string(),
    };
    let more = if paths.len() > 1 { " …" } else { "" };
    format!("{row}, {leaf} {value}{more}")
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
    let mut found = Vec::new();
    differences(a, b, path, &mut found);
    found.into_iter().next()
}

/// Append to `out` the path of every place where `a` and `b` differ: a key only one of them
/// has, an array of another length, or another value.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, va) in x {
                match y.get(key) {
                    Some(vb) => differences(va, vb, &join(key), out),
                    None => out.push(join(key)),
                }
            }
            out.extend(y.keys().filter(|k| !x.contains_key(*k)).map(|k| join(k)));
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(va, vb, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(if path.is_empty() {
            "the whole".to_string()
        } else {
            path.to_string()
        }),
        _ => {}
    }
}

/// What decides which test images a comparison measured and how: its data and its evaluation,
/// without the measurements that leave each image's outcomes as they are (the ε-curves, the
/// released evaluation, the routes forced to the partition).
fn measured(c: &Comparison) -> Value {
    let mut eval = c.eval.clone();
    eval.eps_sweep.clear();
    eval.released_eval = false;
    eval.partition_routes = false;
    serde_json::json!({ "data": c.base.data, "eval": eval })
}

/// The index of the one of `comparisons` that the comparison `c` of the model called `name`
/// pairs with: the one trained with its seed, when `c` holds one row and was measured as that
/// one was ([`measured`]: the same data, test images and attacks).
///
/// # Errors
/// `c` with more or less than one row, with a seed none of `comparisons` has, or measured
/// otherwise, named by the first setting that differs.
fn pairing_member(
    comparisons: &[&Comparison],
    name: &str,
    c: &Comparison,
) -> Result<usize, String> {
    let seed = c.base.train.seed;
    if c.rows.len() != 1 {
        let names: Vec<&str> = c.rows.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "added model {name:?} (seed {seed}): its comparison holds {} models ({}); an added \
             model is the one model of a `compare --models <one>` run",
            c.rows.len(),
            names.join(", ")
        ));
    }
    let Some(k) = comparisons.iter().position(|b| b.base.train.seed == seed) else {
        let seeds: Vec<String> = comparisons
            .iter()
            .map(|b| b.base.train.seed.to_string())
            .collect();
        return Err(format!(
            "added model {name:?} was trained with seed {seed}, and no comparison was (seeds {}): \
             it pairs only with its own seed's models",
            seeds.join(", ")
        ));
    };
    if let Some(path) = first_difference(&measured(comparisons[k]), &measured(c), "") {
        return Err(format!(
            "added model {name:?} (seed {seed}) was measured otherwise than comparison {}: \
             {path} differs, and paired figures need the same test images and attacks",
            k + 1
        ));
    }
    Ok(k)
}

/// The [`Added`] models by the comparison whose seed each was trained with, checked as
/// [`SeedSummary::with_added`] says.
fn check_added<'a>(
    comparisons: &[&Comparison],
    added: &[Added<'a>],
) -> Result<Vec<Vec<Added<'a>>>, String> {
    let mut at_seed: Vec<Vec<Added>> = vec![Vec::new(); comparisons.len()];
    for (i, a) in added.iter().enumerate() {
        let (name, c) = (a.name, a.comparison);
        let seed = c.base.train.seed;
        let k = pairing_member(comparisons, name, c)?;
        if comparisons
            .iter()
            .any(|b| b.rows.iter().any(|r| r.name == name))
        {
            return Err(format!(
                "added model {name:?} has the name of one of the comparisons' models: give it \
                 another"
            ));
        }
        if at_seed[k].iter().any(|b| b.name == name) {
            return Err(format!(
                "added model {name:?} is given twice with seed {seed}"
            ));
        }
        if let Some(earlier) = added[..i].iter().find(|b| b.name == name)
            && let Some(path) = difference_beyond_seed(earlier.comparison, c)
        {
            return Err(format!(
                "added model {name:?}: its comparisons with seeds {} and {seed} differ in \
                 {path}, not only in their seeds",
                earlier.comparison.base.train.seed
            ));
        }
        at_seed[k].push(*a);
    }
    Ok(at_seed)
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
