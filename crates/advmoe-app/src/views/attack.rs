//! Attack lab: pick a model and an image (a test image, or the user's own PNG/JPEG opened or
//! dropped), an attack, its target (full / router / expert) and ε; see the clean image, the
//! amplified perturbation and the adversarial image, the top-5 predictions with confidence bars,
//! and the routing map (MoE layers × experts) clean vs adversarial with flipped routes marked.
//! Moving ε re-runs the attack.

use advmoe_core::{AttackKind, AttackSpec, AttackTarget};
use advmoe_engine::Prediction;
use eframe::egui::{self, Color32, RichText, TextureHandle};

use crate::analysis::{AttackOutcome, ImageSource, ModelInfo, Request};
use crate::command::AppCommand;
use crate::error::{AppError, AppResult};
use crate::lesson::Area;
use crate::link::MAX_ROUTER_TERM;
use crate::picture;
use crate::views::lesson::mark;
use crate::views::{OpenFile, labelled_combo, model_picker, open_file};

/// The user's own image, as decoded (fitted to each model when attacked).
#[derive(Clone)]
pub struct OwnImage {
    /// File name.
    pub name: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// What the attack lab edits and shows.
pub struct AttackState {
    /// Library index of the model attacked.
    pub model: Option<usize>,
    /// Attack the user's own image instead of a test image.
    pub use_own: bool,
    /// Test image index.
    pub test_index: usize,
    /// The user's image, if one was opened or dropped.
    pub own: Option<OwnImage>,
    /// Path typed into the "Image file" field.
    pub own_path: String,
    /// Algorithm.
    pub kind: AttackKind,
    /// Target.
    pub target: AttackTarget,
    /// ε in units of 1/255 (L∞), or the L2 radius ×255 for `pgd-l2`.
    pub eps_255: f32,
    /// Gradient steps.
    pub steps: usize,
    /// The attack's random seed (Square draws from it; the others start at the clean image).
    pub seed: u64,
    /// Differentiate through the straight-through gates, as the AdvMoE paper's code attacks
    /// (full target only).
    pub through_gates: bool,
    /// β of the paper's evaluation's router term (full target only; 0: off).
    pub router_term: f32,
    /// Re-run as soon as a setting changes.
    pub live: bool,
    /// Sequence number of the last request sent.
    pub sent: u64,
    /// The last result shown.
    pub result: Option<AttackOutcome>,
    /// Its clean, perturbation and adversarial textures.
    textures: Option<[TextureHandle; 3]>,
    /// A request is in flight.
    pub busy: bool,
    /// Folder "Export figure" writes into (natively).
    pub export_dir: String,
    /// What the last export wrote.
    pub exported: Option<String>,
}

impl Default for AttackState {
    fn default() -> Self {
        Self {
            model: None,
            use_own: false,
            test_index: 0,
            own: None,
            own_path: String::new(),
            kind: AttackKind::Pgd,
            target: AttackTarget::Full,
            eps_255: 8.0,
            steps: 10,
            seed: 0,
            through_gates: false,
            router_term: 0.0,
            live: true,
            sent: 0,
            result: None,
            textures: None,
            busy: false,
            export_dir: "runs/figures".into(),
            exported: None,
        }
    }
}

impl AttackState {
    /// The attack these settings describe: the core's defaults for the kind
    /// ([`AttackSpec::with_defaults`]) without a random start, so the same settings always
    /// show the same picture; on the full target, the paper code's options as set.
    pub fn spec(&self) -> AttackSpec {
        let steps = self.steps.clamp(1, most_steps(self.kind));
        let full = self.target == AttackTarget::Full;
        AttackSpec {
            random_start: false,
            through_gates: full && self.through_gates,
            router_term: if full {
                self.router_term.clamp(0.0, MAX_ROUTER_TERM)
            } else {
                0.0
            },
            ..AttackSpec::with_defaults(self.kind, self.target, self.eps_255 / 255.0, steps)
        }
    }

    /// The request for the current settings, or why there is none.
    pub fn request(&mut self, models: &[ModelInfo]) -> AppResult<Request> {
        let model = self
            .model
            .and_then(|m| models.get(m))
            .ok_or_else(|| AppError::Refused("choose a model to attack".into()))?;
        let image = if self.use_own {
            let own = self
                .own
                .as_ref()
                .ok_or_else(|| AppError::Refused("open or drop an image file first".into()))?;
            let spec = &model.config.model;
            let shape = [spec.in_channels, spec.image_size[0], spec.image_size[1]];
            let pixels =
                picture::fit_user_image(&own.bytes, shape).map_err(|e| AppError::Image {
                    name: own.name.clone(),
                    reason: e.to_string(),
                })?;
            ImageSource::Own {
                name: own.name.clone(),
                shape,
                pixels,
            }
        } else {
            ImageSource::Test(self.test_index.min(model.test_len.saturating_sub(1)))
        };
        self.sent += 1;
        self.busy = true;
        Ok(Request::Attack {
            seq: self.sent,
            model: model.id,
            image,
            spec: self.spec(),
            seed: self.seed,
        })
    }

    /// Take a finished attack (older ones than the last request are dropped).
    pub fn accept(&mut self, ctx: &egui::Context, outcome: AttackOutcome) {
        if outcome.seq != self.sent {
            return;
        }
        let a = &outcome.attack;
        self.textures = Some([
            picture::texture(ctx, "clean", picture::color_image(&a.clean_pixels, a.shape)),
            picture::texture(
                ctx,
                "perturbation",
                picture::color_image(&a.perturbation_pixels(), a.shape),
            ),
            picture::texture(
                ctx,
                "adversarial",
                picture::color_image(&a.adversarial_pixels, a.shape),
            ),
        ]);
        self.result = Some(outcome);
    }

    /// Use a file's bytes as the user's image.
    pub fn set_own(&mut self, name: String, bytes: Vec<u8>) {
        self.own = Some(OwnImage { name, bytes });
        self.use_own = true;
    }
}

/// What "Through the gates" does.
const GATES_HOVER: &str = "Differentiate through the routers' straight-through gates, as the \
    AdvMoE paper's code attacks. A weaker attack on a model whose router is live: compare, do \
    not report it as robustness.";

/// What "Router term β" does.
const ROUTER_TERM_HOVER: &str = "Add β × the router's cross-entropy against the class partition \
    (label mod N) to the attack's loss, as the paper's released evaluation does with β = 6. \
    0: off.";

/// The paper code's options `spec` turns on ([`AttackSpec::paper_options`]), each after `sep`
/// (empty when none).
pub fn paper_options(spec: &AttackSpec, sep: &str) -> String {
    spec.paper_options()
        .iter()
        .map(|o| format!("{sep}{o}"))
        .collect()
}

/// Draw the attack lab; the attack runs when "Attack" is pressed or, with "Update as ε moves"
/// on, when a setting changed. In projector mode the images are larger and the controls for
/// files, live updates and the perturbation's norms are hidden. `hide_result`: a lesson's class
/// has not yet committed to its prediction, so no result is shown.
pub fn attack_ui(
    ui: &mut egui::Ui,
    state: &mut AttackState,
    models: &[ModelInfo],
    projector: bool,
    hide_result: bool,
) -> Vec<AppCommand> {
    let (run, error) = attack_body(ui, state, models, projector, hide_result);
    let mut commands: Vec<AppCommand> = run.then_some(AppCommand::RunAttack).into_iter().collect();
    commands.extend(error.map(AppCommand::ShowError));
    if state.result.is_some() && !hide_result {
        ui.separator();
        ui.horizontal(|ui| {
            if !crate::platform::WEB && !projector {
                let label = ui.label("Export folder");
                ui.add(egui::TextEdit::singleline(&mut state.export_dir))
                    .labelled_by(label.id);
            }
            if ui
                .button("Export figure")
                .on_hover_text("The images, top-5 bars and routing map as one PNG at 2× with a caption, and the numbers as JSON")
                .clicked()
            {
                commands.push(AppCommand::ExportFigure);
            }
            if let Some(message) = &state.exported {
                ui.label(message);
            }
        });
    }
    commands
}

/// The lab itself: whether the attack should run, and an error for the user.
fn attack_body(
    ui: &mut egui::Ui,
    state: &mut AttackState,
    models: &[ModelInfo],
    projector: bool,
    hide_result: bool,
) -> (bool, Option<String>) {
    let mut changed = false;
    let mut pressed = false;
    let mut error = None;
    ui.heading("Attack lab");
    changed |= model_picker(ui, "Model to attack", &mut state.model, models);
    let Some(model) = state.model.and_then(|m| models.get(m)) else {
        ui.label("No model yet: the demo models are loading, or open one in the report view.");
        return (false, None);
    };
    ui.horizontal(|ui| {
        changed |= ui
            .radio_value(&mut state.use_own, false, "Test image")
            .changed();
        let label = ui.label("Index");
        changed |= ui
            .add_enabled(
                !state.use_own,
                egui::DragValue::new(&mut state.test_index)
                    .range(0..=model.test_len.saturating_sub(1)),
            )
            .labelled_by(label.id)
            .changed();
        ui.separator();
        changed |= ui
            .radio_value(&mut state.use_own, true, "Own image")
            .changed();
        if projector {
            // The image was chosen before the class looks.
        } else {
            let control = OpenFile {
                web_button: "Open image…",
                web_hover: "A PNG or JPEG; dropping it on the page works too",
                label: "Image file",
                hint: "photo.png (or drop a file)",
                button: "Open image",
            };
            if let Some(path) = open_file(ui, &control, &mut state.own_path) {
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let name = path.file_name().map_or_else(
                            || path.display().to_string(),
                            |n| n.to_string_lossy().into(),
                        );
                        state.set_own(name, bytes);
                        changed = true;
                    }
                    Err(e) => error = Some(format!("reading {}: {e}", path.display())),
                }
            }
        }
        if let Some(own) = &state.own {
            ui.label(&own.name);
        }
    });
    ui.horizontal(|ui| {
        changed |= labelled_combo(ui, "Algorithm", &mut state.kind, AttackKind::ALL);
        changed |= labelled_combo(
            ui,
            "Target",
            &mut state.target,
            &[
                AttackTarget::Full,
                AttackTarget::Router,
                AttackTarget::Expert,
            ],
        );
        let label = ui.label(if state.kind.uses_gradient() {
            "Steps"
        } else {
            "Queries"
        });
        changed |= ui
            .add_enabled(
                state.kind != AttackKind::Fgsm,
                egui::DragValue::new(&mut state.steps).range(1..=most_steps(state.kind)),
            )
            .labelled_by(label.id)
            .changed();
    });
    // The paper code's options: in projector mode only while one is on, so the class sees
    // which attack it is watching and the screen keeps its room otherwise.
    let paper_row = !projector || state.through_gates || state.router_term > 0.0;
    if paper_row {
        ui.horizontal(|ui| {
            let full = state.target == AttackTarget::Full;
            let gates = egui::Checkbox::new(&mut state.through_gates, "Through the gates");
            changed |= ui
                .add_enabled(full, gates)
                .on_hover_text(GATES_HOVER)
                .changed();
            let label = ui.label("Router term β");
            changed |= ui
                .add_enabled(
                    full,
                    egui::DragValue::new(&mut state.router_term)
                        .range(0.0..=MAX_ROUTER_TERM)
                        .speed(0.5),
                )
                .labelled_by(label.id)
                .on_hover_text(ROUTER_TERM_HOVER)
                .changed();
        });
    }
    let eps_row = ui.horizontal(|ui| {
        let label = ui.label(if state.kind.is_l2() {
            "ε (L2, ×1/255)"
        } else {
            "ε (×1/255)"
        });
        let slider = ui
            .add(egui::Slider::new(&mut state.eps_255, 0.0..=32.0).step_by(0.5))
            .labelled_by(label.id);
        // While dragging, only a release re-runs a slow attack; the worker keeps the newest.
        changed |= slider.changed();
        if !projector {
            ui.checkbox(&mut state.live, "Update as ε moves");
        }
        if ui.button("Attack").clicked() {
            pressed = true;
        }
        if state.busy {
            ui.spinner();
            ui.label("attacking…");
        }
    });
    mark(ui.ctx(), Area::Eps, eps_row.response.rect);
    ui.separator();
    let run = pressed || (changed && state.live);
    if hide_result {
        ui.label(
            RichText::new("Predict first: the result appears once the class has committed to a guess in the lesson card.")
                .strong(),
        );
        return (false, error);
    }
    let Some(outcome) = &state.result else {
        ui.label("Press \"Attack\" to attack the chosen image.");
        return (run, error);
    };
    if outcome.model != model.id {
        ui.label("The last result is for another model; press \"Attack\".");
    }
    let a = &outcome.attack;
    let name = |c: usize| model.class_name(c);
    let what = format!(
        "{}: {} {} on the {} target, ε = {:.1}/255, {} steps{}",
        outcome.source,
        a.spec.kind,
        if a.spec.kind.is_l2() {
            "(L2)"
        } else {
            "(L∞)"
        },
        a.spec.target,
        a.spec.eps * 255.0,
        a.spec.steps,
        paper_options(&a.spec, ", "),
    );
    ui.label(if projector {
        what
    } else {
        format!(
            "{what} · max |δ| = {:.2}/255, L2 norm of δ = {:.3}",
            a.linf * 255.0,
            a.l2
        )
    });
    if let Some(textures) = &state.textures {
        let shown =
            |p: &Prediction| format!("{} ({:.0}%)", name(p.prediction), 100.0 * p.confidence);
        let side = crate::views::projector::image_side(
            projector,
            picture::magnified_side(textures[0].size()[0], 160.0),
        );
        let images = ui.horizontal_wrapped(|ui| {
            for (texture, caption) in textures.iter().zip([
                format!("Clean: {}", shown(&a.clean)),
                "Perturbation (gray = 0, amplified to ±ε)".to_string(),
                format!("Adversarial: {}", shown(&a.adversarial)),
            ]) {
                ui.vertical(|ui| {
                    ui.set_max_width(side);
                    ui.label(RichText::new(caption).strong());
                    ui.add(egui::Image::new(texture).fit_to_exact_size(egui::vec2(side, side)));
                });
            }
            if projector {
                // Beside the images, where a class sees it without scrolling.
                ui.vertical(|ui| routing_map_ui(ui, a, model.config.model.num_experts, true));
            }
        });
        mark(ui.ctx(), Area::Images, images.response.rect);
    }
    let label_text = if matches!(outcome.source.as_str(), s if s.starts_with("test image")) {
        format!("True label: {}", name(a.label))
    } else {
        format!("Label taken as the clean prediction: {}", name(a.label))
    };
    ui.label(label_text);
    let predictions = ui.scope(|ui| {
        ui.columns(2, |cols| {
            predictions_ui(&mut cols[0], "Clean prediction", &a.clean, &name);
            predictions_ui(
                &mut cols[1],
                "Adversarial prediction",
                &a.adversarial,
                &name,
            );
        });
    });
    mark(ui.ctx(), Area::Predictions, predictions.response.rect);
    if let Some(frozen) = &a.adversarial_with_clean_routes {
        ui.label(format!(
            "With the clean routes kept (the pathway the expert attack aimed at): {} ({:.1}%)",
            name(frozen.prediction),
            100.0 * frozen.confidence
        ));
    }
    if !projector || state.textures.is_none() {
        routing_map_ui(ui, a, model.config.model.num_experts, false);
    }
    (run, error)
}

fn predictions_ui(ui: &mut egui::Ui, title: &str, p: &Prediction, name: &dyn Fn(usize) -> String) {
    ui.label(RichText::new(format!("{title}: {}", name(p.prediction))).strong());
    for (class, prob) in p.top_k(5) {
        ui.add(
            egui::ProgressBar::new(prob)
                .desired_width(ui.available_width().min(320.0))
                .text(format!("{} {:.1}%", name(class), 100.0 * prob)),
        );
    }
}

/// The routing map: one row per MoE layer, one cell per expert; the clean route is outlined
/// in blue, the adversarial route filled in orange, and rows whose route flipped are marked.
/// `compact` (projector mode) leaves out the line that explains the colours.
fn routing_map_ui(
    ui: &mut egui::Ui,
    a: &advmoe_engine::ImageAttack,
    experts: usize,
    compact: bool,
) {
    let map = ui.scope(|ui| routing_map_body(ui, a, experts, compact));
    mark(ui.ctx(), Area::RoutingMap, map.response.rect);
}

fn routing_map_body(
    ui: &mut egui::Ui,
    a: &advmoe_engine::ImageAttack,
    experts: usize,
    compact: bool,
) {
    let flipped = a.flipped();
    if flipped.is_empty() {
        ui.label("Routing map: a dense model has no routes.");
        return;
    }
    let count = flipped.iter().filter(|f| **f).count();
    let title = if compact {
        format!("Routes flipped: {count} of {}", flipped.len())
    } else {
        format!(
            "Routing map: routes flipped in {count} of {} MoE layers",
            flipped.len()
        )
    };
    ui.label(RichText::new(title).strong());
    if !compact {
        ui.label(
            "Rows: MoE layers; columns: experts. Blue outline: clean route; orange: adversarial route.",
        );
    }
    let cell = 22.0;
    let clean_color = Color32::from_rgb(60, 120, 220);
    let adv_color = Color32::from_rgb(240, 150, 40);
    egui::Grid::new("routing map")
        .spacing([4.0, 3.0])
        .show(ui, |ui| {
            ui.label("");
            for e in 0..experts {
                ui.label(format!("E{e}"));
            }
            ui.end_row();
            for (layer, (clean, adv)) in a.route_pairs().enumerate() {
                let flip = clean != adv;
                ui.label(format!("layer {}", layer + 1));
                for e in 0..experts {
                    let (rect, _) =
                        ui.allocate_exact_size(egui::vec2(cell, cell), egui::Sense::hover());
                    let painter = ui.painter();
                    painter.rect_filled(rect, 2.0, ui.visuals().faint_bg_color);
                    if e == adv {
                        painter.rect_filled(rect.shrink(3.0), 2.0, adv_color);
                    }
                    if e == clean {
                        painter.rect_stroke(
                            rect.shrink(1.0),
                            2.0,
                            egui::Stroke::new(2.5, clean_color),
                            egui::StrokeKind::Inside,
                        );
                    }
                }
                if flip {
                    ui.colored_label(
                        ui.visuals().error_fg_color,
                        format!("flipped: expert {clean} to {adv}"),
                    );
                } else {
                    ui.label(format!("kept: expert {clean}"));
                }
                ui.end_row();
            }
        });
}

/// The most steps the lab offers: 100 gradient steps, or 5,000 queries of Square (AutoAttack's
/// budget; each is one forward pass).
fn most_steps(kind: AttackKind) -> usize {
    if kind.uses_gradient() { 100 } else { 5000 }
}
