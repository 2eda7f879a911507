//! The attack lab's figure as one picture to keep: a caption (model, attack, ε, target, image),
//! the clean image, the amplified perturbation and the adversarial image, both top-5
//! predictions as bars and the routing map, drawn at 2× into a PNG ([`render`]), with its
//! numbers as JSON ([`numbers`]). It is drawn here, pixel by pixel, rather than cut out of a
//! screenshot, so it has the same layout and resolution whatever the window, zoom or theme;
//! text comes from egui's own fonts (the glyph meshes of a laid-out galley, filled from the
//! font atlas).

use eframe::egui::{self, Color32, ColorImage, Pos2, Rect, Vec2, pos2, vec2};
use egui::epaint::text::{FontDefinitions, Fonts, TextOptions};

use crate::analysis::{AttackOutcome, ModelInfo};
use crate::picture;

/// Pixels per point of the exported figure.
pub const SCALE: f32 = 2.0;

/// The side of each of the three images, in points.
pub const IMAGE_SIDE: f32 = 160.0;

/// Margin around the figure and between its parts, in points.
const GAP: f32 = 14.0;

const INK: Color32 = Color32::from_rgb(20, 20, 20);
const FAINT: Color32 = Color32::from_rgb(225, 225, 225);
const CLEAN: Color32 = Color32::from_rgb(60, 120, 220);
const ADVERSARIAL: Color32 = Color32::from_rgb(240, 150, 40);
const FLIPPED: Color32 = Color32::from_rgb(200, 30, 30);

/// Where the figure put its parts, in points (tests check the pixels there).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// The whole figure.
    pub size: Vec2,
    /// The caption's two lines.
    pub caption: Rect,
    /// The clean, perturbation and adversarial images.
    pub images: [Rect; 3],
}

/// A picture being drawn: opaque pixels, `SCALE` per point.
struct Canvas {
    size: [usize; 2],
    pixels: Vec<Color32>,
    fonts: Fonts,
    /// Text laid out so far and where it goes, drawn last (above everything else) from one copy
    /// of the font atlas, once every glyph is in it.
    texts: Vec<(Pos2, std::sync::Arc<egui::Galley>)>,
}

impl Canvas {
    fn new(size: Vec2) -> Self {
        let size = [
            (size.x * SCALE).ceil() as usize,
            (size.y * SCALE).ceil() as usize,
        ];
        Self {
            size,
            pixels: vec![Color32::WHITE; size[0] * size[1]],
            fonts: Fonts::new(TextOptions::default(), FontDefinitions::default()),
            texts: Vec::new(),
        }
    }

    /// The pixels whose centres lie in `rect` (points).
    fn span(&self, rect: Rect) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let px = |v: f32, max: usize| ((v * SCALE - 0.5).ceil().max(0.0) as usize).min(max);
        (
            px(rect.min.x, self.size[0])..px(rect.max.x, self.size[0]),
            px(rect.min.y, self.size[1])..px(rect.max.y, self.size[1]),
        )
    }

    /// Blend a premultiplied colour over pixel (x, y).
    fn blend(&mut self, x: usize, y: usize, src: Color32) {
        if x >= self.size[0] || y >= self.size[1] {
            return;
        }
        let dst = &mut self.pixels[y * self.size[0] + x];
        let keep = 255 - u32::from(src.a());
        let mix = |s: u8, d: u8| (u32::from(s) + u32::from(d) * keep / 255).min(255) as u8;
        *dst = Color32::from_rgb(
            mix(src.r(), dst.r()),
            mix(src.g(), dst.g()),
            mix(src.b(), dst.b()),
        );
    }

    fn fill(&mut self, rect: Rect, color: Color32) {
        let (xs, ys) = self.span(rect);
        for y in ys {
            for x in xs.clone() {
                self.blend(x, y, color);
            }
        }
    }

    fn outline(&mut self, rect: Rect, width: f32, color: Color32) {
        let inner = rect.shrink(width);
        for side in [
            Rect::from_min_max(rect.min, pos2(rect.max.x, inner.min.y)),
            Rect::from_min_max(pos2(rect.min.x, inner.max.y), rect.max),
            Rect::from_min_max(
                pos2(rect.min.x, inner.min.y),
                pos2(inner.min.x, inner.max.y),
            ),
            Rect::from_min_max(
                pos2(inner.max.x, inner.min.y),
                pos2(rect.max.x, inner.max.y),
            ),
        ] {
            self.fill(side, color);
        }
    }

    /// An image scaled into `rect` with nearest-neighbour sampling (its pixels stay square).
    fn image(&mut self, rect: Rect, image: &ColorImage) {
        let (xs, ys) = self.span(rect);
        let [w, h] = image.size;
        for y in ys.clone() {
            let v = ((y - ys.start) * h / ys.len().max(1)).min(h - 1);
            for x in xs.clone() {
                let u = ((x - xs.start) * w / xs.len().max(1)).min(w - 1);
                self.blend(x, y, image.pixels[v * w + u]);
            }
        }
    }

    /// Text with its top-left corner at `pos`.
    fn text(&mut self, pos: Pos2, text: &str, size: f32, color: Color32) {
        let galley = self.fonts.with_pixels_per_point(SCALE).layout_no_wrap(
            text.to_owned(),
            egui::FontId::proportional(size),
            color,
        );
        self.texts.push((pos, galley));
    }

    /// One triangle of a glyph mesh: positions in points from `origin`, texture coordinates in
    /// atlas texels, colours premultiplied.
    fn triangle(&mut self, origin: Pos2, v: [egui::epaint::Vertex; 3], atlas: &ColorImage) {
        let p = v.map(|v| (origin + v.pos.to_vec2()) * SCALE);
        let (min, max) = (
            p.iter()
                .fold(Pos2::new(f32::MAX, f32::MAX), |a, b| a.min(*b)),
            p.iter()
                .fold(Pos2::new(f32::MIN, f32::MIN), |a, b| a.max(*b)),
        );
        let edge =
            |a: Pos2, b: Pos2, c: Pos2| (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x);
        let area = edge(p[0], p[1], p[2]);
        if area.abs() < 1e-6 {
            return;
        }
        let x0 = min.x.floor().max(0.0) as usize;
        let y0 = min.y.floor().max(0.0) as usize;
        let x1 = (max.x.ceil() as usize).min(self.size[0]);
        let y1 = (max.y.ceil() as usize).min(self.size[1]);
        for y in y0..y1 {
            for x in x0..x1 {
                let c = pos2(x as f32 + 0.5, y as f32 + 0.5);
                let w = [
                    edge(p[1], p[2], c) / area,
                    edge(p[2], p[0], c) / area,
                    edge(p[0], p[1], c) / area,
                ];
                if w.iter().any(|w| *w < -1e-4) {
                    continue;
                }
                let uv =
                    v[0].uv.to_vec2() * w[0] + v[1].uv.to_vec2() * w[1] + v[2].uv.to_vec2() * w[2];
                let (u, t) = (uv.x.floor() as usize, uv.y.floor() as usize);
                let coverage = atlas
                    .pixels
                    .get(t * atlas.size[0] + u.min(atlas.size[0] - 1))
                    .map_or(0, |c| c.a());
                let color = v[0].color.linear_multiply(f32::from(coverage) / 255.0);
                self.blend(x, y, color);
            }
        }
    }

    /// The picture, its text drawn over it.
    fn into_image(mut self) -> ColorImage {
        let atlas = self.fonts.image();
        for (pos, galley) in std::mem::take(&mut self.texts) {
            for row in &galley.rows {
                let origin = pos + row.pos.to_vec2();
                let mesh = &row.visuals.mesh;
                for tri in mesh.indices.chunks_exact(3) {
                    let v = [0, 1, 2].map(|i| mesh.vertices[tri[i] as usize]);
                    self.triangle(origin, v, &atlas);
                }
            }
        }
        ColorImage::new(self.size, self.pixels)
    }
}

/// The caption's first line: model, attack, target, ε and image.
pub fn caption(outcome: &AttackOutcome, model: &ModelInfo) -> String {
    let spec = &outcome.attack.spec;
    format!(
        "{} · {} {} on the {} target · ε = {:.1}/255 · {} steps{} · {}",
        model.name,
        spec.kind,
        if spec.kind.is_l2() { "(L2)" } else { "(L∞)" },
        spec.target,
        spec.eps * 255.0,
        spec.steps,
        crate::views::attack::paper_options(spec, " · "),
        outcome.source
    )
}

/// Draw the figure of `outcome` on `model`; also returns where its parts are.
pub fn render(outcome: &AttackOutcome, model: &ModelInfo) -> (ColorImage, Layout) {
    let a = &outcome.attack;
    let name = |c: usize| model.class_name(c);
    let layers = a.clean.routes.len();
    let experts = model.config.model.num_experts;
    let cell = 20.0;
    let map_width = if layers == 0 {
        0.0
    } else {
        60.0 + experts as f32 * (cell + 4.0) + 150.0
    };
    let images_width = 3.0 * IMAGE_SIDE + 2.0 * GAP;
    let bar = (images_width - GAP) / 2.0;
    let width = GAP + images_width + if layers == 0 { 0.0 } else { GAP + map_width } + GAP;
    let map_height = 22.0 + (layers as f32 + 1.0) * (cell + 4.0);
    let top = GAP + 44.0 + GAP;
    let images_bottom = top + 20.0 + IMAGE_SIDE;
    let bars_top = images_bottom.max(top + map_height) + GAP;
    let height = bars_top + 22.0 + 5.0 * 22.0 + GAP;
    let mut canvas = Canvas::new(vec2(width, height));

    let flips = a.flipped().iter().filter(|f| **f).count();
    let shown = |p: &advmoe_engine::Prediction| {
        format!("{} ({:.0}%)", name(p.prediction), 100.0 * p.confidence)
    };
    canvas.text(pos2(GAP, GAP), &caption(outcome, model), 15.0, INK);
    let mut second = format!(
        "Clean: {}, adversarial: {} · true label: {}",
        shown(&a.clean),
        shown(&a.adversarial),
        name(a.label)
    );
    if layers > 0 {
        second.push_str(&format!(
            " · routes flipped in {flips} of {layers} MoE layers"
        ));
    }
    canvas.text(pos2(GAP, GAP + 24.0), &second, 13.0, INK);
    let caption_rect = Rect::from_min_max(pos2(GAP, GAP), pos2(width - GAP, GAP + 44.0));

    let pictures = [
        picture::color_image(&a.clean_pixels, a.shape),
        picture::color_image(&a.perturbation_pixels(), a.shape),
        picture::color_image(&a.adversarial_pixels, a.shape),
    ];
    let titles = ["Clean", "Perturbation (amplified)", "Adversarial"];
    let mut rects = [Rect::NOTHING; 3];
    for (i, (image, title)) in pictures.iter().zip(titles).enumerate() {
        let x = GAP + i as f32 * (IMAGE_SIDE + GAP);
        canvas.text(pos2(x, top), title, 13.0, INK);
        let rect = Rect::from_min_size(pos2(x, top + 20.0), Vec2::splat(IMAGE_SIDE));
        canvas.image(rect, image);
        rects[i] = rect;
    }

    if layers > 0 {
        let x0 = GAP + images_width + GAP;
        canvas.text(
            pos2(x0, top),
            "Routes: blue clean, orange adversarial",
            13.0,
            INK,
        );
        let grid_top = top + 22.0;
        for e in 0..experts {
            let x = x0 + 60.0 + e as f32 * (cell + 4.0);
            canvas.text(pos2(x + 3.0, grid_top), &format!("E{e}"), 12.0, INK);
        }
        for (layer, (clean, adv)) in a.route_pairs().enumerate() {
            let flip = clean != adv;
            let y = grid_top + (layer as f32 + 1.0) * (cell + 4.0);
            canvas.text(
                pos2(x0, y + 3.0),
                &format!("layer {}", layer + 1),
                12.0,
                INK,
            );
            for e in 0..experts {
                let rect = Rect::from_min_size(
                    pos2(x0 + 60.0 + e as f32 * (cell + 4.0), y),
                    Vec2::splat(cell),
                );
                canvas.fill(rect, FAINT);
                if e == adv {
                    canvas.fill(rect.shrink(3.0), ADVERSARIAL);
                }
                if e == clean {
                    canvas.outline(rect.shrink(0.5), 2.5, CLEAN);
                }
            }
            let (text, color) = if flip {
                (format!("flipped: {clean} to {adv}"), FLIPPED)
            } else {
                (format!("kept: {clean}"), INK)
            };
            let x = x0 + 60.0 + experts as f32 * (cell + 4.0) + 6.0;
            canvas.text(pos2(x, y + 3.0), &text, 12.0, color);
        }
    }

    for (column, (title, p)) in [
        ("Clean prediction", &a.clean),
        ("Adversarial prediction", &a.adversarial),
    ]
    .into_iter()
    .enumerate()
    {
        let x = GAP + column as f32 * (bar + GAP);
        canvas.text(
            pos2(x, bars_top),
            &format!("{title}: {}", name(p.prediction)),
            13.0,
            INK,
        );
        for (k, (class, prob)) in p.top_k(5).into_iter().enumerate() {
            let y = bars_top + 22.0 + k as f32 * 22.0;
            let rect = Rect::from_min_size(pos2(x, y), vec2(bar, 18.0));
            canvas.fill(rect, FAINT);
            canvas.fill(
                Rect::from_min_size(rect.min, vec2(bar * prob.clamp(0.0, 1.0), 18.0)),
                if class == a.label { CLEAN } else { ADVERSARIAL },
            );
            canvas.text(
                pos2(x + 4.0, y + 2.0),
                &format!("{} {:.1}%", name(class), 100.0 * prob),
                12.0,
                INK,
            );
        }
    }
    (
        canvas.into_image(),
        Layout {
            size: vec2(width, height),
            caption: caption_rect,
            images: rects,
        },
    )
}

/// The figure's numbers: the model, the attack, the image, both predictions (top 5), the
/// routes and the perturbation's size; `link` reopens the figure in the app.
pub fn numbers(outcome: &AttackOutcome, model: &ModelInfo, link: &str) -> serde_json::Value {
    let a = &outcome.attack;
    let name = |c: usize| model.class_name(c);
    let prediction = |p: &advmoe_engine::Prediction| {
        serde_json::json!({
            "class": p.prediction,
            "name": name(p.prediction),
            "confidence": p.confidence,
            "top5": p.top_k(5).into_iter().map(|(c, prob)| serde_json::json!({
                "class": c, "name": name(c), "probability": prob,
            })).collect::<Vec<_>>(),
            "routes": p.routes,
        })
    };
    serde_json::json!({
        "caption": caption(outcome, model),
        "model": model.name,
        "image": outcome.source,
        "label": { "class": a.label, "name": name(a.label) },
        "attack": a.spec,
        "clean": prediction(&a.clean),
        "adversarial": prediction(&a.adversarial),
        "routes_flipped": a.flipped(),
        "linf": a.linf,
        "l2": a.l2,
        "link": link,
        "scale": SCALE,
    })
}

/// The figure as PNG bytes.
///
/// # Errors
/// If the encoder fails.
pub fn png(image: &ColorImage) -> crate::error::AppResult<Vec<u8>> {
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|p| p.to_array()).collect();
    let mut bytes = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut bytes),
        &rgba,
        image.size[0] as u32,
        image.size[1] as u32,
        image::ExtendedColorType::Rgba8,
    )
    .map_err(|e| crate::error::AppError::Image {
        name: "figure.png".into(),
        reason: format!("cannot be encoded: {e}"),
    })?;
    Ok(bytes)
}

/// File names for the figure: `<model>-<image>-<attack>-<target>-eps<ε>` + `.png` / `.json`.
pub fn file_stem(outcome: &AttackOutcome, model: &ModelInfo) -> String {
    let spec = &outcome.attack.spec;
    let raw = format!(
        "{}-{}-{}-{}-eps{}",
        crate::link::model_key(model),
        outcome.source,
        spec.kind.as_str(),
        spec.target.as_str(),
        (spec.eps * 255.0 * 10.0).round() / 10.0
    );
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}
