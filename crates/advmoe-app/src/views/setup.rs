//! Setup: dataset, backbone, MoE shape, router, method and its hyper-parameters, with
//! classroom presets.

use advmoe_core::{
    Arch, AttackSpec, DatasetKind, DatasetSpec, MethodKind, ModelSpec, RouterKind, RouterObjective,
    TrainSpec,
};
use advmoe_engine::RunConfig;
use eframe::egui;

use crate::command::AppCommand;
use crate::views::labelled_combo;
use crate::worker::RunOptions;

/// A ready-made configuration for a lesson.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The quick start: a 2-expert ResNet-10, standard training.
    QuickStart,
    /// The same MoE under vanilla adversarial training (`moe-at`, no balance term): watch the
    /// router collapse.
    VanillaAt,
    /// AdvMoE: routers and experts trained in turn, adversarially (ours: the routers minimise
    /// the TRADES loss).
    AdvMoe,
    /// AdvMoE as the paper's released code configures it (`TrainSpec::paper`): class-partition
    /// router objective, SGD 0.1, batch 128, balance 0.1, on the classroom ResNet-10.
    Paper,
    /// A dense TRADES model of the same pathway cost, the baseline.
    DenseTrades,
}

impl Preset {
    /// Every preset, in menu order.
    pub const ALL: [Preset; 5] = [
        Preset::QuickStart,
        Preset::VanillaAt,
        Preset::AdvMoe,
        Preset::Paper,
        Preset::DenseTrades,
    ];

    /// Its name in the menu.
    pub fn label(self) -> &'static str {
        match self {
            Preset::QuickStart => "Quick start (standard MoE)",
            Preset::VanillaAt => "Dense vs MoE: MoE under vanilla AT",
            Preset::AdvMoe => "AdvMoE fixes the routers",
            Preset::Paper => "AdvMoE, the paper's configuration",
            Preset::DenseTrades => "Dense TRADES baseline (same cost)",
        }
    }

    /// The configuration it stands for.
    pub fn config(self) -> RunConfig {
        let mut config = RunConfig {
            model: ModelSpec::resnet(16, 1, 2, 0.5),
            data: DatasetSpec::default(),
            train: TrainSpec::default(),
            balance_weight: 1.0,
        };
        config.train.total_steps = 300;
        config.train.eval_every = 50;
        config.train.eval_size = 200;
        config.train.batch_size = 32;
        match self {
            Preset::QuickStart => config.train.method = MethodKind::Standard,
            Preset::VanillaAt => {
                // The paper's baseline has no balance term (as `compare`'s `moe-at` and the demo
                // model): the term would hide the collapse this preset shows, and with TRADES's
                // β = 6 it held the MoE near chance for its first 100 steps on `synthetic`
                // (docs/results/synthetic-balance-term.md).
                config.train.method = MethodKind::MoeAt;
                config.balance_weight = 0.0;
            }
            Preset::AdvMoe => config.train.method = MethodKind::Advmoe,
            Preset::Paper => {
                config.train = TrainSpec {
                    total_steps: config.train.total_steps,
                    eval_every: config.train.eval_every,
                    eval_size: config.train.eval_size,
                    ..TrainSpec::paper()
                };
                config.balance_weight = 0.1;
            }
            Preset::DenseTrades => {
                config.model.num_experts = 1;
                config.train.method = MethodKind::Trades;
            }
        }
        config
    }
}

/// What the setup view edits.
#[derive(Debug, Clone)]
pub struct SetupState {
    /// The configuration training will start with.
    pub config: RunConfig,
    /// Train on Burn's CPU backend instead of the window's GPU device.
    pub on_cpu: bool,
    /// Test images of the robustness measured at each evaluation (0: none).
    pub robust_images: usize,
    /// Dataset files the user handed over (picked or dropped); the config's data folder
    /// points into them.
    pub data_files: advmoe_data::DataFiles,
}

impl SetupState {
    /// How the worker should run the training.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            on_cpu: self.on_cpu,
            robust_images: self.robust_images,
            files: self.data_files.clone(),
        }
    }
}

impl Default for SetupState {
    fn default() -> Self {
        Self {
            config: Preset::QuickStart.config(),
            on_cpu: false,
            robust_images: 64,
            data_files: advmoe_data::DataFiles::default(),
        }
    }
}

/// One grid row: a label and a combo box over `all` that it names.
fn combo<T: Copy + PartialEq + std::fmt::Display>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut T,
    all: &[T],
) {
    labelled_combo(ui, label, value, all);
    ui.end_row();
}

/// One grid row: a label and the widget it names (for screen readers and UI tests).
/// Whether `config`'s training has the balance term: every MoE method but AdvMoE with the
/// class-partition router objective, whose router step's loss is the partition's cross-entropy
/// and the routers' KL.
fn balance_applies(config: &RunConfig) -> bool {
    !(config.train.method == MethodKind::Advmoe
        && config.train.router_objective == RouterObjective::ClassPartition)
}

fn row(ui: &mut egui::Ui, name: &str, add: impl FnOnce(&mut egui::Ui) -> egui::Response) {
    let label = ui.label(name);
    add(ui).labelled_by(label.id);
    ui.end_row();
}

/// Draw the setup view; `compute` names the GPU device training would share.
pub fn setup_ui(
    ui: &mut egui::Ui,
    state: &mut SetupState,
    busy: bool,
    compute: &str,
) -> Vec<AppCommand> {
    let mut action = None;
    ui.heading("Setup");
    ui.horizontal(|ui| {
        ui.label("Preset:");
        for preset in Preset::ALL {
            if ui.button(preset.label()).clicked() {
                // A preset sets model and training; the dataset chosen stays.
                let data = state.config.data.clone();
                state.config = preset.config();
                state.config.data = data;
            }
        }
    });
    ui.horizontal(|ui| {
        ui.label("With the demo models, no training needed:");
        if ui.button("Attack the router only").clicked() {
            action = Some(AppCommand::RouterOnlyLesson);
        }
    });
    ui.separator();
    let config = &mut state.config;
    egui::Grid::new("setup grid")
        .num_columns(2)
        .spacing([16.0, 6.0])
        .show(ui, |ui| {
            combo(ui, "Dataset", &mut config.data.kind, DatasetKind::ALL);
            if config.data.kind != DatasetKind::Synthetic {
                let mut dir = config.data.data_dir.clone().unwrap_or_default();
                row(ui, "Data folder", |ui| {
                    ui.add(
                        egui::TextEdit::singleline(&mut dir)
                            .hint_text("folder with the dataset files"),
                    )
                });
                config.data.data_dir = (!dir.trim().is_empty()).then(|| dir.trim().to_owned());
            }
            combo(ui, "Backbone", &mut config.model.arch, Arch::ALL);
            row(ui, "Base width b", |ui| {
                ui.add(egui::DragValue::new(&mut config.model.width).range(4..=128))
            });
            row(ui, "Depth d", |ui| {
                ui.add(egui::DragValue::new(&mut config.model.depth).range(1..=2))
            });
            row(ui, "Experts N", |ui| {
                ui.add(egui::DragValue::new(&mut config.model.num_experts).range(1..=8))
            });
            row(ui, "Expert ratio r", |ui| {
                ui.add(
                    egui::DragValue::new(&mut config.model.ratio)
                        .range(0.125..=1.0)
                        .speed(0.01),
                )
            });
            combo(ui, "Router", &mut config.model.router, RouterKind::ALL);
            combo(ui, "Method", &mut config.train.method, MethodKind::ALL);
            row(ui, "Steps", |ui| {
                ui.add(egui::DragValue::new(&mut config.train.total_steps).range(1..=1_000_000))
            });
            row(ui, "Batch size", |ui| {
                ui.add(egui::DragValue::new(&mut config.train.batch_size).range(1..=1024))
            });
            row(ui, "Learning rate", |ui| {
                ui.add(
                    egui::DragValue::new(&mut config.train.lr)
                        .range(1e-5..=1.0)
                        .speed(0.001),
                )
            });
            row(ui, "Evaluate every", |ui| {
                ui.add(egui::DragValue::new(&mut config.train.eval_every).range(1..=100_000))
            });
            row(ui, "NaN recoveries (0: stop)", |ui| {
                ui.add(egui::DragValue::new(&mut config.train.nan_recoveries).range(0..=100))
                    .on_hover_text("On a NaN or infinite loss, roll back to the last checked state, halve the learning rate, skip those batches and go on, this many times")
            });
            if config.train.method.is_adversarial() {
                let mut eps_255 = config.train.attack.eps * 255.0;
                row(ui, "Training attack ε (×1/255)", |ui| {
                    ui.add(
                        egui::DragValue::new(&mut eps_255)
                            .range(0.0..=32.0)
                            .speed(0.5),
                    )
                });
                config.train.attack.eps = eps_255 / 255.0;
                row(ui, "Training attack steps", |ui| {
                    ui.add(egui::DragValue::new(&mut config.train.attack.steps).range(1..=20))
                });
            }
            if config.train.method.uses_beta() {
                row(ui, "KL weight β", |ui| {
                    ui.add(
                        egui::DragValue::new(&mut config.train.beta)
                            .range(0.0..=20.0)
                            .speed(0.1),
                    )
                });
            }
            if config.train.method == MethodKind::Advmoe {
                combo(
                    ui,
                    "Router objective",
                    &mut config.train.router_objective,
                    RouterObjective::ALL,
                );
                if config.train.router_objective == RouterObjective::ClassPartition {
                    row(ui, "Router KL weight α", |ui| {
                        ui.add(
                            egui::DragValue::new(&mut config.train.alpha)
                                .range(0.0..=20.0)
                                .speed(0.1),
                        )
                    });
                    row(ui, "α warm-up (fraction of the run)", |ui| {
                        ui.add(
                            egui::DragValue::new(&mut config.train.router_kl_warmup)
                                .range(0.0..=1.0)
                                .speed(0.05),
                        )
                    });
                }
                row(ui, "Router learning rate × experts'", |ui| {
                    ui.add(
                        egui::DragValue::new(&mut config.train.router_lr_scale)
                            .range(0.01..=100.0)
                            .speed(0.05),
                    )
                    .on_hover_text(
                        "The router optimiser's rate as a multiple of the experts' (same \
                         schedule); 1 is the paper's released code",
                    )
                });
            }
            if config.model.is_moe() {
                let used = balance_applies(config);
                row(ui, "Balance weight", |ui| {
                    ui.add_enabled(
                        used,
                        egui::DragValue::new(&mut config.balance_weight)
                            .range(0.0..=10.0)
                            .speed(0.05),
                    )
                    .on_disabled_hover_text(
                        "AdvMoE's class-partition router objective has no balance term",
                    )
                });
            }
            row(ui, "Robustness images per evaluation (0: off)", |ui| {
                ui.add(egui::DragValue::new(&mut state.robust_images).range(0..=10_000))
                    .on_hover_text(format!(
                        "RA under PGD-10 at 8/255 and router robustness under a quick router attack ({}), measured at every evaluation; the report view measures it under the full one",
                        advmoe_engine::robust::router_attack_name(&AttackSpec::router_progress())
                    ))
            });
            row(ui, "Seed", |ui| {
                ui.add(egui::DragValue::new(&mut config.train.seed))
            });
            ui.label("Device");
            ui.horizontal(|ui| {
                ui.radio_value(&mut state.on_cpu, false, compute);
                ui.radio_value(&mut state.on_cpu, true, "CPU (Burn flex)");
            });
            ui.end_row();
        });
    ui.separator();
    if config.model.is_moe()
        && config.model.router == advmoe_core::RouterKind::PerLayer
        && config.balance_weight > 0.0
        && balance_applies(config)
    {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            "With per-layer routers the balance term hurt training on synthetic (400 steps): at \
             weight 1 it stalled (23–29% clean accuracy), at 0.1 robust accuracy fell to 26–27%, \
             against 64–72% at 0 (docs/results/synthetic-balance-term.md).",
        );
    }
    if config.model.is_moe()
        && config.model.router == RouterKind::Image
        && config.train.method == MethodKind::MoeAt
        && config.balance_weight > 0.0
    {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            "Vanilla MoE AT with the balance term is not the paper's baseline, and the term \
             slows it: on synthetic (weight 1) 15.7% clean accuracy at step 100 against 54.3% \
             without it, its router no longer collapsing; on CIFAR-10 (weight 0.1, 3,000 steps) \
             41.7% against 52.0% (docs/results/synthetic-balance-term.md).",
        );
    }
    if let Err(e) = config.validate() {
        ui.colored_label(ui.visuals().error_fg_color, format!("Invalid setup: {e}"));
        return action.into_iter().collect();
    }
    let label = if busy {
        "Restart training"
    } else {
        "Start training"
    };
    if ui.button(label).clicked() {
        action = Some(AppCommand::StartTraining);
    }
    action.into_iter().collect()
}
