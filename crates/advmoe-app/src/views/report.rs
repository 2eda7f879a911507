//! Robustness report: the library's models side by side (SA, RA, router and expert robustness,
//! route flips, MACs, training time), RA / route-flip / router-robustness curves against ε,
//! accuracy against cost, training curves, export as CSV and JSON and the plots as PNG. Or, in
//! place of the library, a comparison `advmoe compare` recorded (its `compare.json`: the bundled
//! CIFAR-10 runs, or one the user opens), shown as it was measured with its budget and attacks,
//! and with the summary over its seeds when the report holds other seeds of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use advmoe_core::AttackSpec;
use advmoe_engine::compare::{
    CompareRow, Comparison, RELEASED_LABEL, evaluation_note, paired_rows, robust_label,
    route_splits,
};
use advmoe_engine::robust::released_attack;
use advmoe_engine::seeds::{GAP_COLUMNS, SeedSummary, Spread, summaries_over_seeds};
use advmoe_engine::{NamedAttack, RobustOptions};
use eframe::egui::{self, ColorImage, Rect};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

use crate::analysis::{ModelInfo, Request};
use crate::command::AppCommand;
use crate::error::{AppError, AppResult};
use crate::lesson::Area;
use crate::picture;
use crate::views::lesson::mark;
use crate::views::{OpenFile, open_file, palette, series};

/// The plots, by file name.
const PLOTS: [&str; 3] = [
    "robust_accuracy_vs_eps",
    "route_flips_vs_eps",
    "accuracy_vs_cost",
];

/// Comparisons measured for this project, compiled in: `(title, compare.json)`. Each names its
/// data, budget and attacks below its table (`docs/results/` has the command that made it).
pub const BUNDLED_COMPARISONS: [(&str, &str); 12] = [
    (
        "CIFAR-10 on the CPU: 1,200 steps, width 16 (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-1200-steps.json"),
    ),
    (
        "CIFAR-10 on the CPU: 3,000 steps, width 16 (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-3000-steps.json"),
    ),
    (
        "CIFAR-10 on the CPU: AdvMoE again, 3,000 steps, accuracy by route (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-3000-steps-advmoe-routes.json"),
    ),
    (
        "CIFAR-10 on the CPU: 6,000 steps, 2,000 test images, PGD-20 and the worst case (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-6000-steps-2000-images.json"),
    ),
    (
        "CIFAR-10 on the CPU: 3,000 steps, every batch-norm pass folded, paired, seed 0 (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-3000-steps-bn/paired.json"),
    ),
    (
        "CIFAR-10 on the CPU: the same, seed 1 (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-3000-steps-bn/paired-seed-1.json"),
    ),
    (
        "CIFAR-10 on the CPU: the same, seed 2 (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-3000-steps-bn/paired-seed-2.json"),
    ),
    (
        "CIFAR-10 on the CPU: 6,000 steps, every batch-norm pass folded, paired (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-6000-steps-bn/paired.json"),
    ),
    (
        "CIFAR-10 on the CPU: AdvMoE, robust router objective, seed 0 (recorded)",
        include_str!(
            "../../../../docs/results/cifar10-cpu-3000-steps-bn/advmoe-robust-objective.json"
        ),
    ),
    (
        "CIFAR-10 on the CPU: AdvMoE, robust router objective, seed 1 (recorded)",
        include_str!(
            "../../../../docs/results/cifar10-cpu-3000-steps-bn/advmoe-robust-objective-seed-1.json"
        ),
    ),
    (
        "CIFAR-10 on the CPU: AdvMoE, robust router objective, seed 2 (recorded)",
        include_str!(
            "../../../../docs/results/cifar10-cpu-3000-steps-bn/advmoe-robust-objective-seed-2.json"
        ),
    ),
    (
        "CIFAR-10 on the CPU: the reference's budget (width 32, batch 128), paired (recorded)",
        include_str!("../../../../docs/results/cifar10-cpu-reference-budget/compare.json"),
    ),
];

/// A comparison that `advmoe compare` wrote, shown read-only.
#[derive(Debug, Clone)]
pub struct RecordedComparison {
    /// What the report's selector calls it.
    pub title: String,
    /// Its base configuration, evaluation and rows.
    pub comparison: Comparison,
    /// The summary over the seeds of it and of the comparisons beside it that differ from it
    /// only in their seed, with the one-model runs of those seeds trained another way set
    /// beside its models ([`group_seeds`]); `None` when there are none.
    pub over_seeds: Option<SeedSummary>,
}

/// Fill each comparison's [`RecordedComparison::over_seeds`] from those beside it.
pub fn group_seeds(comparisons: &mut [RecordedComparison]) {
    let all: Vec<&Comparison> = comparisons.iter().map(|c| &c.comparison).collect();
    let summaries = summaries_over_seeds(&all);
    for (c, summary) in comparisons.iter_mut().zip(summaries) {
        c.over_seeds = summary;
    }
}

impl RecordedComparison {
    /// Read a `compare.json` as the comparison called `title`.
    ///
    /// # Errors
    /// Bytes that are not a comparison, or one without a finished model.
    pub fn parse(title: &str, bytes: &[u8]) -> AppResult<Self> {
        let comparison = Comparison::from_json(bytes).map_err(|e| {
            AppError::Refused(format!(
                "{title} is not a compare.json written by `advmoe compare`: {e}"
            ))
        })?;
        if comparison.rows.is_empty() {
            return Err(AppError::Refused(format!(
                "{title} holds no finished model yet"
            )));
        }
        Ok(Self {
            title: title.to_owned(),
            comparison,
            over_seeds: None,
        })
    }

    /// The bundled comparisons ([`BUNDLED_COMPARISONS`]), grouped by seed ([`group_seeds`]);
    /// one that does not parse (a packaging mistake, which the tests catch) is left out.
    pub fn bundled() -> Vec<Self> {
        let mut all: Vec<Self> = BUNDLED_COMPARISONS
            .iter()
            .filter_map(|(title, json)| Self::parse(title, json.as_bytes()).ok())
            .collect();
        group_seeds(&mut all);
        all
    }
}

/// What the report view edits and shows.
pub struct ReportState {
    /// Recorded comparisons: the bundled ones, then those opened.
    pub comparisons: Vec<RecordedComparison>,
    /// The recorded comparison shown (an index into `comparisons`); `None`: the library's
    /// models, measured here.
    pub shown: Option<usize>,
    /// Path typed into "Open comparison" (natively).
    pub comparison_path: String,
    /// Rows measured in this session, by library index (they replace recorded rows).
    pub measured: BTreeMap<usize, CompareRow>,
    /// Test images per measurement.
    pub eval_size: usize,
    /// Extra radii of the curves, as typed (e.g. "2/255, 4/255").
    pub sweep: String,
    /// Also measure the worst case over AutoAttack's APGD-CE and APGD-T (and Square when
    /// `worst_case_square` > 0) beside PGD-10.
    pub worst_case: bool,
    /// Iterations of each APGD attack of the worst case.
    pub worst_case_steps: usize,
    /// Queries of the Square Attack in the worst case (0: not run).
    pub worst_case_square: usize,
    /// Folder that exports go to.
    pub export_dir: String,
    /// What the last export wrote.
    pub exported: Option<String>,
    /// Model folder typed into "Open model folder".
    pub open_dir: String,
    /// Progress of a measurement: what, done, of.
    pub progress: Option<(String, usize, usize)>,
    /// Where each plot was drawn in the last frame (for the PNG export).
    plot_rects: PlotRects,
    /// A screenshot asked for by "Save plots as PNG", filled by egui's callback.
    screenshot: Arc<Mutex<Option<Arc<ColorImage>>>>,
    /// The PNG export is waiting for its screenshot into this folder.
    awaiting_screenshot: Option<PathBuf>,
}

impl Default for ReportState {
    fn default() -> Self {
        Self {
            comparisons: RecordedComparison::bundled(),
            shown: None,
            comparison_path: String::new(),
            measured: BTreeMap::new(),
            eval_size: 200,
            sweep: "2/255, 4/255, 16/255".into(),
            worst_case: false,
            worst_case_steps: 20,
            worst_case_square: 0,
            export_dir: "runs/report".into(),
            exported: None,
            open_dir: String::new(),
            progress: None,
            plot_rects: BTreeMap::new(),
            screenshot: Arc::new(Mutex::new(None)),
            awaiting_screenshot: None,
        }
    }
}

fn parse_fraction(s: &str) -> AppResult<f32> {
    let not_a_number = || AppError::Refused(format!("{s:?} is not a number"));
    let s = s.trim();
    let value = match s.split_once('/') {
        Some((a, b)) => {
            let a: f32 = a.trim().parse().map_err(|_| not_a_number())?;
            let b: f32 = b.trim().parse().map_err(|_| not_a_number())?;
            a / b
        }
        None => s.parse().map_err(|_| not_a_number())?,
    };
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(AppError::Refused(format!("ε must be positive, got {s:?}")))
    }
}

/// The radii typed into the sweep field.
///
/// # Errors
/// A radius that is not a positive number or fraction.
pub fn parse_sweep(text: &str) -> AppResult<Vec<f32>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse_fraction)
        .collect()
}

impl ReportState {
    /// The worst-case attacks these settings ask for, at `eps`, for a model of `classes`
    /// classes ([`NamedAttack::worst_case`]).
    ///
    /// # Errors
    /// Settings outside what an attack spec allows.
    pub fn worst_case_attacks(&self, eps: f32, classes: usize) -> AppResult<Vec<NamedAttack>> {
        if !self.worst_case {
            return Ok(Vec::new());
        }
        let square = (self.worst_case_square > 0).then_some(self.worst_case_square);
        Ok(NamedAttack::worst_case(
            eps,
            self.worst_case_steps.max(1),
            classes,
            square,
        )?)
    }

    /// The recorded comparison shown, if one is.
    pub fn shown_comparison(&self) -> Option<&RecordedComparison> {
        self.shown.and_then(|i| self.comparisons.get(i))
    }

    /// Add the comparison in `bytes` (replacing one of the same title) and show it.
    ///
    /// # Errors
    /// Bytes that are not a comparison with a finished model.
    pub fn open_comparison(&mut self, title: &str, bytes: &[u8]) -> AppResult<()> {
        let recorded = RecordedComparison::parse(title, bytes)?;
        let index = match self.comparisons.iter().position(|c| c.title == title) {
            Some(i) => {
                self.comparisons[i] = recorded;
                i
            }
            None => {
                self.comparisons.push(recorded);
                self.comparisons.len() - 1
            }
        };
        group_seeds(&mut self.comparisons);
        self.shown = Some(index);
        Ok(())
    }

    /// The rows shown: those of the recorded comparison shown; else per library model a
    /// measured row when there is one, else the recorded one.
    pub fn rows<'a>(&'a self, models: &'a [ModelInfo]) -> Vec<&'a CompareRow> {
        if let Some(recorded) = self.shown_comparison() {
            return recorded.comparison.rows.iter().collect();
        }
        models
            .iter()
            .filter_map(|m| self.measured.get(&m.id).or(m.recorded.as_ref()))
            .collect()
    }

    /// Write `report.csv` and `report.json` into `dir`.
    ///
    /// # Errors
    /// If the folder or a file cannot be written.
    pub fn export(&self, models: &[ModelInfo], dir: &Path) -> AppResult<Vec<PathBuf>> {
        let rows = self.rows(models);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AppError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut csv = String::from(
            "model,method,experts,ratio,images,clean_acc,robust_acc,worst_case_robust_acc,router_robustness,expert_robustness,route_flip_rate,macs_pathway,macs_pathway_with_router,train_secs,attack,eps,steps,released_eval_robust_acc\n",
        );
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.6}"));
        for r in &rows {
            let p = &r.report;
            csv.push_str(&format!(
                "\"{}\",{},{},{},{},{:.6},{:.6},{},{},{},{},{},{},{},{},{:.6},{},{}\n",
                r.name.replace('"', "\"\""),
                r.method,
                r.experts,
                r.ratio,
                p.images,
                p.clean_acc,
                p.robust_acc,
                opt(p.worst_case.as_ref().map(|w| w.robust_acc)),
                opt(p.router_robustness),
                opt(p.expert_robustness),
                opt(p.route_flip_rate),
                r.macs_pathway,
                r.macs_pathway_with_router,
                if r.train_secs.is_finite() {
                    format!("{:.1}", r.train_secs)
                } else {
                    String::new()
                },
                p.attack.kind,
                p.attack.eps,
                p.attack.steps,
                opt(p.released_robust_acc)
            ));
        }
        let csv_path = dir.join("report.csv");
        std::fs::write(&csv_path, csv).map_err(io(&csv_path))?;
        let json_path = dir.join("report.json");
        let json =
            serde_json::to_vec_pretty(&serde_json::json!({ "rows": rows })).unwrap_or_default();
        std::fs::write(&json_path, json).map_err(io(&json_path))?;
        Ok(vec![csv_path, json_path])
    }

    /// After "Save plots as PNG": once egui delivered the screenshot, cut each plot out of it.
    fn finish_png_export(&mut self, pixels_per_point: f32) -> Option<AppResult<String>> {
        let dir = self.awaiting_screenshot.clone()?;
        let shot = self.screenshot.lock().ok()?.take()?;
        self.awaiting_screenshot = None;
        let result = (|| {
            std::fs::create_dir_all(&dir).map_err(|source| AppError::Io {
                path: dir.clone(),
                source,
            })?;
            let mut written = Vec::new();
            let mut hidden = Vec::new();
            // The window in points: a plot scrolled partly out of it is cut at its edge, one
            // scrolled out entirely is not saved (its name is reported).
            let screen = Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(shot.width() as f32, shot.height() as f32) / pixels_per_point,
            );
            for (name, rect) in &self.plot_rects {
                let visible = rect.intersect(screen);
                if visible.width() < 1.0 || visible.height() < 1.0 {
                    hidden.push(*name);
                    continue;
                }
                let path = dir.join(format!("{name}.png"));
                picture::save_png(&shot.region(&visible, Some(pixels_per_point)), &path)?;
                written.push(path.display().to_string());
            }
            if written.is_empty() {
                return Err(AppError::Refused("no plot was on screen to save".into()));
            }
            let mut message = format!("Saved {}", written.join(", "));
            if !hidden.is_empty() {
                message.push_str(&format!(
                    " (not on screen, scroll to them and save again: {})",
                    hidden.join(", ")
                ));
            }
            Ok(message)
        })();
        Some(result)
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:.1}", 100.0 * v))
}

/// Draw the report; asks the analysis worker for what the user asked, and shows errors.
pub fn report_ui(
    ui: &mut egui::Ui,
    state: &mut ReportState,
    models: &[ModelInfo],
) -> Vec<AppCommand> {
    let (requests, error) = report_body(ui, state, models);
    requests
        .into_iter()
        .map(AppCommand::ask)
        .chain(error.map(|e| AppCommand::ShowError(e.to_string())))
        .collect()
}

/// The report itself: requests for the analysis worker, and an error for the user.
fn report_body(
    ui: &mut egui::Ui,
    state: &mut ReportState,
    models: &[ModelInfo],
) -> (Vec<Request>, Option<AppError>) {
    let mut actions = Vec::new();
    let mut error = None;
    if let Some(done) = state.finish_png_export(ui.ctx().pixels_per_point()) {
        match done {
            Ok(message) => state.exported = Some(message),
            Err(message) => error = Some(message),
        }
    }
    ui.heading("Robustness report");
    comparison_picker_ui(ui, state, &mut error);
    if let Some(recorded) = state.shown_comparison() {
        recorded_ui(ui, recorded);
    } else {
        library_ui(ui, state, models, &mut actions, &mut error);
    }
    routes_ui(ui, &state.rows(models));
    paired_ui(ui, &state.rows(models));
    export_ui(ui, state, models, &mut error);
    // The plots record where they were drawn (for the PNG export) while reading the rows.
    let mut plot_rects = std::mem::take(&mut state.plot_rects);
    plots_ui(ui, &mut plot_rects, &state.rows(models));
    state.plot_rects = plot_rects;
    (actions, error)
}

/// The table's header.
const COLUMNS: [&str; 12] = [
    "model",
    "method",
    "N",
    "r",
    "SA %",
    "RA %",
    "worst-case RA %",
    "router rob. %",
    "expert rob. %",
    "route flips %",
    "MMACs",
    "train s",
];

/// A striped table with a bold `header`, its rows drawn by `rows` (each ending with
/// `end_row`); marked as the lesson area `Table`.
fn table_ui(ui: &mut egui::Ui, id: &str, header: &[&str], rows: impl FnOnce(&mut egui::Ui)) {
    let table = grid_ui(ui, id, header, rows);
    mark(ui.ctx(), Area::Table, table.rect);
}

/// A striped table with a bold `header`, its rows drawn by `rows`.
fn grid_ui(
    ui: &mut egui::Ui,
    id: &str,
    header: &[&str],
    rows: impl FnOnce(&mut egui::Ui),
) -> egui::Response {
    egui::Grid::new(id)
        .striped(true)
        .spacing([12.0, 4.0])
        .show(ui, |ui| {
            for h in header {
                ui.label(egui::RichText::new(*h).strong());
            }
            ui.end_row();
            rows(ui);
        })
        .response
}

/// The eight measured cells of a row (dashes when there is none), nine with `released` (the
/// paper code's evaluation after the worst case).
fn measurement_cells(ui: &mut egui::Ui, row: Option<&CompareRow>, released: bool) {
    let Some(r) = row else {
        for _ in 0..8 + usize::from(released) {
            ui.label("–");
        }
        return;
    };
    let p = &r.report;
    ui.label(format!("{:.1}", 100.0 * p.clean_acc));
    ui.label(format!("{:.1}", 100.0 * p.robust_acc));
    match &p.worst_case {
        Some(w) => {
            let each: Vec<String> = w
                .each
                .iter()
                .map(|(name, acc)| format!("{name}: {:.1}%", 100.0 * acc))
                .collect();
            ui.label(format!("{:.1}", 100.0 * w.robust_acc))
                .on_hover_text(each.join("\n"));
        }
        None => {
            ui.label("–");
        }
    }
    if released {
        ui.label(pct(p.released_robust_acc)).on_hover_text(format!(
            "{}: the AdvMoE paper's released evaluation (weaker on a live router: not a \
             robustness figure)",
            advmoe_engine::robust::attack_name(&released_attack(&p.attack))
        ));
    }
    let router_attack = p.router_attack.as_ref().map_or_else(
        || {
            "the paper's 10-step router attack (recorded before reports named their router attack)"
                .to_owned()
        },
        advmoe_engine::robust::router_attack_name,
    );
    ui.label(pct(p.router_robustness))
        .on_hover_text(format!("routes kept under {router_attack}"));
    ui.label(pct(p.expert_robustness));
    ui.label(pct(p.route_flip_rate));
    ui.label(format!("{:.2}", r.macs_pathway_with_router as f64 / 1e6));
    ui.label(if r.train_secs.is_finite() {
        format!("{:.0}", r.train_secs)
    } else {
        "–".into()
    });
}

/// Per MoE model, where its first MoE layer sends the test images and how well they are
/// classified there: per expert, and by whether the route follows the class partition (what
/// AdvMoE's class-partition objective asks of the router). Only rows measured since reports
/// counted it have it.
fn routes_ui(ui: &mut egui::Ui, rows: &[&CompareRow]) {
    let splits = route_splits(rows.iter().copied());
    if splits.is_empty() {
        return;
    }
    let robust = robust_label(&splits);
    let forced = splits.iter().any(|s| s.forced.is_some());
    ui.add_space(6.0);
    ui.label(
        egui::RichText::new("Routes and classes (first MoE layer, by the clean route)").strong(),
    );
    let mut header = vec![
        "model".to_string(),
        format!("expert: images, SA % / {robust} %"),
        "route = class mod N".to_string(),
        format!("SA % / {robust} % there"),
        format!("SA % / {robust} % on the rest"),
    ];
    if forced {
        header.push(format!("forced to class mod N: SA % / {robust} %"));
        header.push("forced, on the rest".to_string());
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    grid_ui(ui, "routes table", &header, |ui| {
        for split in &splits {
            ui.label(&split.name);
            let experts: Vec<String> = split
                .experts
                .iter()
                .enumerate()
                .map(|(e, c)| format!("{e}: {}, {}", c.images, c.accuracies()))
                .collect();
            ui.label(experts.join("\n"));
            ui.label(format!(
                "{} of {}",
                split.partition.images,
                split.partition.images + split.rest.images
            ));
            ui.label(split.partition.accuracies());
            ui.label(split.rest.accuracies());
            if forced {
                match split.forced {
                    Some(f) => {
                        let shifted = format!(
                            "SA % with every route shifted to the next expert, (class + 1) mod \
                             N, instead: {} (on the images routed by the partition / on the rest)",
                            f.shifted_accuracies()
                        );
                        ui.label(f.all().accuracies()).on_hover_text(&shifted);
                        ui.label(f.rest.accuracies()).on_hover_text(&shifted);
                    }
                    None => {
                        ui.label("–");
                        ui.label("–");
                    }
                }
            }
            ui.end_row();
        }
    });
    ui.label(
        "A router that follows the partition sends each image to the expert trained on its \
         classes. The accuracy on the rest mixes what a wrong route costs with how hard those \
         images are; routes forced to the partition (advmoe eval or compare \
         --partition-routes) tell the two apart.",
    );
    if forced {
        ui.label(
            "Forced: every route set to the image's class mod N and every attack aimed at the \
             experts through it, as if the router always followed the partition and no attack \
             could turn it. The route comes from the label, which tells the model which group of \
             classes (a half, for N = 2) the image is in: a bound, not a classifier. \"On the rest\" is the \
             images the model's own router sends elsewhere, put on their partition's expert: \
             against the same images on their own route, it tells whether the route or the \
             images make them hard.",
        );
    }
}

/// The paired differences of the rows that recorded each image's outcomes (`compare
/// --per-image`): whether a gap between two models on the same images is more than noise.
fn paired_ui(ui: &mut egui::Ui, rows: &[&CompareRow]) {
    let paired = paired_rows(rows.iter().copied());
    if paired.is_empty() {
        return;
    }
    ui.add_space(6.0);
    ui.label(
        egui::RichText::new("Paired differences (the same test images, image by image)").strong(),
    );
    let header = [
        "models",
        "accuracy",
        "difference, points",
        "standard error",
        "only the first / only the second right",
        "McNemar p",
    ];
    grid_ui(ui, "paired table", &header, |ui| {
        for r in &paired {
            for cell in r.cells() {
                ui.label(cell);
            }
            ui.end_row();
        }
    });
    ui.label(
        "Most images are easy, or hard, for both models, so the error of a difference comes \
         from the images they disagree on. McNemar's p: how often a split of those images at \
         least this uneven would arise by chance; a gap of two standard errors or p under 0.05 \
         is more than noise.",
    );
}

/// Where each plot was drawn, by name.
type PlotRects = BTreeMap<&'static str, Rect>;

/// The "Show" menu's entry for the library's models.
const LIBRARY: &str = "The library's models (measured here)";

/// The title of a comparison opened from `path`: its folder and file name
/// (`cpu-cifar-w16/compare.json`), since every one is called `compare.json` and a full path
/// would widen the menu.
pub fn comparison_title(path: &std::path::Path) -> String {
    let file = path.file_name().map(|n| n.to_string_lossy());
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy());
    match (folder, file) {
        (Some(folder), Some(file)) => format!("{folder}/{file}"),
        (None, Some(file)) => file.into_owned(),
        _ => path.display().to_string(),
    }
}

/// What the report shows: the library's models, or a recorded comparison (bundled or opened:
/// natively from a typed path, on the web from the browser's picker or a drop).
fn comparison_picker_ui(ui: &mut egui::Ui, state: &mut ReportState, error: &mut Option<AppError>) {
    ui.horizontal(|ui| {
        let label = ui.label("Show");
        let selected = state
            .shown_comparison()
            .map_or(LIBRARY, |c| c.title.as_str())
            .to_owned();
        // Tall enough for every entry, so none is scrolled out of view (egui's default menu
        // height, 200 points, cut the list short); the library's models are the first.
        let spacing = ui.spacing();
        let entry = spacing.interact_size.y + spacing.item_spacing.y;
        let height = (entry * (state.comparisons.len() + 1) as f32 + spacing.menu_margin.sum().y)
            .max(spacing.combo_height);
        egui::ComboBox::from_id_salt("report shows")
            .selected_text(selected)
            .width(360.0)
            .height(height)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut state.shown, None, LIBRARY);
                for (i, c) in state.comparisons.iter().enumerate() {
                    ui.selectable_value(&mut state.shown, Some(i), &c.title);
                }
            })
            .response
            .labelled_by(label.id);
        let control = OpenFile {
            web_button: "Open comparison…",
            web_hover: "A compare.json that `advmoe compare` wrote; dropping it on the page works too",
            label: "compare.json",
            hint: "runs/compare (or its compare.json)",
            button: "Open comparison",
        };
        if let Some(typed) = open_file(ui, &control, &mut state.comparison_path) {
            let path = if typed.is_dir() {
                typed.join("compare.json")
            } else {
                typed
            };
            let opened = std::fs::read(&path)
                .map_err(|source| AppError::Io {
                    path: path.clone(),
                    source,
                })
                .and_then(|bytes| state.open_comparison(&comparison_title(&path), &bytes));
            if let Err(e) = opened {
                *error = Some(e);
            }
        }
    });
}

/// A recorded comparison: its rows as measured, and what they were measured with.
fn recorded_ui(ui: &mut egui::Ui, recorded: &RecordedComparison) {
    let rows = &recorded.comparison.rows;
    // The paper code's evaluation, after the worst case, when the comparison measured it.
    let released = rows.iter().any(|r| r.report.released_robust_acc.is_some());
    let released_header = format!("{RELEASED_LABEL} %");
    let mut header = COLUMNS.to_vec();
    if released {
        header.insert(7, &released_header);
    }
    table_ui(ui, "recorded table", &header, |ui| {
        for row in rows {
            ui.label(&row.name);
            ui.label(row.method.to_string());
            ui.label(row.experts.to_string());
            ui.label(format!("{}", row.ratio));
            measurement_cells(ui, Some(row), released);
            ui.end_row();
        }
    });
    ui.label(format!(
        "Recorded by `advmoe compare`: {}.",
        recorded.comparison.budget()
    ));
    ui.label(evaluation_note(rows));
    if let Some(summary) = &recorded.over_seeds {
        seeds_ui(ui, summary);
    }
}

/// The comparison over every seed the report holds of it (`advmoe seeds`): each model's mean
/// and spread, and AdvMoE's gaps seed by seed against their spread over the seeds.
fn seeds_ui(ui: &mut egui::Ui, summary: &SeedSummary) {
    let seeds: Vec<String> = summary.seeds.iter().map(u64::to_string).collect();
    ui.add_space(6.0);
    ui.label(
        egui::RichText::new(format!(
            "Over seeds {}: the same comparison trained {} times",
            seeds.join(", "),
            seeds.len()
        ))
        .strong(),
    );
    let cell = |v: Option<&Spread>| {
        v.map_or("–".to_string(), |v| {
            format!("{:.1} ± {:.1}", 100.0 * v.mean, 100.0 * v.sd)
        })
    };
    let header = [
        "model",
        "SA %",
        "RA %",
        "worst-case RA %",
        "router rob. %",
        "busiest expert, layer 1 %",
    ];
    grid_ui(ui, "seeds table", &header, |ui| {
        for m in &summary.models {
            ui.label(&m.name);
            ui.label(cell(Some(&m.clean_acc)));
            ui.label(cell(Some(&m.robust_acc)));
            ui.label(cell(m.worst_case.as_ref()));
            ui.label(cell(m.router_robustness.as_ref()));
            ui.label(cell(m.busiest_expert.as_ref()));
            ui.end_row();
        }
    });
    if !summary.gaps.is_empty() {
        grid_ui(ui, "seed gaps table", &GAP_COLUMNS, |ui| {
            for g in &summary.gaps {
                for cell in g.cells() {
                    ui.label(cell);
                }
                ui.end_row();
            }
        });
    }
    ui.label(
        "Mean ± standard deviation over the seeds. A seed's paired test measures how its test \
         images could have fallen; the spread of a gap over the seeds holds the training noise \
         too, and a claim that one method beats another must clear it.",
    );
    for a in &summary.added {
        ui.label(format!(
            "{}: the {} model of other comparisons with these seeds, measured on the same images \
             with the same attacks; trained otherwise in {}.",
            a.name,
            a.row,
            a.differs_in.join(", ")
        ));
    }
}

/// The library's models: open one, measure them here.
fn library_ui(
    ui: &mut egui::Ui,
    state: &mut ReportState,
    models: &[ModelInfo],
    actions: &mut Vec<Request>,
    error: &mut Option<AppError>,
) {
    ui.horizontal(|ui| {
        let label = ui.label("Model folder");
        ui.add(egui::TextEdit::singleline(&mut state.open_dir).hint_text("runs/quickstart"))
            .labelled_by(label.id);
        if ui.button("Open model folder").clicked() {
            actions.push(Request::Open(state.open_dir.trim().into()));
        }
    });
    ui.horizontal(|ui| {
        let label = ui.label("Test images per measurement");
        ui.add(egui::DragValue::new(&mut state.eval_size).range(10..=10_000))
            .labelled_by(label.id);
        let label = ui.label("Extra ε for the curves");
        ui.add(egui::TextEdit::singleline(&mut state.sweep).desired_width(160.0))
            .labelled_by(label.id);
        ui.label("Attack: PGD-10, ε = 8/255, step 2/255 (the paper's evaluation)");
    });
    ui.horizontal(|ui| {
        ui.checkbox(&mut state.worst_case, "Worst case")
            .on_hover_text(
                "RobustBench's robust accuracy: an image counts only if PGD-10, APGD-CE and \
                 targeted APGD-DLR (9 target classes) all leave it correct, and the Square \
                 Attack too when it has queries",
            );
        ui.add_enabled_ui(state.worst_case, |ui| {
            let label = ui.label("APGD steps");
            ui.add(egui::DragValue::new(&mut state.worst_case_steps).range(1..=1000))
                .labelled_by(label.id);
            let label = ui.label("Square queries (0: none)");
            ui.add(egui::DragValue::new(&mut state.worst_case_square).range(0..=10_000))
                .labelled_by(label.id);
        });
    });
    if let Some((what, done, of)) = &state.progress {
        ui.add(
            egui::ProgressBar::new(*done as f32 / (*of).max(1) as f32)
                .text(format!("{what}: {done} / {of} images")),
        );
    }
    let idle = state.progress.is_none();
    let header: Vec<&str> = COLUMNS.into_iter().chain([""]).collect();
    table_ui(ui, "report table", &header, |ui| {
        for model in models {
            let row = state.measured.get(&model.id).or(model.recorded.as_ref());
            ui.label(&model.name);
            ui.label(model.config.train.method.to_string());
            ui.label(model.config.model.num_experts.to_string());
            ui.label(format!("{}", model.config.model.ratio));
            measurement_cells(ui, row, false);
            let label = if row.is_some() {
                "Re-measure"
            } else {
                "Measure"
            };
            let button = ui.add_enabled(idle, egui::Button::new(label));
            if button.clicked() {
                let attack = AttackSpec::paper_eval();
                let worst_case =
                    state.worst_case_attacks(attack.eps, model.config.model.num_classes);
                match parse_sweep(&state.sweep).and_then(|s| Ok((s, worst_case?))) {
                    Ok((eps_sweep, worst_case)) => {
                        state.progress = Some((format!("measuring {}", model.name), 0, 1));
                        actions.push(Request::Evaluate {
                            model: model.id,
                            options: RobustOptions {
                                attack,
                                eps_sweep,
                                limit: state.eval_size,
                                worst_case,
                                ..RobustOptions::default()
                            },
                        });
                    }
                    Err(e) => *error = Some(e),
                }
            }
            ui.end_row();
        }
    });
    ui.label("Rows of the demo models are what `advmoe compare` measured when it trained them; \"Measure\" measures again here.");
    ui.label(format!(
        "\"Measure\" attacks with {} at ε = 8/255 (RA) and measures router robustness as the routes kept under {} (the paper's 10-step router attack overstates it).",
        advmoe_engine::robust::attack_name(&AttackSpec::paper_eval()),
        advmoe_engine::robust::router_attack_name(&AttackSpec::router_eval()),
    ));
}

/// Export the rows shown as CSV and JSON, and the plots as PNG.
fn export_ui(
    ui: &mut egui::Ui,
    state: &mut ReportState,
    models: &[ModelInfo],
    error: &mut Option<AppError>,
) {
    ui.horizontal(|ui| {
        let label = ui.label("Export folder");
        ui.add(egui::TextEdit::singleline(&mut state.export_dir))
            .labelled_by(label.id);
        if ui.button("Export CSV and JSON").clicked() {
            match state.export(models, Path::new(state.export_dir.trim())) {
                Ok(paths) => {
                    state.exported = Some(format!(
                        "Saved {}",
                        paths
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Err(e) => *error = Some(e),
            }
        }
        if ui.button("Save plots as PNG").clicked() {
            let slot = state.screenshot.clone();
            let ctx = ui.ctx().clone();
            state.awaiting_screenshot = Some(PathBuf::from(state.export_dir.trim()));
            ui.ctx().request_screenshot(move |image| {
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(image);
                }
                ctx.request_repaint();
            });
        }
    });
    // On a line of its own, where a long list of paths wraps instead of widening the view.
    if let Some(message) = &state.exported {
        ui.label(message);
    }
}

/// The plots of the training curves, shown when some row recorded more than its final
/// evaluation (`advmoe compare --eval-every`, with `--curve-robust` for RA): accuracy over the
/// steps, and the first MoE layer's share of its first expert, where a collapsed router sits at
/// 0% or 100%.
const TRAINING_PLOTS: [&str; 2] = ["accuracy_during_training", "expert_load_during_training"];

/// Percent points `[step, 100 · value]` of the steps that have a value.
fn over_steps(points: impl Iterator<Item = (usize, Option<f64>)>) -> Vec<[f64; 2]> {
    points
        .filter_map(|(step, v)| Some([step as f64, 100.0 * v?]))
        .collect()
}

fn training_plots_ui(
    ui: &mut egui::Ui,
    plot_rects: &mut PlotRects,
    rows: &[&CompareRow],
    width: f32,
) {
    if rows.iter().all(|r| r.history.len() < 2) {
        for name in TRAINING_PLOTS {
            plot_rects.remove(name);
        }
        return;
    }
    // A row of their own, below the ε and cost plots: two wide plots, the same steps on both
    // x axes, each tall enough for a legend of every row beside the curves.
    ui.end_row();
    let width = 1.5 * width;
    for name in TRAINING_PLOTS {
        let group = ui.vertical(|ui| {
            let (title, y_label) = if name == "accuracy_during_training" {
                (
                    "Accuracy during training (solid: robust, dashed: clean)",
                    "%",
                )
            } else {
                (
                    "Expert load during training: first MoE layer, share of expert 0",
                    "% of test images",
                )
            };
            ui.label(title);
            Plot::new(name)
                .width(width)
                .height(300.0)
                .include_y(0.0)
                .include_y(100.0)
                .x_axis_label("training step")
                .y_axis_label(y_label)
                .legend(Legend::default())
                .show(ui, |plot| {
                    for (i, row) in rows.iter().enumerate() {
                        if name == "accuracy_during_training" {
                            let robust = over_steps(
                                row.robust_history
                                    .iter()
                                    .map(|p| (p.step, Some(p.robust_acc))),
                            );
                            series(plot, &format!("{} RA", row.name), robust, i);
                            let clean =
                                over_steps(row.history.iter().map(|e| (e.step, Some(e.clean_acc))));
                            if !clean.is_empty() {
                                plot.line(
                                    Line::new(format!("{} SA", row.name), PlotPoints::from(clean))
                                        .color(palette(i))
                                        .style(egui_plot::LineStyle::dashed_loose()),
                                );
                            }
                        } else if row.experts > 1 {
                            let load = over_steps(row.history.iter().map(|e| {
                                (
                                    e.step,
                                    e.expert_load.first().and_then(|l| l.first()).copied(),
                                )
                            }));
                            series(plot, &row.name, load, i);
                        }
                    }
                });
        });
        plot_rects.insert(name, group.response.rect);
    }
}

/// The ε-curve of one row: the sweep's points plus the main attack's, sorted by ε.
fn curve(
    row: &CompareRow,
    value: impl Fn(f64, Option<f64>, Option<f64>) -> Option<f64>,
) -> Vec<[f64; 2]> {
    let r = &row.report;
    let mut points: Vec<[f64; 2]> = r
        .sweep
        .iter()
        .filter_map(|p| {
            Some([
                f64::from(p.eps) * 255.0,
                value(p.robust_acc, p.route_flip_rate, p.router_robustness)?,
            ])
        })
        .chain(
            value(r.robust_acc, r.route_flip_rate, r.router_robustness)
                .map(|v| [f64::from(r.attack.eps) * 255.0, v]),
        )
        .collect();
    points.sort_by(|a, b| a[0].total_cmp(&b[0]));
    points.dedup_by(|a, b| a[0] == b[0]);
    points
}

fn plots_ui(ui: &mut egui::Ui, plot_rects: &mut PlotRects, rows: &[&CompareRow]) {
    let max_mmacs = rows
        .iter()
        .map(|r| r.macs_pathway_with_router as f64 / 1e6)
        .fold(1.0, f64::max);
    let width = (ui.available_width() / 3.0 - 10.0).max(220.0);
    let plots = ui.horizontal_wrapped(|ui| {
        for name in PLOTS {
            let group = ui.vertical(|ui| {
                let (title, x_label, y_label) = match name {
                    "robust_accuracy_vs_eps" => ("Robust accuracy vs ε", "ε (×1/255)", "RA %"),
                    "route_flips_vs_eps" => (
                        "Route flips vs ε (dashed: routes kept under the router attack)",
                        "ε (×1/255)",
                        "%",
                    ),
                    _ => (
                        "Accuracy vs cost",
                        "MMACs per image (pathway + router)",
                        "%",
                    ),
                };
                ui.label(title);
                let mut plot = Plot::new(name)
                    .width(width)
                    .height(220.0)
                    .include_y(0.0)
                    .include_y(100.0)
                    .x_axis_label(x_label)
                    .y_axis_label(y_label)
                    .legend(Legend::default());
                if name == "accuracy_vs_cost" {
                    // Room on the right, and the legend below the points (high accuracy).
                    plot = plot
                        .include_x(0.0)
                        .include_x(1.3 * max_mmacs)
                        .legend(Legend::default().position(egui_plot::Corner::RightBottom));
                }
                plot.show(ui, |plot| {
                    for (i, row) in rows.iter().enumerate() {
                        let color = palette(i);
                        match name {
                            "robust_accuracy_vs_eps" => {
                                let pts = curve(row, |ra, _, _| Some(100.0 * ra));
                                series(plot, &row.name, pts, i);
                            }
                            "route_flips_vs_eps" => {
                                let flips = curve(row, |_, f, _| f.map(|f| 100.0 * f));
                                if !flips.is_empty() {
                                    series(plot, &format!("{} flips", row.name), flips, i);
                                }
                                let kept = curve(row, |_, _, k| k.map(|k| 100.0 * k));
                                if !kept.is_empty() {
                                    plot.line(
                                        Line::new(
                                            format!("{} router rob.", row.name),
                                            PlotPoints::from(kept),
                                        )
                                        .color(color)
                                        .style(egui_plot::LineStyle::dashed_loose()),
                                    );
                                }
                            }
                            _ => {
                                let x = row.macs_pathway_with_router as f64 / 1e6;
                                let r = &row.report;
                                plot.points(
                                    Points::new(
                                        format!("{} RA", row.name),
                                        vec![[x, 100.0 * r.robust_acc]],
                                    )
                                    .radius(5.0)
                                    .color(color),
                                );
                                plot.points(
                                    Points::new(
                                        format!("{} SA", row.name),
                                        vec![[x, 100.0 * r.clean_acc]],
                                    )
                                    .radius(5.0)
                                    .color(color)
                                    .shape(egui_plot::MarkerShape::Diamond),
                                );
                            }
                        }
                    }
                });
            });
            // The whole group (title, axes, legend) is what the PNG export keeps.
            plot_rects.insert(name, group.response.rect);
        }
        training_plots_ui(ui, plot_rects, rows, width);
    });
    mark(ui.ctx(), Area::Plots, plots.response.rect);
}
