//! Guided lessons: short sequences of cards that drive the live app (a model, an image, an
//! attack, a view) and point at the part of the screen to look at. A lesson is a text file
//! (`lessons/*.lesson`, format in `docs/lessons.md`), so a teacher can write one without
//! touching the code; the bundled ones are compiled in ([`BUNDLED`]).
//!
//! Two things keep a lesson honest. Figures quoted in its text are written as
//! `[81.7%](moe-at.robust_acc)`: the text shown, and the recorded figure it quotes, which
//! [`Lesson::check_quotes`] compares (a test does it for the bundled lessons, the app for a
//! teacher's). A "predict first" card's answer is never written in the file: each choice names a
//! condition ([`Condition`]) that the app evaluates on the live attack or the recorded figures
//! once the student has committed to a guess.

use advmoe_engine::ImageAttack;
use advmoe_engine::compare::CompareRow;

use crate::link::Link;

/// The lessons that ship with the app: file name and text.
pub const BUNDLED: [(&str, &str); 4] = [
    (
        "adversarial-example.lesson",
        include_str!("../lessons/adversarial-example.lesson"),
    ),
    (
        "router-only.lesson",
        include_str!("../lessons/router-only.lesson"),
    ),
    (
        "router-collapse.lesson",
        include_str!("../lessons/router-collapse.lesson"),
    ),
    ("advmoe.lesson", include_str!("../lessons/advmoe.lesson")),
];

/// The recorded figures of a model, by its link key ([`crate::link::model_key`]).
pub type Recorded<'r> = dyn Fn(&str) -> Option<&'r CompareRow> + 'r;

/// A part of the screen a card points at (views mark where they drew it,
/// [`crate::views::lesson::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// The attack lab's clean, perturbation and adversarial images.
    Images,
    /// The attack lab's ε slider.
    Eps,
    /// The attack lab's top-5 predictions.
    Predictions,
    /// The attack lab's routing map.
    RoutingMap,
    /// The atlas's expert load and class × expert heat map.
    Heatmap,
    /// The report's table.
    Table,
    /// The report's plots.
    Plots,
}

impl Area {
    /// Every area and the name a lesson file gives it.
    pub const ALL: [(Area, &'static str); 7] = [
        (Area::Images, "images"),
        (Area::Eps, "eps"),
        (Area::Predictions, "predictions"),
        (Area::RoutingMap, "routing-map"),
        (Area::Heatmap, "heatmap"),
        (Area::Table, "table"),
        (Area::Plots, "plots"),
    ];

    fn named(name: &str) -> Option<Area> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }
}

/// A figure recorded for a model ([`CompareRow`]), named in a lesson as `model.figure`, with
/// `@x` for one point of the ε-curve (x in 1/255) or one MoE layer (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// The model's link key ([`crate::link::model_key`]): a demo's folder name.
    pub model: String,
    /// Which figure.
    pub kind: FigureKind,
}

/// The figures a lesson can quote or compare.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FigureKind {
    /// Clean accuracy (a fraction).
    CleanAcc,
    /// Robust accuracy under the recorded attack, or at ε = x/255 on the ε-curve.
    RobustAcc(Option<f32>),
    /// Router robustness, or at ε = x/255.
    RouterRobustness(Option<f32>),
    /// The per-image worst case over the recorded attacks (when the report measured it).
    WorstCaseAcc,
    /// Expert robustness.
    ExpertRobustness,
    /// Route-flip rate, or at ε = x/255.
    RouteFlipRate(Option<f32>),
    /// The share of the test images that layer x's busiest expert takes.
    MaxLoad(usize),
    /// MoE layers whose busiest expert takes at least [`COLLAPSED`] of the images.
    CollapsedLayers,
    /// Layers with routers.
    MoeLayers,
    /// Test images the figures were measured on.
    Images,
}

/// A layer whose busiest expert takes this share of the images counts as collapsed.
pub const COLLAPSED: f64 = 0.95;

impl Figure {
    fn parse(text: &str) -> Result<Figure, String> {
        let (model, rest) = text
            .split_once('.')
            .ok_or_else(|| format!("\"{text}\" is not model.figure"))?;
        let (name, at) = match rest.split_once('@') {
            Some((name, at)) => {
                let at: f32 = at
                    .parse()
                    .map_err(|_| format!("\"{at}\" in \"{text}\" is not a number"))?;
                (name, Some(at))
            }
            None => (rest, None),
        };
        let layer = || match at {
            Some(l) if l >= 1.0 && l.fract() == 0.0 => Ok(l as usize),
            _ => Err(format!("{name} needs @layer (1, 2, …) in \"{text}\"")),
        };
        let none = |kind: FigureKind| match at {
            None => Ok(kind),
            Some(_) => Err(format!("{name} takes no @ in \"{text}\"")),
        };
        let kind = match name {
            "clean_acc" => none(FigureKind::CleanAcc)?,
            "robust_acc" => FigureKind::RobustAcc(at),
            "router_robustness" => FigureKind::RouterRobustness(at),
            "worst_case_acc" => none(FigureKind::WorstCaseAcc)?,
            "expert_robustness" => none(FigureKind::ExpertRobustness)?,
            "route_flip_rate" => FigureKind::RouteFlipRate(at),
            "max_load" => FigureKind::MaxLoad(layer()?),
            "collapsed_layers" => none(FigureKind::CollapsedLayers)?,
            "moe_layers" => none(FigureKind::MoeLayers)?,
            "images" => none(FigureKind::Images)?,
            _ => return Err(format!("no figure \"{name}\" (docs/lessons.md lists them)")),
        };
        Ok(Figure {
            model: model.to_owned(),
            kind,
        })
    }

    /// Its value in `row`, or `None` when the row does not have it.
    pub fn value(&self, row: &CompareRow) -> Option<f64> {
        let r = &row.report;
        let at = |eps: f32| r.sweep.iter().find(|p| (p.eps * 255.0 - eps).abs() < 1e-2);
        let main = |eps: Option<f32>| eps.is_none_or(|e| (r.attack.eps * 255.0 - e).abs() < 1e-2);
        match self.kind {
            FigureKind::CleanAcc => Some(r.clean_acc),
            FigureKind::RobustAcc(eps) if main(eps) => Some(r.robust_acc),
            FigureKind::RobustAcc(eps) => at(eps?).map(|p| p.robust_acc),
            FigureKind::RouterRobustness(eps) if main(eps) => r.router_robustness,
            FigureKind::RouterRobustness(eps) => at(eps?).and_then(|p| p.router_robustness),
            FigureKind::WorstCaseAcc => r.worst_case.as_ref().map(|w| w.robust_acc),
            FigureKind::ExpertRobustness => r.expert_robustness,
            FigureKind::RouteFlipRate(eps) if main(eps) => r.route_flip_rate,
            FigureKind::RouteFlipRate(eps) => at(eps?).and_then(|p| p.route_flip_rate),
            FigureKind::MaxLoad(layer) => r
                .expert_load
                .get(layer - 1)
                .and_then(|l| l.iter().copied().reduce(f64::max)),
            FigureKind::CollapsedLayers => Some(
                r.expert_load
                    .iter()
                    .filter(|l| l.iter().any(|&s| s >= COLLAPSED))
                    .count() as f64,
            ),
            FigureKind::MoeLayers => Some(r.expert_load.len() as f64),
            FigureKind::Images => Some(r.images as f64),
        }
    }

    /// `value` as a lesson's text shows it: a percentage with one decimal, or a count.
    pub fn format(&self, value: f64) -> String {
        match self.kind {
            FigureKind::CollapsedLayers | FigureKind::MoeLayers | FigureKind::Images => {
                format!("{value:.0}")
            }
            _ => format!("{:.1}%", 100.0 * value),
        }
    }
}

/// What a choice of a "predict first" card claims; true or false once the result is in.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// The live attack changed the prediction (`flipped`) or did not (`held`).
    Prediction {
        /// `true` for `flipped`.
        flipped: bool,
    },
    /// The live attack moved at least one route (`routes-flipped`) or none (`routes-held`).
    Routes {
        /// `true` for `routes-flipped`.
        flipped: bool,
    },
    /// A recorded figure compared with another or with a number.
    Compare {
        /// Left side.
        left: Figure,
        /// `true` for `>`, `false` for `<`.
        greater: bool,
        /// Right side.
        right: Operand,
    },
}

/// The right side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// Another figure.
    Figure(Figure),
    /// A number (a fraction for percentages).
    Number(f64),
}

impl Condition {
    fn parse(text: &str) -> Result<Condition, String> {
        let text = text.trim();
        match text {
            "flipped" => return Ok(Condition::Prediction { flipped: true }),
            "held" => return Ok(Condition::Prediction { flipped: false }),
            "routes-flipped" => return Ok(Condition::Routes { flipped: true }),
            "routes-held" => return Ok(Condition::Routes { flipped: false }),
            _ => {}
        }
        let (greater, (left, right)) = match (text.split_once('>'), text.split_once('<')) {
            (Some(parts), None) => (true, parts),
            (None, Some(parts)) => (false, parts),
            _ => {
                return Err(format!(
                    "\"{text}\" is not flipped, held, routes-flipped, routes-held or a comparison \
                     (a < b, a > b)"
                ));
            }
        };
        let right = right.trim();
        let right = match right.parse::<f64>() {
            Ok(n) => Operand::Number(n),
            Err(_) => Operand::Figure(Figure::parse(right)?),
        };
        Ok(Condition::Compare {
            left: Figure::parse(left.trim())?,
            greater,
            right,
        })
    }

    /// Whether a live attack decides it (`false`: the recorded figures do).
    pub fn needs_attack(&self) -> bool {
        !matches!(self, Condition::Compare { .. })
    }

    /// Whether it holds for the live attack `attack` and the recorded figures `rows` gives;
    /// `None` when what it needs is not there.
    pub fn holds(&self, attack: Option<&ImageAttack>, rows: &Recorded<'_>) -> Option<bool> {
        let value = |f: &Figure| f.value(rows(&f.model)?);
        match self {
            Condition::Prediction { flipped } => {
                let a = attack?;
                Some((a.adversarial.prediction != a.clean.prediction) == *flipped)
            }
            Condition::Routes { flipped } => Some(attack?.flipped().contains(&true) == *flipped),
            Condition::Compare {
                left,
                greater,
                right,
            } => {
                let l = value(left)?;
                let r = match right {
                    Operand::Figure(f) => value(f)?,
                    Operand::Number(n) => *n,
                };
                Some(if *greater { l > r } else { l < r })
            }
        }
    }
}

/// One answer of a "predict first" card.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// What the student picks.
    pub text: String,
    /// When it is right.
    pub when: Condition,
}

/// A "predict first" step: the student commits to a choice before the result is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Predict {
    /// The question.
    pub question: String,
    /// Its answers (at least two).
    pub choices: Vec<Choice>,
    /// What the lesson's text after the reveal assumes; the app says so when the live result
    /// disagrees (the lesson is then out of date), and the lesson tests require it.
    pub expect: Option<Condition>,
}

/// One card of a lesson.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    /// Its heading.
    pub title: String,
    /// What it sets, as a link fragment (`view=attack&model=moe-at&eps=8`).
    pub set: Option<Link>,
    /// The part of the screen it points at.
    pub look: Option<Area>,
    /// Its text (paragraphs separated by blank lines), with quotes.
    pub text: String,
    /// A "predict first" step.
    pub predict: Option<Predict>,
    /// Text shown once the prediction is revealed.
    pub after: String,
    /// The card ends the lesson on a figure to keep (it offers the export).
    pub keep: bool,
}

/// A lesson: a title, a summary and its cards.
#[derive(Debug, Clone, PartialEq)]
pub struct Lesson {
    /// Its file's name without `.lesson` (links name lessons by it).
    pub id: String,
    /// Its heading.
    pub title: String,
    /// The text before its first card.
    pub summary: String,
    /// Its cards, in order.
    pub cards: Vec<Card>,
}

/// A quote in a lesson's text that disagrees with the figure it quotes.
#[derive(Debug, Clone, PartialEq)]
pub struct Misquote {
    /// The card's title (or the lesson's, for the summary).
    pub card: String,
    /// What the text says.
    pub shown: String,
    /// The figure quoted.
    pub key: String,
    /// What it is (`None`: no such model or figure recorded).
    pub actual: Option<String>,
}

impl std::fmt::Display for Misquote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.actual {
            Some(actual) => write!(
                f,
                "\"{}\" says {} for {}, which is {actual}",
                self.card, self.shown, self.key
            ),
            None => write!(
                f,
                "\"{}\" quotes {}, which no loaded model records",
                self.card, self.key
            ),
        }
    }
}

impl Lesson {
    /// Read a lesson file named `file_name` (`docs/lessons.md` has the format).
    ///
    /// # Errors
    /// The first problem, with its line number.
    pub fn parse(file_name: &str, text: &str) -> Result<Lesson, String> {
        let id = file_name
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(file_name)
            .trim_end_matches(".lesson")
            .to_owned();
        let at =
            |line: usize, message: String| format!("{file_name}, line {}: {message}", line + 1);
        let mut title = None;
        let mut summary = String::new();
        let mut cards: Vec<Card> = Vec::new();
        let mut after = false;
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if let Some(heading) = trimmed.strip_prefix("## ") {
                if title.is_none() {
                    return Err(at(n, "the file must start with \"# <title>\"".into()));
                }
                cards.push(Card {
                    title: heading.trim().to_owned(),
                    set: None,
                    look: None,
                    text: String::new(),
                    predict: None,
                    after: String::new(),
                    keep: false,
                });
                after = false;
                continue;
            }
            if let Some(heading) = trimmed.strip_prefix("# ") {
                if title.is_some() || !cards.is_empty() {
                    return Err(at(n, "a second \"# \" title".into()));
                }
                title = Some(heading.trim().to_owned());
                continue;
            }
            let Some(card) = cards.last_mut() else {
                if !trimmed.is_empty() && title.is_none() {
                    return Err(at(n, "the file must start with \"# <title>\"".into()));
                }
                add_line(&mut summary, trimmed);
                continue;
            };
            let directive = trimmed.split_once(':').filter(|(key, _)| {
                ["set", "look", "predict", "choice", "expect", "keep"].contains(key)
            });
            match directive {
                Some(("set", value)) => {
                    let parsed = Link::parse(value.trim());
                    if !parsed.dropped.is_empty() {
                        return Err(at(
                            n,
                            format!("set: cannot use {}", parsed.dropped.join(", ")),
                        ));
                    }
                    card.set = Some(parsed.link);
                }
                Some(("look", value)) => {
                    card.look = Some(Area::named(value.trim()).ok_or_else(|| {
                        let names: Vec<&str> = Area::ALL.iter().map(|(_, n)| *n).collect();
                        at(
                            n,
                            format!(
                                "look: \"{}\" is not one of {}",
                                value.trim(),
                                names.join(", ")
                            ),
                        )
                    })?);
                }
                Some(("predict", value)) => {
                    card.predict = Some(Predict {
                        question: value.trim().to_owned(),
                        choices: Vec::new(),
                        expect: None,
                    });
                }
                Some(("choice", value)) => {
                    let predict = card
                        .predict
                        .as_mut()
                        .ok_or_else(|| at(n, "choice: before predict:".into()))?;
                    let (text, when) = value
                        .rsplit_once('|')
                        .ok_or_else(|| at(n, "choice: needs \"<text> | <condition>\"".into()))?;
                    predict.choices.push(Choice {
                        text: text.trim().to_owned(),
                        when: Condition::parse(when).map_err(|e| at(n, e))?,
                    });
                }
                Some(("expect", value)) => {
                    let predict = card
                        .predict
                        .as_mut()
                        .ok_or_else(|| at(n, "expect: before predict:".into()))?;
                    predict.expect = Some(Condition::parse(value).map_err(|e| at(n, e))?);
                }
                Some(("keep", _)) => card.keep = true,
                _ if trimmed == "---" => after = true,
                _ => add_line(
                    if after {
                        &mut card.after
                    } else {
                        &mut card.text
                    },
                    trimmed,
                ),
            }
        }
        let title = title.ok_or_else(|| format!("{file_name}: no \"# <title>\" line"))?;
        if cards.is_empty() {
            return Err(format!("{file_name}: no card (\"## <heading>\")"));
        }
        for card in &cards {
            if let Some(p) = &card.predict {
                if p.choices.len() < 2 {
                    return Err(format!(
                        "{file_name}: the card \"{}\" asks to predict with fewer than two choices",
                        card.title
                    ));
                }
                let live = p.choices.iter().any(|c| c.when.needs_attack());
                let attacks =
                    card.set.as_ref().and_then(|l| l.tab) == Some(crate::command::Tab::Attack);
                if live && !attacks {
                    return Err(format!(
                        "{file_name}: the card \"{}\" asks about an attack but does not set view=attack",
                        card.title
                    ));
                }
            }
        }
        let lesson = Lesson {
            id,
            title,
            summary: summary.trim().to_owned(),
            cards,
        };
        for (_, text) in lesson.texts() {
            for quote in quotes(text) {
                Figure::parse(&quote.key).map_err(|e| format!("{file_name}: {e}"))?;
            }
        }
        Ok(lesson)
    }

    /// Every text of the lesson with the card it belongs to (its title; the lesson's for the
    /// summary).
    fn texts(&self) -> Vec<(&str, &str)> {
        let mut texts = vec![(self.title.as_str(), self.summary.as_str())];
        for card in &self.cards {
            texts.push((&card.title, &card.text));
            texts.push((&card.title, &card.after));
            if let Some(p) = &card.predict {
                texts.push((&card.title, &p.question));
            }
        }
        texts
    }

    /// The quotes whose text differs from the figure they quote, as `rows` gives the recorded
    /// figures of a model by its link key.
    pub fn check_quotes(&self, rows: &Recorded<'_>) -> Vec<Misquote> {
        let mut wrong = Vec::new();
        for (card, text) in self.texts() {
            for quote in quotes(text) {
                let Ok(figure) = Figure::parse(&quote.key) else {
                    continue;
                };
                let actual = rows(&figure.model)
                    .and_then(|row| figure.value(row))
                    .map(|v| figure.format(v));
                if actual.as_deref() != Some(quote.shown.as_str()) {
                    wrong.push(Misquote {
                        card: card.to_owned(),
                        shown: quote.shown,
                        key: quote.key,
                        actual,
                    });
                }
            }
        }
        wrong
    }
}

/// Append a line of a file to a text: lines join with a space, a blank line starts a paragraph.
fn add_line(text: &mut String, line: &str) {
    if line.is_empty() {
        if !text.is_empty() && !text.ends_with("\n\n") {
            text.push_str("\n\n");
        }
    } else {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push(' ');
        }
        text.push_str(line);
    }
}

/// A quote: `[shown](key)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    /// The text shown.
    pub shown: String,
    /// The figure (`model.figure`).
    pub key: String,
}

/// The quotes of a text.
pub fn quotes(text: &str) -> Vec<Quote> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some((shown, tail)) = after.split_once("](") else {
            break;
        };
        let Some((key, next)) = tail.split_once(')') else {
            break;
        };
        if !shown.contains('[') {
            found.push(Quote {
                shown: shown.to_owned(),
                key: key.to_owned(),
            });
            rest = next;
        } else {
            rest = after;
        }
    }
    found
}

/// A text as shown: each quote replaced by its shown text.
pub fn plain(text: &str) -> String {
    let mut out = text.to_owned();
    for q in quotes(text) {
        out = out.replacen(&format!("[{}]({})", q.shown, q.key), &q.shown, 1);
    }
    out
}
