//! The lesson panel: the open lesson's card beside the live views, its "predict first" step
//! (a choice committed before the result is shown, then judged on the live result), and the
//! outline around the part of the screen the card points at (views [`mark`] where they drew it).

use eframe::egui::{self, Color32, RichText};

use crate::analysis::{AttackOutcome, ModelInfo};
use crate::command::AppCommand;
use crate::lesson::{self, Area, Card, Lesson, Recorded};

/// What the lesson panel edits and shows.
#[derive(Default)]
pub struct LessonState {
    /// The lessons offered: the bundled ones, then those opened.
    pub lessons: Vec<Lesson>,
    /// The lesson open (an index into `lessons`) and its card.
    pub open: Option<(usize, usize)>,
    /// The choice picked on a "predict first" card.
    pub choice: Option<usize>,
    /// The choice is committed: the result may be shown.
    pub committed: bool,
    /// The attack (its request's sequence number) whose result the card waits for.
    pub awaiting: Option<u64>,
    /// The judged prediction, once the result is in.
    pub revealed: Option<Reveal>,
}

/// A "predict first" card's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Reveal {
    /// Whether each choice is right (`None`: what it needs is missing).
    pub right: Vec<Option<bool>>,
    /// What happened, in words.
    pub what: String,
    /// The card's `expect:` held (`None`: it has none); `false` means the lesson's text after
    /// the reveal is out of date for these models.
    pub expected: Option<bool>,
}

impl LessonState {
    /// The bundled lessons, or an error naming a bundled file that does not read (a packaging
    /// mistake the lesson tests catch first).
    pub fn bundled() -> (Self, Option<String>) {
        let mut state = Self::default();
        let mut errors = Vec::new();
        for (name, text) in lesson::BUNDLED {
            match Lesson::parse(name, text) {
                Ok(l) => state.lessons.push(l),
                Err(e) => errors.push(e),
            }
        }
        (state, (!errors.is_empty()).then(|| errors.join("; ")))
    }

    /// The open lesson and card.
    pub fn current(&self) -> Option<(&Lesson, &Card)> {
        let (l, c) = self.open?;
        let lesson = self.lessons.get(l)?;
        Some((lesson, lesson.cards.get(c)?))
    }

    /// The lesson `id`'s index.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.lessons.iter().position(|l| l.id == id)
    }

    /// Forget the last card's prediction.
    pub fn reset_prediction(&mut self) {
        self.choice = None;
        self.committed = false;
        self.awaiting = None;
        self.revealed = None;
    }

    /// Whether the open card waits for the class's prediction (its result is hidden).
    pub fn hides_result(&self) -> bool {
        self.current().is_some_and(|(_, c)| c.predict.is_some()) && self.revealed.is_none()
    }

    /// Judge the committed prediction once its result is in: the attack awaited (if any) has
    /// come back as `attack`.
    pub fn judge(
        &mut self,
        attack: Option<&AttackOutcome>,
        rows: &Recorded<'_>,
        names: &dyn Fn(usize) -> String,
    ) {
        if !self.committed || self.revealed.is_some() {
            return;
        }
        let live = match (self.awaiting, attack) {
            (None, _) => None,
            (Some(seq), Some(outcome)) if outcome.seq == seq => Some(&outcome.attack),
            // Still attacking.
            _ => return,
        };
        let Some((_, card)) = self.current() else {
            return;
        };
        let Some(predict) = &card.predict else {
            return;
        };
        let right = predict
            .choices
            .iter()
            .map(|c| c.when.holds(live, rows))
            .collect();
        let expected = predict.expect.as_ref().and_then(|e| e.holds(live, rows));
        let what = match live {
            Some(a) => {
                let shown = |p: &advmoe_engine::Prediction| {
                    format!("{} ({:.0}%)", names(p.prediction), 100.0 * p.confidence)
                };
                let flips = a.flipped().iter().filter(|f| **f).count();
                let routes = if a.flipped().is_empty() {
                    String::new()
                } else {
                    format!(
                        "; routes flipped in {flips} of {} MoE layers",
                        a.flipped().len()
                    )
                };
                if a.adversarial.prediction == a.clean.prediction {
                    format!(
                        "The prediction held: {} before, {} after{routes}.",
                        shown(&a.clean),
                        shown(&a.adversarial)
                    )
                } else {
                    format!(
                        "The prediction flipped: {} before, {} after{routes}.",
                        shown(&a.clean),
                        shown(&a.adversarial)
                    )
                }
            }
            None => "From the figures recorded when the models were trained.".into(),
        };
        self.revealed = Some(Reveal {
            right,
            what,
            expected,
        });
    }
}

/// Where a view drew `area` this frame, for the lesson's outline.
pub fn mark(ctx: &egui::Context, area: Area, rect: egui::Rect) {
    ctx.data_mut(|d| d.insert_temp(area_id(area), rect));
}

/// Where `area` was last drawn, if it was.
pub fn marked(ctx: &egui::Context, area: Area) -> Option<egui::Rect> {
    ctx.data(|d| d.get_temp(area_id(area)))
}

/// Forget where areas were drawn (each frame starts with none).
pub fn clear_marks(ctx: &egui::Context) {
    for (area, _) in Area::ALL {
        ctx.data_mut(|d| d.remove::<egui::Rect>(area_id(area)));
    }
}

fn area_id(area: Area) -> egui::Id {
    egui::Id::unique(("lesson area", area))
}

/// The outline's colour: seen on the dark and the light theme, and on a projector.
pub const OUTLINE: Color32 = Color32::from_rgb(255, 120, 0);

/// Draw an outline around the area the open card points at, above everything; whether it was
/// on screen this frame.
pub fn outline(ctx: &egui::Context, area: Area) -> bool {
    let Some(rect) = marked(ctx, area) else {
        return false;
    };
    let painter = ctx.layer_painter(egui::LayerId::new(
        egui::Order::Foreground,
        egui::Id::unique("lesson outline"),
    ));
    painter.rect_stroke(
        rect.expand(6.0),
        6.0,
        egui::Stroke::new(4.0, OUTLINE),
        egui::StrokeKind::Outside,
    );
    true
}

/// The "Lessons" menu: every lesson, to start it.
pub fn menu_ui(ui: &mut egui::Ui, state: &LessonState) -> Option<AppCommand> {
    let mut command = None;
    ui.menu_button("Lessons", |ui| {
        for (i, l) in state.lessons.iter().enumerate() {
            if ui
                .button(&l.title)
                .on_hover_text(lesson::plain(&l.summary))
                .clicked()
            {
                command = Some(AppCommand::ShowCard(i, 0));
                ui.close();
            }
        }
        ui.separator();
        ui.label("A lesson of your own: drop its .lesson file on the window (docs/lessons.md).");
    });
    command
}

/// The panel of the open card; what it asks of the app.
pub fn panel_ui(
    ui: &mut egui::Ui,
    state: &mut LessonState,
    models: &[ModelInfo],
    attack_busy: bool,
) -> Vec<AppCommand> {
    let mut commands = Vec::new();
    let Some((l, c)) = state.open else {
        return commands;
    };
    let Some(lesson) = state.lessons.get(l) else {
        return commands;
    };
    let Some(card) = lesson.cards.get(c) else {
        return commands;
    };
    let rows = |key: &str| crate::link::find_model(models, key).and_then(|m| m.recorded.as_ref());
    ui.heading(&lesson.title);
    ui.label(format!("Card {} of {}", c + 1, lesson.cards.len()));
    // The app checks a lesson's quotes against the recorded figures of the loaded models.
    if !models.is_empty() {
        for wrong in lesson.check_quotes(&rows) {
            ui.colored_label(ui.visuals().warn_fg_color, format!("Out of date: {wrong}"));
        }
    }
    ui.separator();
    ui.label(RichText::new(&card.title).strong().size(18.0));
    paragraphs(ui, &card.text);
    let last = c + 1 == lesson.cards.len();
    let mut may_go_on = true;
    if let Some(predict) = &card.predict {
        ui.add_space(6.0);
        ui.label(RichText::new("Predict first").strong());
        ui.label(lesson::plain(&predict.question));
        for (i, choice) in predict.choices.iter().enumerate() {
            let verdict = state
                .revealed
                .as_ref()
                .and_then(|r| r.right.get(i).copied().flatten());
            let text = match verdict {
                Some(true) => format!("{}  (right)", choice.text),
                Some(false) => format!("{}  (wrong)", choice.text),
                None => choice.text.clone(),
            };
            ui.add_enabled_ui(!state.committed, |ui| {
                ui.radio_value(&mut state.choice, Some(i), text);
            });
        }
        if !state.committed {
            may_go_on = false;
            if ui
                .add_enabled(state.choice.is_some(), egui::Button::new("Commit and show"))
                .on_disabled_hover_text("Pick an answer first")
                .clicked()
            {
                commands.push(AppCommand::RevealPrediction);
            }
        } else if let Some(reveal) = &state.revealed {
            ui.label(RichText::new(&reveal.what).strong());
            if let Some(choice) = state.choice {
                match reveal.right.get(choice).copied().flatten() {
                    Some(true) => ui.label("Your prediction was right."),
                    Some(false) => {
                        ui.label("Your prediction was wrong: that is what this lesson is about.")
                    }
                    None => ui.label("This result cannot judge that answer."),
                };
            }
            if reveal.expected == Some(false) {
                ui.colored_label(
                    ui.visuals().warn_fg_color,
                    "Out of date: the lesson's text below expected the other result on these models.",
                );
            }
            paragraphs(ui, &card.after);
        } else {
            may_go_on = false;
            ui.horizontal(|ui| {
                if attack_busy {
                    ui.spinner();
                }
                ui.label("Waiting for the result…");
            });
        }
    }
    if card.keep {
        ui.add_space(6.0);
        ui.label(RichText::new("Keep this figure").strong());
        ui.horizontal(|ui| {
            if ui
                .button("Copy link")
                .on_hover_text("Opens this card with the same model, image and attack")
                .clicked()
            {
                commands.push(AppCommand::CopyLink);
            }
            if card.set.as_ref().and_then(|s| s.tab) == Some(crate::command::Tab::Attack)
                && ui
                    .button("Export this figure")
                    .on_hover_text("The attack lab's figure as a PNG at 2× with a caption, and its numbers as JSON")
                    .clicked()
            {
                commands.push(AppCommand::ExportFigure);
            }
        });
    }
    ui.add_space(8.0);
    ui.horizontal(|ui| {
        if ui.add_enabled(c > 0, egui::Button::new("Back")).clicked() {
            commands.push(AppCommand::ShowCard(l, c - 1));
        }
        let next = if last { "Finish" } else { "Next" };
        if ui
            .add_enabled(may_go_on, egui::Button::new(next))
            .on_disabled_hover_text("Commit to a prediction first")
            .clicked()
        {
            commands.push(if last {
                AppCommand::LeaveLesson
            } else {
                AppCommand::ShowCard(l, c + 1)
            });
        }
        if !last && ui.button("Leave lesson").clicked() {
            commands.push(AppCommand::LeaveLesson);
        }
    });
    commands
}

/// A lesson text as labels, a paragraph each, quotes shown as their text.
fn paragraphs(ui: &mut egui::Ui, text: &str) {
    for paragraph in lesson::plain(text).split("\n\n").filter(|p| !p.is_empty()) {
        ui.label(paragraph);
    }
}
