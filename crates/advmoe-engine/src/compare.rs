//! The AdvMoE paper's comparison as one procedure: dense TRADES at full and at same-cost width,
//! an MoE trained with vanilla MoE AT (without and with the balance term), and an MoE trained
//! with AdvMoE, all with the same data, steps and optimiser, evaluated with the same attacks.
//!
//! With an output folder the comparison is resumable: each finished model leaves
//! `<out>/<name>/row.json` beside its weights, and a later call with the same configuration
//! takes that row instead of training the model again; with another evaluation it measures the
//! saved weights again, keeping the row's training record. The model in progress is checkpointed
//! in `<out>/<name>/checkpoint/` every [`CHECKPOINT_SECS`] of training, when the comparison is
//! stopped, and when its training ends; its evaluation saves its progress there too (every
//! [`CHECKPOINT_SECS`] and when stopped). A cut run loses at most those seconds, and a later
//! call continues it with exactly the steps and measurements of the uninterrupted run.

use std::path::Path;
use std::sync::Arc;

use advmoe_core::{BnPasses, EvalReport, MethodKind, count_macs};
use advmoe_data::{Dataset, ImageSet};
use advmoe_model::MoeNet;
use advmoe_model::checkpoint::{CheckpointError, load_model};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::eval::images_to_evaluate;
use crate::paired::{Paired, format_p};
pub use crate::robust::Counted;
use crate::robust::attack_name;
use crate::robust::{EvalProgress, Evaluation, RobustOptions, RobustReport, evaluate_robust_from};
use crate::robust::{PartitionRoutes, headline_label, released_attack, released_robust_acc};
use crate::run::{CheckpointSource, EngineError, Run, RunConfig, RunState, now_secs, write_files};

/// One model of the comparison.
#[derive(Debug, Clone)]
pub struct CompareEntry {
    /// Short name (also the sub-folder its model is saved in).
    pub name: String,
    /// Its run.
    pub config: RunConfig,
}

/// The models compared, derived from `base` (whose model is the MoE: N experts, ratio r; its
/// training spec, data and balance weight are shared):
/// 1. `dense-full-trades`: N = 1, r = 1, TRADES;
/// 2. `dense-same-cost-trades`: N = 1, r as the MoE (the cost of one MoE pathway), TRADES;
/// 3. `moe-at`: the MoE with vanilla MoE AT and no balance term (the paper's baseline);
/// 4. `moe-at-balanced`: the same with the balance term (when `base.balance_weight > 0`);
/// 5. `advmoe`: the MoE with AdvMoE (router objective from `base.train`).
pub fn compare_entries(base: &RunConfig) -> Vec<CompareEntry> {
    let with = |name: &str, method: MethodKind, experts: usize, ratio: f64, balance: f64| {
        let mut config = base.clone();
        config.model.num_experts = experts;
        config.model.ratio = ratio;
        config.train.method = method;
        config.balance_weight = balance;
        CompareEntry {
            name: name.to_string(),
            config,
        }
    };
    let n = base.model.num_experts.max(2);
    let r = base.model.ratio;
    let mut entries = vec![
        with("dense-full-trades", MethodKind::Trades, 1, 1.0, 0.0),
        with("dense-same-cost-trades", MethodKind::Trades, 1, r, 0.0),
        with("moe-at", MethodKind::MoeAt, n, r, 0.0),
    ];
    if base.balance_weight > 0.0 {
        entries.push(with(
            "moe-at-balanced",
            MethodKind::MoeAt,
            n,
            r,
            base.balance_weight,
        ));
    }
    entries.push(with(
        "advmoe",
        MethodKind::Advmoe,
        n,
        r,
        base.balance_weight,
    ));
    entries
}

/// One row of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareRow {
    /// Entry name.
    pub name: String,
    /// Training method.
    pub method: MethodKind,
    /// Experts.
    pub experts: usize,
    /// Width ratio.
    pub ratio: f64,
    /// Balance-term weight.
    pub balance_weight: f64,
    /// Multiply-accumulates of one pathway (conv + linear), without the router.
    pub macs_pathway: u64,
    /// The same with the router.
    pub macs_pathway_with_router: u64,
    /// Training steps.
    pub steps: usize,
    /// Training wall-clock seconds.
    pub train_secs: f64,
    /// Everything measured on the test split.
    pub report: RobustReport,
    /// Clean accuracy and expert load on the run's evaluation subset every `eval_every` steps
    /// (the training curves).
    #[serde(default)]
    pub history: Vec<EvalReport>,
    /// Robust accuracy and router robustness on the first `robust_eval_size` test images at each
    /// of those evaluations, when the entry's training spec asks for them (the robust training
    /// curves; empty otherwise).
    #[serde(default)]
    pub robust_history: Vec<RobustPoint>,
}

/// One point of a robust training curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RobustPoint {
    /// Optimiser steps done when measured.
    pub step: usize,
    /// Test images attacked.
    pub images: usize,
    /// Robust accuracy under the run's progress attack (PGD-10 at 8/255).
    pub robust_acc: f64,
    /// Routes kept under the progress router attack (MoE models).
    pub router_robustness: Option<f64>,
}

/// A finished model's row as saved in `<out>/<name>/row.json`, with the configuration and
/// evaluation it was made with (a resumed comparison reuses it only when both match).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedRow {
    config: RunConfig,
    eval: serde_json::Value,
    row: CompareRow,
}

const ROW_FILE: &str = "row.json";
/// The sub-folder of `<out>/<name>` that holds the run checkpoint of a model in progress.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The robust training curve so far, saved in the same commit as the run checkpoint.
const CURVES_FILE: &str = "curves.json";
/// An evaluation in progress ([`SavedEval`]), saved beside the checkpoint.
const EVAL_FILE: &str = "eval.json";
/// Seconds of training between two checkpoints of the model in progress.
pub const CHECKPOINT_SECS: f64 = 300.0;
/// The weights [`Run::save_model`] writes beside it.
const MODEL_FILE: &str = "model.safetensors";

/// A whole comparison as `advmoe compare` writes it to `compare.json`: the base configuration
/// every model was derived from, the evaluation they were all measured with, and their rows.
/// The app's report view reads it back to show a comparison run elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The base configuration ([`compare_entries`] derives each model from it).
    pub base: RunConfig,
    /// The evaluation of every model.
    pub eval: RobustOptions,
    /// The models' rows, in the order they were trained.
    pub rows: Vec<CompareRow>,
}

impl Comparison {
    /// Read a `compare.json`.
    ///
    /// # Errors
    /// Bytes that are not a comparison, with serde's description of where.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The budget every model shared, in words: data, model, optimiser, batch, steps, the
    /// training attack and loss weights, seed.
    pub fn budget(&self) -> String {
        let (m, t, d) = (&self.base.model, &self.base.train, &self.base.data);
        // Only a file or folder's own name: a path of the machine that ran it says nothing here.
        let data = d.data_dir.as_deref().map_or_else(
            || d.kind.to_string(),
            |dir| {
                let name = dir.trim_end_matches(['/', '\\']).rsplit(['/', '\\']).next();
                format!("{} ({})", d.kind, name.unwrap_or(dir))
            },
        );
        let steps = self
            .rows
            .iter()
            .map(|r| r.steps)
            .max()
            .unwrap_or(t.total_steps);
        format!(
            "data {data}; {} depth {}, base width {}, N = {}, r = {}, {} router; {} at lr {} \
             ({}), batch {}, {} steps; training attack {} × {:.1}/255 within ε = {:.1}/255{}, \
             β = {}; AdvMoE's router objective \
             {} (α = {}, warm-up {}{}{}), balance weight {}; seed {}",
            m.arch,
            m.depth,
            m.width,
            m.num_experts,
            m.ratio,
            m.router,
            t.optimizer,
            t.lr,
            t.schedule,
            t.batch_size,
            steps,
            t.attack.steps,
            t.attack.step_size * 255.0,
            t.attack.eps * 255.0,
            if t.attack.through_gates {
                " through the gates"
            } else {
                ""
            },
            t.beta,
            t.router_objective,
            t.alpha,
            t.router_kl_warmup,
            // Named only when it is not the released code's (the experts' rate).
            if t.router_lr_scale == 1.0 {
                String::new()
            } else {
                format!(", router lr × {}", t.router_lr_scale)
            },
            if t.bn_passes == BnPasses::Own {
                String::new()
            } else {
                format!(", batch-norm passes {}", t.bn_passes)
            },
            self.base.balance_weight,
            t.seed
        )
    }
}

/// The attacks behind a comparison's figures, in words (from the rows' own reports): the RA
/// attack, ε and test subset, the worst case's attacks, the router attack. Empty without rows.
pub fn evaluation_note(rows: &[CompareRow]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let a = &first.report.attack;
    let mut s = format!(
        "RA: {} at ε = {:.1}/255 on {} test images",
        crate::robust::attack_name(a),
        a.eps * 255.0,
        first.report.images
    );
    if let Some(worst) = rows.iter().find_map(|r| r.report.worst_case.as_ref()) {
        let names: Vec<&str> = worst.each.iter().map(|(name, _)| name.as_str()).collect();
        s.push_str(&format!(
            "; worst-case RA: per image, over {}",
            names.join(", ")
        ));
    }
    if rows.iter().any(|r| r.report.released_robust_acc.is_some()) {
        s.push_str(&format!(
            "; {RELEASED_LABEL}: {} at the same ε on the same images, as the AdvMoE paper's \
             released code evaluates (weaker on a live router: not a robustness figure)",
            crate::robust::attack_name(&released_attack(a))
        ));
    }
    if let Some(router) = rows.iter().find_map(|r| r.report.router_attack.as_ref()) {
        s.push_str(&format!(
            "; router robustness: routes kept under {}",
            crate::robust::router_attack_name(router)
        ));
    }
    s.push('.');
    s
}

/// The row saved in `dir` by a model trained with `config` (measured with any evaluation).
fn saved_row(dir: &Path, config: &RunConfig) -> Option<SavedRow> {
    let bytes = std::fs::read(dir.join(ROW_FILE)).ok()?;
    let saved: SavedRow = serde_json::from_slice(&bytes).ok()?;
    same_training(&saved.config, config).then_some(saved)
}

/// Whether `config` trains the model `saved` trained: the two agree but perhaps for
/// `train.eval_size`, which only sets how many test images the training curves' clean points
/// use (the weights do not depend on it; the CLI's `--eval-size` sets it with the evaluation's
/// subset). So a comparison asked for on another test subset measures the saved models again
/// instead of training them again; their curves keep the subset they were measured on.
fn same_training(saved: &RunConfig, config: &RunConfig) -> bool {
    let mut saved = saved.clone();
    saved.train.eval_size = config.train.eval_size;
    saved == *config
}

/// Write `row.json` into `dir`: `row`, made with `config` and measured with `eval`.
fn save_row(
    dir: &Path,
    config: &RunConfig,
    eval: &serde_json::Value,
    row: &CompareRow,
) -> Result<(), EngineError> {
    let saved = SavedRow {
        config: config.clone(),
        eval: eval.clone(),
        row: row.clone(),
    };
    let path = dir.join(ROW_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&saved).unwrap_or_default())
        .map_err(|source| EngineError::Checkpoint(CheckpointError::Io { path, source }))
}

/// What the comparison is doing, for progress displays.
#[derive(Debug, Clone)]
pub enum CompareEvent<'a> {
    /// Training of entry `index` (of `total`) begins.
    Training {
        /// Entry.
        entry: &'a CompareEntry,
        /// Its position.
        index: usize,
        /// Entries in all.
        total: usize,
    },
    /// Training continues from a checkpoint of a cut comparison, after this many steps.
    Resumed {
        /// Steps already done.
        step: usize,
    },
    /// A training step finished.
    Step {
        /// Steps done.
        done: usize,
        /// Steps in the run.
        of: usize,
    },
    /// Evaluation progress (images done of total).
    Evaluating {
        /// Images done.
        done: usize,
        /// Images in all.
        of: usize,
    },
    /// An entry is done.
    Done(&'a CompareRow),
}

/// Train and evaluate every entry in turn. Models are saved under `out/<name>` when `out` is
/// given. `stop()` is polled between steps: when it returns true the comparison ends with the
/// rows finished so far.
pub async fn run_comparison(
    entries: &[CompareEntry],
    dataset: Arc<Dataset>,
    device: &Device,
    eval: &RobustOptions,
    out: Option<&Path>,
    on_event: &mut dyn FnMut(CompareEvent<'_>),
    stop: &dyn Fn() -> bool,
) -> Result<Vec<CompareRow>, EngineError> {
    let mut rows = Vec::new();
    // The released evaluation's figure is added to a row without measuring the rest again, so
    // asking for it does not change the key saved rows are matched by.
    let mut eval_key = serde_json::to_value(eval).unwrap_or_default();
    if let Some(key) = eval_key.as_object_mut() {
        key.remove("released_eval");
    }
    let measurer = Measurer {
        test: &dataset.test,
        eval,
        eval_key: &eval_key,
        device,
        stop,
    };
    for (index, entry) in entries.iter().enumerate() {
        on_event(CompareEvent::Training {
            entry,
            index,
            total: entries.len(),
        });
        let dir = out.map(|o| o.join(&entry.name));
        let saved = dir
            .as_deref()
            .and_then(|d| Some((d, saved_row(d, &entry.config)?)));
        let checkpoint = dir.as_ref().map(|d| d.join(CHECKPOINT_DIR));
        if let Some((dir, saved)) = saved {
            let load = || {
                load_model(
                    &dir.join(MODEL_FILE),
                    &entry.config.model,
                    &device.clone().autodiff(),
                )
            };
            // The saved weights, once loaded (for a new evaluation or the released figure).
            let (mut row, loaded) = if saved.eval == eval_key {
                (saved.row, None)
            } else {
                // Trained with this configuration, measured with another evaluation: measure
                // the saved model again instead of training it again.
                let model = load()?;
                let Some(report) = measurer
                    .measure(&model, &entry.config, checkpoint.as_deref(), on_event)
                    .await?
                else {
                    return Ok(rows);
                };
                let row = CompareRow {
                    report,
                    ..saved.row
                };
                // The configuration it was trained with, curves' subset included.
                save_row(dir, &saved.config, &eval_key, &row)?;
                remove_checkpoint(checkpoint.as_deref());
                (row, Some(model))
            };
            if row.report.released_robust_acc.is_none() && eval.released_eval {
                let model = match loaded {
                    Some(model) => model,
                    None => load()?,
                };
                if !measurer.add_released(&model, &mut row, on_event).await? {
                    return Ok(rows);
                }
                save_row(dir, &saved.config, &eval_key, &row)?;
            }
            on_event(CompareEvent::Done(&row));
            rows.push(row);
            continue;
        }
        let resumed = match &checkpoint {
            Some(c) => resume(c, &entry.config, &dataset, device)?,
            None => None,
        };
        let (mut run, mut robust_history) = match resumed {
            Some((run, curve)) => {
                on_event(CompareEvent::Resumed {
                    step: run.step_index(),
                });
                (run, curve)
            }
            None => (
                Run::new(entry.config.clone(), dataset.clone(), device)?,
                Vec::new(),
            ),
        };
        let total = entry.config.train.total_steps;
        let mut stopped = stop();
        let mut saved_at = (run.step_index(), now_secs());
        while !stopped && run.state() == RunState::Running {
            let start = run.step_index();
            let advance = run
                .advance(10, &mut |taken| {
                    on_event(CompareEvent::Step {
                        done: start + taken,
                        of: total,
                    });
                    stopped = stop();
                    !stopped
                })
                .await?;
            if let (Some(eval), Some(robust)) = (&advance.eval, &advance.robust) {
                robust_history.push(RobustPoint {
                    step: eval.step,
                    images: robust.images,
                    robust_acc: robust.robust_acc,
                    router_robustness: robust.router_robustness,
                });
            }
            let finished = run.state() != RunState::Running;
            if let Some(checkpoint) = &checkpoint
                && run.step_index() > saved_at.0
                && (stopped || finished || now_secs() - saved_at.1 >= CHECKPOINT_SECS)
            {
                save_checkpoint(&mut run, &robust_history, checkpoint).await?;
                saved_at = (run.step_index(), now_secs());
            }
        }
        if stopped {
            return Ok(rows);
        }
        if let Some(dir) = &dir {
            run.save_model(dir).await?;
        }
        let Some(report) = measurer
            .measure(run.model(), &entry.config, checkpoint.as_deref(), on_event)
            .await?
        else {
            return Ok(rows);
        };
        let mut row = CompareRow {
            robust_history,
            ..compare_row(entry, &run, report)
        };
        if let Some(dir) = &dir {
            save_row(dir, &entry.config, &eval_key, &row)?;
        }
        remove_checkpoint(checkpoint.as_deref());
        if eval.released_eval {
            // Stopped here, the row is saved without it, and the next call adds it.
            if !measurer
                .add_released(run.model(), &mut row, on_event)
                .await?
            {
                return Ok(rows);
            }
            if let Some(dir) = &dir {
                save_row(dir, &entry.config, &eval_key, &row)?;
            }
        }
        on_event(CompareEvent::Done(&row));
        rows.push(row);
    }
    Ok(rows)
}

/// The row holds everything now: a leftover checkpoint would only be stale.
fn remove_checkpoint(checkpoint: Option<&Path>) {
    if let Some(checkpoint) = checkpoint {
        std::fs::remove_dir_all(checkpoint).ok();
    }
}

/// An evaluation in progress as saved in `<checkpoint>/eval.json`: the configuration its model
/// was trained with and the evaluation (each as the comparison keys them), and how far it got.
#[derive(Serialize, Deserialize)]
struct SavedEval {
    config: RunConfig,
    eval: serde_json::Value,
    progress: EvalProgress,
}

/// What every model of a comparison is measured with.
struct Measurer<'a> {
    test: &'a ImageSet,
    eval: &'a RobustOptions,
    eval_key: &'a serde_json::Value,
    device: &'a Device,
    stop: &'a dyn Fn() -> bool,
}

impl Measurer<'_> {
    /// Measure `model`, trained with `config`. With a `checkpoint` folder the evaluation
    /// continues one saved there for this model and evaluation, and saves its progress there
    /// every [`CHECKPOINT_SECS`] and when stopped. `None`: stopped.
    async fn measure(
        &self,
        model: &MoeNet,
        config: &RunConfig,
        checkpoint: Option<&Path>,
        on_event: &mut dyn FnMut(CompareEvent<'_>),
    ) -> Result<Option<RobustReport>, EngineError> {
        let from = match checkpoint {
            Some(c) => self.saved_progress(c, config)?,
            None => None,
        };
        let of = images_to_evaluate(self.eval.limit, self.test.len());
        // Said at once, before the first batch's progress.
        on_event(CompareEvent::Evaluating {
            done: from.as_ref().map_or(0, |p| p.done),
            of,
        });
        let mut saved_at = now_secs();
        let mut failed = None;
        let on_batch = &mut |progress: &EvalProgress| {
            on_event(CompareEvent::Evaluating {
                done: progress.done,
                of,
            });
            let stopped = (self.stop)();
            if let Some(c) = checkpoint
                && (stopped || now_secs() - saved_at >= CHECKPOINT_SECS)
            {
                let saved = SavedEval {
                    config: config.clone(),
                    eval: self.eval_key.clone(),
                    progress: progress.clone(),
                };
                let bytes = serde_json::to_vec(&saved).unwrap_or_default();
                if let Err(e) = write_files(c, &[(EVAL_FILE, bytes)]) {
                    failed = Some(e);
                    return false;
                }
                saved_at = now_secs();
            }
            !stopped
        };
        let evaluation =
            evaluate_robust_from(model, self.test, self.eval, self.device, from, on_batch).await?;
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(match evaluation {
            Evaluation::Done(report) => Some(*report),
            Evaluation::Stopped(_) => None,
        })
    }

    /// Measure `model` under the released evaluation's attack into `row`; false: stopped.
    async fn add_released(
        &self,
        model: &MoeNet,
        row: &mut CompareRow,
        on_event: &mut dyn FnMut(CompareEvent<'_>),
    ) -> Result<bool, EngineError> {
        let on_batch = &mut |done: usize, of: usize| {
            on_event(CompareEvent::Evaluating { done, of });
            !(self.stop)()
        };
        let acc = released_robust_acc(model, self.test, self.eval, self.device, on_batch).await?;
        row.report.released_robust_acc = acc;
        Ok(acc.is_some())
    }

    /// The progress of an evaluation of this model (trained with `config`) and this evaluation
    /// saved in `checkpoint`; `None` when there is none, or one of another model or evaluation.
    fn saved_progress(
        &self,
        checkpoint: &Path,
        config: &RunConfig,
    ) -> Result<Option<EvalProgress>, EngineError> {
        if !checkpoint.join(EVAL_FILE).exists() {
            return Ok(None);
        }
        let source = CheckpointSource::Folder(checkpoint.to_path_buf());
        let saved: SavedEval = source.read_json(EVAL_FILE)?;
        Ok((saved.config == *config && saved.eval == *self.eval_key).then_some(saved.progress))
    }
}

/// The run of a model in progress, continued from its checkpoint in `checkpoint` with its
/// robust training curve so far; `None` when there is none, or when it was made with another
/// configuration (the comparison then trains from the start and replaces it).
///
/// # Errors
/// A checkpoint of this configuration that cannot be read back: the message names its folder,
/// which can be removed to start the model again.
fn resume(
    checkpoint: &Path,
    config: &RunConfig,
    dataset: &Arc<Dataset>,
    device: &Device,
) -> Result<Option<(Run, Vec<RobustPoint>)>, EngineError> {
    if !checkpoint.exists() {
        return Ok(None);
    }
    let source = CheckpointSource::Folder(checkpoint.to_path_buf());
    if source.config().ok().as_ref() != Some(config) {
        return Ok(None);
    }
    let run = Run::from_checkpoint_with(&source, dataset.clone(), device)?;
    Ok(Some((run, source.read_json(CURVES_FILE)?)))
}

/// Checkpoint `run` and its robust training curve `curve` into `checkpoint`, as one commit.
async fn save_checkpoint(
    run: &mut Run,
    curve: &[RobustPoint],
    checkpoint: &Path,
) -> Result<(), EngineError> {
    let mut files = run.checkpoint_files().await?;
    files.push((
        CURVES_FILE,
        serde_json::to_vec_pretty(curve).unwrap_or_default(),
    ));
    write_files(checkpoint, &files)
}

/// The row of a finished run of `entry`, with its robustness report.
pub fn compare_row(entry: &CompareEntry, run: &Run, report: RobustReport) -> CompareRow {
    CompareRow::new(
        &entry.name,
        &entry.config,
        run.step_index(),
        run.progress().train_secs,
        report,
        run.history().to_vec(),
    )
}

impl CompareRow {
    /// The row of a model called `name`, made with `config`, trained `steps` steps in
    /// `train_secs` seconds (NaN: unknown), with what was measured on it and its training
    /// curves (`history`, possibly empty). The one place a row is assembled: the comparison's
    /// runs and the app's report view both use it.
    pub fn new(
        name: &str,
        config: &RunConfig,
        steps: usize,
        train_secs: f64,
        report: RobustReport,
        history: Vec<EvalReport>,
    ) -> Self {
        let macs = count_macs(&config.model);
        Self {
            name: name.to_string(),
            method: config.train.method,
            experts: config.model.num_experts,
            ratio: config.model.ratio,
            balance_weight: config.balance_weight,
            macs_pathway: macs.pathway,
            macs_pathway_with_router: macs.pathway_with_router,
            steps,
            train_secs,
            report,
            history,
            robust_history: Vec::new(),
        }
    }
}

/// The training curves as a markdown table, one row per evaluation step: each MoE model's clean
/// accuracy, robust accuracy (when measured during training) and the first MoE layer's expert
/// load, each dense model's clean and robust accuracy. Empty when no row has more than its final
/// evaluation.
pub fn markdown_curves(rows: &[CompareRow]) -> String {
    if rows.iter().all(|r| r.history.len() < 2) {
        return String::new();
    }
    let mut steps: Vec<usize> = rows
        .iter()
        .flat_map(|r| r.history.iter().map(|e| e.step))
        .collect();
    steps.sort_unstable();
    steps.dedup();
    let mut s = String::from("| step |");
    let mut rule = String::from("|---|");
    for r in rows {
        s.push_str(&format!(" {} SA % | {} RA % |", r.name, r.name));
        rule.push_str("---|---|");
        if r.experts > 1 {
            s.push_str(&format!(" {} load, layer 1 |", r.name));
            rule.push_str("---|");
        }
    }
    s.push('\n');
    s.push_str(&rule);
    s.push('\n');
    for step in steps {
        s.push_str(&format!("| {step} |"));
        for r in rows {
            let eval = r.history.iter().find(|e| e.step == step);
            let robust = r.robust_history.iter().find(|p| p.step == step);
            s.push_str(&format!(
                " {} | {} |",
                percent(eval.map(|e| e.clean_acc)),
                percent(robust.map(|p| p.robust_acc))
            ));
            if r.experts > 1 {
                let load = eval
                    .and_then(|e| e.expert_load.first())
                    .map(|l| {
                        l.iter()
                            .map(|v| format!("{:.0}", 100.0 * v))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                    .unwrap_or_else(|| "–".to_string());
                s.push_str(&format!(" {load} |"));
            }
        }
        s.push('\n');
    }
    if let Some(p) = rows.iter().find_map(|r| r.robust_history.first()) {
        s.push_str(&format!(
            "\nClean accuracy and expert load on the evaluation subset; RA during training: PGD-10 at ε = 8/255 on the first {} test images.\n",
            p.images
        ));
    }
    s
}

/// Where an MoE model's first MoE layer sends the test images and how well the model classifies
/// them there (by each image's clean route): per expert, and split by whether the route follows
/// the class partition (`y mod N`, what AdvMoE's class-partition router objective asks for).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSplit {
    /// The row's model.
    pub name: String,
    /// Per expert.
    pub experts: Vec<Counted>,
    /// Routes that follow the class partition.
    pub partition: Counted,
    /// The rest.
    pub rest: Counted,
    /// Whether "robust" is the per-image worst case (else the RA attack).
    pub worst_case: bool,
    /// The same model with its routes forced to the partition, when measured.
    pub forced: Option<PartitionRoutes>,
}

/// What "robust" means in a table of `splits` ([`headline_label`]): the per-image worst case
/// when any of them measured it.
pub fn robust_label(splits: &[RouteSplit]) -> &'static str {
    headline_label(splits.iter().any(|s| s.worst_case))
}

/// The [`RouteSplit`] of each MoE row whose report counted it.
pub fn route_splits<'a>(rows: impl IntoIterator<Item = &'a CompareRow>) -> Vec<RouteSplit> {
    rows.into_iter()
        .filter(|r| r.experts > 1)
        .filter_map(|r| {
            let report = &r.report;
            let images = report.class_expert.first()?;
            let correct = report.class_expert_correct.first()?;
            let kept = report.class_expert_robust.first()?;
            let n = r.experts;
            let mut split = RouteSplit {
                name: r.name.clone(),
                experts: vec![Counted::default(); n],
                partition: Counted::default(),
                rest: Counted::default(),
                worst_case: report.worst_case.is_some(),
                forced: report.partition_routes,
            };
            for (y, ((of, ok), held)) in images.iter().zip(correct).zip(kept).enumerate() {
                for e in 0..n.min(of.len()) {
                    let add = |c: &mut Counted| {
                        c.images += of[e];
                        c.clean += ok[e];
                        c.robust += held[e];
                    };
                    add(&mut split.experts[e]);
                    add(if e == y % n {
                        &mut split.partition
                    } else {
                        &mut split.rest
                    });
                }
            }
            Some(split)
        })
        .collect()
}

/// The [`route_splits`] as a markdown table; empty when no row counted them.
pub fn markdown_routes(rows: &[CompareRow]) -> String {
    let splits = route_splits(rows);
    if splits.is_empty() {
        return String::new();
    }
    let robust = robust_label(&splits);
    let forced = splits.iter().any(|s| s.forced.is_some());
    let (forced_head, forced_rule) = if forced {
        (
            format!(
                " routes forced to y mod N: SA % / {robust} % on all | forced, on the rest | SA % shifted to (y + 1) mod N: there / on the rest |"
            ),
            "---|---|---|",
        )
    } else {
        (String::new(), "")
    };
    let mut s = format!(
        "| model | expert: share of images %, SA % / {robust} % on them | route = y mod N | SA % / {robust} % there | SA % / {robust} % on the rest |{forced_head}\n|---|---|---|---|---|{forced_rule}\n"
    );
    for split in splits {
        let total = split.partition.images + split.rest.images;
        let experts: Vec<String> = split
            .experts
            .iter()
            .enumerate()
            .map(|(e, c)| {
                format!(
                    "{e}: {:.0}, {}",
                    100.0 * c.images as f64 / total.max(1) as f64,
                    c.accuracies()
                )
            })
            .collect();
        let forced_cells = match (forced, &split.forced) {
            (false, _) => String::new(),
            (true, None) => " – | – | – |".to_string(),
            (true, Some(f)) => format!(
                " {} | {} | {} |",
                f.all().accuracies(),
                f.rest.accuracies(),
                f.shifted_accuracies()
            ),
        };
        s.push_str(&format!(
            "| {} | {} | {} of {total} | {} | {} |{forced_cells}\n",
            split.name,
            experts.join("; "),
            split.partition.images,
            split.partition.accuracies(),
            split.rest.accuracies(),
        ));
    }
    if forced {
        s.push_str(&format!(
            "\nForced routes: every MoE layer's route set to y mod N and every attack aimed at the experts through it, the {robust} of a router that always followed the partition and that no attack could turn. The route is chosen from the label, so it tells the model which group of classes (a half, for N = 2) an image is in: a bound, not a classifier. \"On the rest\" is the images the model's own router sends elsewhere, on their partition's expert: against the same images on their own route, whether the route or the images make them hard. Shifted: every route set to the next expert instead (clean only), what the partition's expert adds.\n"
        ));
    }
    s
}

/// One paired difference of a comparison: `a − b` on one accuracy, image by image.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedRow {
    /// The first model's name.
    pub a: String,
    /// The second model's name.
    pub b: String,
    /// The accuracy compared: `SA`, `RA (<attack>)` or `worst-case RA`.
    pub what: String,
    /// The difference, its standard error and McNemar's test.
    pub paired: Paired,
}

impl PairedRow {
    /// Its cells as tables show them: the models, the accuracy, the difference and its standard
    /// error in points, the images only each model got right, and McNemar's p.
    pub fn cells(&self) -> [String; 6] {
        let d = self.paired;
        [
            format!("{} − {}", self.a, self.b),
            self.what.clone(),
            format!("{:+.1}", 100.0 * d.difference),
            format!("{:.1}", 100.0 * d.std_error),
            format!("{} / {}", d.only_a, d.only_b),
            format_p(d.p_value),
        ]
    }
}

/// The paired differences of the rows that recorded per-image outcomes
/// ([`RobustOptions::per_image`]) on the same images: AdvMoE against each other such row when
/// an `advmoe` row is there, else every pair; SA, the RA attack and, when both measured it,
/// the worst case. Empty when fewer than two rows recorded them.
pub fn paired_rows<'a>(rows: impl IntoIterator<Item = &'a CompareRow>) -> Vec<PairedRow> {
    let with: Vec<&CompareRow> = rows
        .into_iter()
        .filter(|r| r.report.per_image.is_some())
        .collect();
    let mut pairs = Vec::new();
    match with.iter().position(|r| r.name == "advmoe") {
        Some(a) => pairs.extend((0..with.len()).filter(|&b| b != a).map(|b| (a, b))),
        None => {
            for a in 0..with.len() {
                pairs.extend((a + 1..with.len()).map(|b| (a, b)));
            }
        }
    }
    pairs
        .into_iter()
        .flat_map(|(a, b)| paired_pair(with[a], with[b]))
        .collect()
}

/// The paired differences `a − b` of two rows measured on the same images: SA, the RA attack
/// (named by `a`'s) and, when both measured it, the worst case. Empty when either row lacks the
/// per-image outcomes, or they were recorded on different numbers of images.
pub fn paired_pair(a: &CompareRow, b: &CompareRow) -> Vec<PairedRow> {
    let (Some(pa), Some(pb)) = (&a.report.per_image, &b.report.per_image) else {
        return Vec::new();
    };
    let mut measured = vec![
        ("SA".to_string(), &pa.clean, &pb.clean),
        (
            format!("RA ({})", attack_name(&a.report.attack)),
            &pa.robust,
            &pb.robust,
        ),
    ];
    if !pa.worst_case.is_empty() && !pb.worst_case.is_empty() {
        measured.push(("worst-case RA".into(), &pa.worst_case, &pb.worst_case));
    }
    measured
        .into_iter()
        .filter_map(|(what, x, y)| {
            Some(PairedRow {
                a: a.name.clone(),
                b: b.name.clone(),
                what,
                paired: Paired::of(x, y)?,
            })
        })
        .collect()
}

/// The [`paired_rows`] as a markdown table; empty when there are none.
pub fn markdown_paired(rows: &[CompareRow]) -> String {
    let paired = paired_rows(rows);
    if paired.is_empty() {
        return String::new();
    }
    let mut s = "| models | accuracy | difference, points | standard error | images only the first / only the second got right | McNemar p |\n|---|---|---|---|---|---|\n".to_string();
    for r in paired {
        s.push_str(&format!("| {} |\n", r.cells().join(" | ")));
    }
    s
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.1}", 100.0 * v))
}

/// What the released evaluation's RA is called in tables and notes.
pub const RELEASED_LABEL: &str = "RA, paper code's eval";

/// The comparison as a markdown table.
/// Columns of worst-case RA and of the released evaluation's RA are added when some row
/// measured them.
pub fn markdown_table(rows: &[CompareRow]) -> String {
    let worst = rows.iter().any(|r| r.report.worst_case.is_some());
    let released = rows.iter().any(|r| r.report.released_robust_acc.is_some());
    let mut header = vec!["model", "method", "N", "r", "SA %", "RA %"];
    if worst {
        header.push("worst-case RA %");
    }
    let released_header = format!("{RELEASED_LABEL} %");
    if released {
        header.push(&released_header);
    }
    header.extend([
        "router rob. %",
        "expert rob. %",
        "route flips %",
        "MMACs (+router)",
        "train s",
    ]);
    let mut s = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in rows {
        let macs = if r.macs_pathway_with_router != r.macs_pathway {
            format!(
                "{:.2} (+{:.2})",
                r.macs_pathway as f64 / 1e6,
                (r.macs_pathway_with_router - r.macs_pathway) as f64 / 1e6
            )
        } else {
            format!("{:.2}", r.macs_pathway as f64 / 1e6)
        };
        let mut extra_cells = String::new();
        if worst {
            let acc = r.report.worst_case.as_ref().map(|w| w.robust_acc);
            extra_cells.push_str(&format!(" {} |", percent(acc)));
        }
        if released {
            let acc = r.report.released_robust_acc;
            extra_cells.push_str(&format!(" {} |", percent(acc)));
        }
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |{extra_cells} {} | {} | {} | {} | {:.0} |\n",
            r.name,
            r.method,
            r.experts,
            r.ratio,
            percent(Some(r.report.clean_acc)),
            percent(Some(r.report.robust_acc)),
            percent(r.report.router_robustness),
            percent(r.report.expert_robustness),
            percent(r.report.route_flip_rate),
            macs,
            r.train_secs
        ));
    }
    if !rows.is_empty() {
        s.push_str(&format!("\n{}\n", evaluation_note(rows)));
    }
    s
}
