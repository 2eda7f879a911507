//! The views, one module each. A view reads app state and returns what the user asked for (the
//! app turns that into worker commands); it never touches Burn tensors or blocks on the GPU.

pub mod atlas;
pub mod attack;
pub mod lesson;
pub mod projector;
pub mod report;
pub mod setup;
pub mod train;

use eframe::egui;

use crate::analysis::ModelInfo;

/// A labelled combo box over the library's models; `true` when the choice changed. Picks the
/// first model when none is chosen yet.
pub fn model_picker(
    ui: &mut egui::Ui,
    label: &str,
    selected: &mut Option<usize>,
    models: &[ModelInfo],
) -> bool {
    let before = *selected;
    if selected.is_none_or(|m| m >= models.len()) {
        *selected = models.first().map(|m| m.id);
    }
    ui.horizontal(|ui| {
        let label = ui.label(label);
        let current = selected
            .and_then(|m| models.get(m))
            .map_or("(none)".to_string(), |m| m.name.clone());
        egui::ComboBox::from_id_salt(label.id)
            .selected_text(current)
            .width(320.0)
            .show_ui(ui, |ui| {
                for model in models {
                    ui.selectable_value(selected, Some(model.id), &model.name)
                        .on_hover_text(&model.origin);
                }
            })
            .response
            .labelled_by(label.id);
        if let Some(model) = selected.and_then(|m| models.get(m)) {
            ui.label(format!(
                "{} · {} · {}",
                model.origin, model.config.data.kind, model.config.train.method
            ));
        }
    });
    *selected != before
}

/// A label and a combo box over `all` that it names (for screen readers and UI tests); `true`
/// when the choice changed.
pub fn labelled_combo<T: Copy + PartialEq + std::fmt::Display>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut T,
    all: &[T],
) -> bool {
    let name = ui.label(label);
    let mut changed = false;
    egui::ComboBox::from_id_salt(label)
        .selected_text(value.to_string())
        .show_ui(ui, |ui| {
            for &option in all {
                changed |= ui
                    .selectable_value(value, option, option.to_string())
                    .changed();
            }
        })
        .response
        .labelled_by(name.id);
    changed
}

/// What an "open a file" control says: on the web a button that opens the browser's picker (the
/// page has no paths; the file arrives as bytes through `LabApp::accept_files`, as a drop does),
/// natively a labelled path field and a button.
pub struct OpenFile<'a> {
    /// The web button's text.
    pub web_button: &'a str,
    /// Its hover text.
    pub web_hover: &'a str,
    /// The native path field's label.
    pub label: &'a str,
    /// The path field's hint.
    pub hint: &'a str,
    /// The native button's text.
    pub button: &'a str,
}

/// Draw an [`OpenFile`] control; natively returns the typed path when its button was pressed
/// (the caller reads it), on the web `None` (the picker delivers the file later).
pub fn open_file(
    ui: &mut egui::Ui,
    control: &OpenFile<'_>,
    path: &mut String,
) -> Option<std::path::PathBuf> {
    if crate::platform::WEB {
        if ui
            .button(control.web_button)
            .on_hover_text(control.web_hover)
            .clicked()
        {
            crate::platform::pick_files(ui.ctx());
        }
        return None;
    }
    let label = ui.label(control.label);
    ui.add(egui::TextEdit::singleline(path).hint_text(control.hint))
        .labelled_by(label.id);
    ui.button(control.button)
        .clicked()
        .then(|| std::path::PathBuf::from(path.trim()))
}

/// The `index`-th colour of the plots' palette.
pub fn palette(index: usize) -> egui::Color32 {
    const PALETTE: [egui::Color32; 6] = [
        egui::Color32::from_rgb(80, 150, 240),
        egui::Color32::from_rgb(240, 150, 40),
        egui::Color32::from_rgb(90, 200, 110),
        egui::Color32::from_rgb(220, 90, 200),
        egui::Color32::from_rgb(230, 220, 80),
        egui::Color32::from_rgb(120, 220, 230),
    ];
    PALETTE[index % PALETTE.len()]
}

/// One plot series as a line with a marker on each point, both in the `index`-th palette
/// colour (so a single point shows as a dot, and the legend's entry has one colour).
pub fn series(plot: &mut egui_plot::PlotUi<'_>, name: &str, points: Vec<[f64; 2]>, index: usize) {
    if points.is_empty() {
        return;
    }
    let color = palette(index);
    plot.line(egui_plot::Line::new(name, egui_plot::PlotPoints::from(points.clone())).color(color));
    plot.points(
        egui_plot::Points::new(name, egui_plot::PlotPoints::from(points))
            .radius(3.0)
            .color(color),
    );
}
