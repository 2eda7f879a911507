//! Routing atlas: for each MoE layer, the class × expert matrix of the test split as a heat map
//! (which classes each expert takes), the expert load, and example test images routed to each
//! expert.

use eframe::egui::{self, Color32, TextureHandle};

use crate::analysis::{Atlas, ModelInfo, Request};
use crate::command::AppCommand;
use crate::lesson::Area;
use crate::picture;
use crate::views::lesson::mark;
use crate::views::model_picker;

/// What the atlas view edits and shows.
pub struct AtlasState {
    /// Library index of the model.
    pub model: Option<usize>,
    /// MoE layer shown (0-based).
    pub layer: usize,
    /// Test images counted (0: all).
    pub limit: usize,
    /// The last atlas computed.
    pub atlas: Option<Atlas>,
    /// `[layer][expert]` example textures of that atlas.
    examples: Vec<Vec<Vec<TextureHandle>>>,
    /// An atlas is being computed.
    pub busy: bool,
    /// The model the last atlas was asked for.
    requested: Option<usize>,
}

impl Default for AtlasState {
    fn default() -> Self {
        Self {
            model: None,
            layer: 0,
            limit: 1000,
            atlas: None,
            examples: Vec::new(),
            busy: false,
            requested: None,
        }
    }
}

impl AtlasState {
    /// Take a finished atlas.
    pub fn accept(&mut self, ctx: &egui::Context, atlas: Atlas) {
        self.examples = atlas
            .examples
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                layer
                    .iter()
                    .enumerate()
                    .map(|(e, images)| {
                        images
                            .iter()
                            .enumerate()
                            .map(|(i, px)| {
                                picture::texture(
                                    ctx,
                                    &format!("atlas {l} {e} {i}"),
                                    picture::color_image_u8(px, atlas.shape),
                                )
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        self.layer = self
            .layer
            .min(atlas.eval.class_expert.len().saturating_sub(1));
        self.atlas = Some(atlas);
        self.busy = false;
    }
}

/// Draw the atlas; asks for it to be computed when the user does. In projector mode its
/// example images are larger.
pub fn atlas_ui(
    ui: &mut egui::Ui,
    state: &mut AtlasState,
    models: &[ModelInfo],
    projector: bool,
) -> Vec<AppCommand> {
    let limit = state.limit;
    atlas_body(ui, state, models, projector)
        .map(|model| AppCommand::ask(Request::Atlas { model, limit }))
        .into_iter()
        .collect()
}

/// The atlas itself; `Some(model)` when it should be computed for that model.
fn atlas_body(
    ui: &mut egui::Ui,
    state: &mut AtlasState,
    models: &[ModelInfo],
    projector: bool,
) -> Option<usize> {
    let mut compute = None;
    ui.heading("Routing atlas");
    model_picker(ui, "Model", &mut state.model, models);
    let Some(model) = state.model.and_then(|m| models.get(m)) else {
        ui.label("No model yet.");
        return None;
    };
    if !model.config.model.is_moe() {
        ui.label(format!(
            "{} is dense: it has no routers to map.",
            model.name
        ));
        return None;
    }
    ui.horizontal(|ui| {
        let label = ui.label("Test images (0: all)");
        ui.add(egui::DragValue::new(&mut state.limit).range(0..=model.test_len))
            .labelled_by(label.id);
        // A model chosen for the first time gets its atlas as soon as the worker is free.
        let first_look = state.requested != Some(model.id);
        if ui.button("Compute atlas").clicked() || (first_look && !state.busy) {
            compute = Some(model.id);
            state.requested = Some(model.id);
            state.busy = true;
        }
        if state.busy {
            ui.spinner();
        }
    });
    let Some(atlas) = state.atlas.as_ref().filter(|a| a.model == model.id) else {
        ui.label("Press \"Compute atlas\" to route the test split through the model.");
        return compute;
    };
    let layers = atlas.eval.class_expert.len();
    ui.horizontal(|ui| {
        let label = ui.label("MoE layer");
        ui.add(
            egui::Slider::new(&mut state.layer, 0..=layers.saturating_sub(1))
                .custom_formatter(|v, _| format!("{}", v as usize + 1)),
        )
        .labelled_by(label.id);
        ui.label(format!(
            "of {layers} · clean accuracy {:.1}% on {} test images",
            100.0 * atlas.eval.clean_acc,
            atlas.eval.images
        ));
    });
    let layer = state.layer.min(layers.saturating_sub(1));
    let (Some(matrix), Some(load)) = (
        atlas.eval.class_expert.get(layer),
        atlas.eval.expert_load.get(layer),
    ) else {
        return compute;
    };
    let experts = load.len();
    let heat = ui.scope(|ui| {
        ui.label(
            egui::RichText::new(format!(
                "Layer {}: expert load {}",
                layer + 1,
                load.iter()
                    .enumerate()
                    .map(|(e, f)| format!("E{e} {:.0}%", 100.0 * f))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .strong(),
        );
        ui.label("Heat map: share of each class's test images routed to each expert.");
        egui::Grid::new("class expert heat map")
            .spacing([3.0, 3.0])
            .show(ui, |ui| {
                ui.label("");
                for e in 0..experts {
                    ui.label(format!("E{e}"));
                }
                ui.end_row();
                for (class, counts) in matrix.iter().enumerate() {
                    let total: usize = counts.iter().sum();
                    ui.label(model.class_name(class));
                    for &count in counts {
                        let share = count as f32 / total.max(1) as f32;
                        let (rect, response) =
                            ui.allocate_exact_size(egui::vec2(54.0, 20.0), egui::Sense::hover());
                        let heat = Color32::from_rgb(
                            (250.0 - 190.0 * share) as u8,
                            (250.0 - 150.0 * share) as u8,
                            (255.0 - 40.0 * share) as u8,
                        );
                        ui.painter().rect_filled(rect, 2.0, heat);
                        ui.painter().text(
                            rect.center(),
                            egui::Align2::CENTER_CENTER,
                            count.to_string(),
                            egui::FontId::monospace(12.0),
                            if share > 0.6 {
                                Color32::WHITE
                            } else {
                                Color32::BLACK
                            },
                        );
                        response
                            .on_hover_text(format!("{count} of {total} ({:.0}%)", 100.0 * share));
                    }
                    ui.end_row();
                }
            });
    });
    mark(ui.ctx(), Area::Heatmap, heat.response.rect);
    ui.label("Example test images routed to each expert, with their classes:");
    let side = crate::views::projector::image_side(
        projector,
        picture::magnified_side(atlas.shape[1], 128.0),
    );
    let class = |c: usize| model.class_name(c);
    if let Some(per_expert) = state.examples.get(layer) {
        for (e, textures) in per_expert.iter().enumerate() {
            ui.label(egui::RichText::new(format!("E{e}")).strong());
            ui.horizontal_wrapped(|ui| {
                if textures.is_empty() {
                    ui.label("(no image routed here)");
                }
                let labels = atlas.example_labels.get(layer).and_then(|l| l.get(e));
                for (i, texture) in textures.iter().enumerate() {
                    ui.vertical(|ui| {
                        ui.set_max_width(side);
                        ui.add(egui::Image::new(texture).fit_to_exact_size(egui::vec2(side, side)));
                        if let Some(&c) = labels.and_then(|l| l.get(i)) {
                            ui.label(class(c));
                        }
                    });
                }
            });
        }
    }
    compute
}
