//! Projector mode, for a class watching one screen: everything drawn 1.5× larger, images at
//! least 256 points on a side, text at full contrast on a plain background (in the light and the
//! dark theme), and the controls only the person at the keyboard needs (file paths, frame
//! timing, the numeric details of a perturbation) hidden.

use eframe::egui::{self, Color32, Theme, Visuals};

/// How much larger everything is drawn.
pub const ZOOM: f32 = 1.5;

/// The smallest side, in points, of an image in projector mode.
pub const IMAGE_SIDE: f32 = 256.0;

/// The side at which an image is drawn: `normal`, or at least [`IMAGE_SIDE`] in projector mode.
pub fn image_side(projector: bool, normal: f32) -> f32 {
    if projector {
        normal.max(IMAGE_SIDE)
    } else {
        normal
    }
}

/// "Dark" and "Light": the theme, in words (the bundled fonts have no theme icons).
pub fn theme_buttons(ui: &mut egui::Ui) {
    let current = ui.ctx().theme();
    for (theme, name) in [(Theme::Dark, "Dark"), (Theme::Light, "Light")] {
        if ui.selectable_label(current == theme, name).clicked() {
            ui.ctx().set_theme(theme);
        }
    }
}

/// Switch the context's zoom and both themes' visuals into or out of projector mode.
pub fn apply(ctx: &egui::Context, on: bool) {
    ctx.set_zoom_factor(if on { ZOOM } else { 1.0 });
    for theme in [Theme::Dark, Theme::Light] {
        let plain = match theme {
            Theme::Dark => Visuals::dark(),
            Theme::Light => Visuals::light(),
        };
        ctx.set_visuals_of(theme, if on { high_contrast(plain) } else { plain });
    }
}

/// `visuals` with text in pure white on black (dark) or black on white (light), and widget
/// outlines drawn in the text colour.
fn high_contrast(mut visuals: Visuals) -> Visuals {
    let (text, background) = if visuals.dark_mode {
        (Color32::WHITE, Color32::BLACK)
    } else {
        (Color32::BLACK, Color32::WHITE)
    };
    visuals.override_text_color = Some(text);
    visuals.panel_fill = background;
    visuals.window_fill = background;
    visuals.extreme_bg_color = background;
    for widget in [
        &mut visuals.widgets.noninteractive,
        &mut visuals.widgets.inactive,
        &mut visuals.widgets.hovered,
        &mut visuals.widgets.active,
    ] {
        widget.fg_stroke.color = text;
        widget.bg_stroke = egui::Stroke::new(widget.bg_stroke.width.max(1.5), text);
    }
    visuals
}
