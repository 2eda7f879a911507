//! Shareable links: what a teacher sees, as the fragment of the web page's address
//! (`#v=1&view=attack&model=moe-at&image=3&attack=pgd&target=router&eps=8&steps=10&seed=0`).
//! The page keeps its address's fragment up to date and opens the fragment it was loaded with;
//! the desktop app opens the same text (`advmoe-lab --open '<link>'`, or pasted under "Link"),
//! so a lesson can be prepared on either.
//!
//! Every key is optional. A link names its model by the bundled demo's folder name (`moe-at`)
//! or by the model's name in the library. Opening a link from another version takes what it
//! can and says what it dropped: keys this version does not know, values it cannot read, a
//! model that is not in the library.

use advmoe_core::{AttackKind, AttackTarget};

use crate::analysis::{self, ModelInfo};
use crate::command::Tab;
use crate::demo::DEMOS;

/// The link format this version writes (`v=`).
pub const VERSION: u32 = 1;

/// The largest router term β the attack lab offers and a link may hold.
pub const MAX_ROUTER_TERM: f32 = 20.0;

/// The state a link holds; `None`: the link does not say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    /// The view shown.
    pub tab: Option<Tab>,
    /// The attack lab's model ([`model_key`]).
    pub model: Option<String>,
    /// The test image attacked.
    pub image: Option<usize>,
    /// The attack algorithm.
    pub kind: Option<AttackKind>,
    /// Its target.
    pub target: Option<AttackTarget>,
    /// ε in units of 1/255.
    pub eps_255: Option<f32>,
    /// Gradient steps (queries for Square).
    pub steps: Option<usize>,
    /// The attack's random seed.
    pub seed: Option<u64>,
    /// The attack runs through the straight-through gates (written only when on).
    pub through_gates: Option<bool>,
    /// β of the released evaluation's router term (written only when above 0).
    pub router_term: Option<f32>,
    /// Projector mode.
    pub projector: Option<bool>,
    /// The routing atlas's MoE layer (1-based, as the atlas shows it).
    pub layer: Option<usize>,
    /// The lesson open ([`crate::lesson::Lesson::id`]).
    pub lesson: Option<String>,
    /// Its card (1-based).
    pub card: Option<usize>,
}

/// A link as read, and what of it was dropped (one line each, for the user).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// What could be read.
    pub link: Link,
    /// What could not, and why.
    pub dropped: Vec<String>,
}

/// The name a link gives a view.
fn tab_key(tab: Tab) -> &'static str {
    match tab {
        Tab::Setup => "setup",
        Tab::Train => "train",
        Tab::Attack => "attack",
        Tab::Atlas => "atlas",
        Tab::Report => "report",
    }
}

/// The name a link gives a model: a bundled demo's folder name, else its name in the library.
pub fn model_key(model: &ModelInfo) -> String {
    DEMOS
        .iter()
        .find(|d| model.origin == analysis::ORIGIN_DEMO && d.title == model.name)
        .map_or_else(|| model.name.clone(), |d| d.name.to_owned())
}

/// The model of `models` that `key` names.
pub fn find_model<'a>(models: &'a [ModelInfo], key: &str) -> Option<&'a ModelInfo> {
    models.iter().find(|m| model_key(m) == key)
}

impl Link {
    /// Read a link: a whole address (the part after its `#`) or the fragment alone.
    pub fn parse(text: &str) -> Parsed {
        let fragment = text.trim().rsplit_once('#').map_or(text.trim(), |(_, f)| f);
        let mut parsed = Parsed::default();
        let link = &mut parsed.link;
        for pair in fragment.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(raw);
            let ok = match key {
                "v" => value.parse::<u32>().is_ok(),
                "view" => set(
                    &mut link.tab,
                    Tab::ALL
                        .iter()
                        .map(|(t, _)| *t)
                        .find(|t| tab_key(*t) == value),
                ),
                "model" => set(
                    &mut link.model,
                    Some(value.clone()).filter(|v| !v.is_empty()),
                ),
                "image" => set(&mut link.image, value.parse().ok()),
                "attack" => set(
                    &mut link.kind,
                    AttackKind::ALL
                        .iter()
                        .copied()
                        .find(|k| k.as_str() == value),
                ),
                "target" => set(
                    &mut link.target,
                    AttackTarget::ALL
                        .iter()
                        .copied()
                        .find(|t| t.as_str() == value),
                ),
                "eps" => set(
                    &mut link.eps_255,
                    value
                        .parse::<f32>()
                        .ok()
                        .filter(|e| e.is_finite() && (0.0..=255.0).contains(e)),
                ),
                "steps" => set(&mut link.steps, value.parse().ok().filter(|s| *s > 0)),
                "seed" => set(&mut link.seed, value.parse().ok()),
                "gates" => set(&mut link.through_gates, flag(&value)),
                "rterm" => set(
                    &mut link.router_term,
                    value
                        .parse::<f32>()
                        .ok()
                        .filter(|b| b.is_finite() && (0.0..=MAX_ROUTER_TERM).contains(b)),
                ),
                "projector" => set(&mut link.projector, flag(&value)),
                "layer" => set(&mut link.layer, value.parse().ok().filter(|l| *l > 0)),
                "lesson" => set(
                    &mut link.lesson,
                    Some(value.clone()).filter(|v| !v.is_empty()),
                ),
                "card" => set(&mut link.card, value.parse().ok().filter(|c| *c > 0)),
                _ => {
                    parsed.dropped.push(format!("\"{key}\" (not known here)"));
                    continue;
                }
            };
            if !ok {
                parsed.dropped.push(format!("{key} = \"{value}\""));
            }
        }
        parsed
    }

    /// This link with every key `over` has put over it.
    pub fn overlaid(&self, over: &Link) -> Link {
        Link {
            tab: over.tab.or(self.tab),
            model: over.model.clone().or_else(|| self.model.clone()),
            image: over.image.or(self.image),
            kind: over.kind.or(self.kind),
            target: over.target.or(self.target),
            eps_255: over.eps_255.or(self.eps_255),
            steps: over.steps.or(self.steps),
            seed: over.seed.or(self.seed),
            through_gates: over.through_gates.or(self.through_gates),
            router_term: over.router_term.or(self.router_term),
            projector: over.projector.or(self.projector),
            layer: over.layer.or(self.layer),
            lesson: over.lesson.clone().or_else(|| self.lesson.clone()),
            card: over.card.or(self.card),
        }
    }

    /// The fragment, without its `#`: `v=1` and every key the link has, in a fixed order.
    pub fn fragment(&self) -> String {
        let mut pairs = vec![format!("v={VERSION}")];
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                pairs.push(format!("{key}={}", encode(&value)));
            }
        };
        put("view", self.tab.map(|t| tab_key(t).to_owned()));
        put("model", self.model.clone());
        put("image", self.image.map(|i| i.to_string()));
        put("attack", self.kind.map(|k| k.as_str().to_owned()));
        put("target", self.target.map(|t| t.as_str().to_owned()));
        put("eps", self.eps_255.map(|e| e.to_string()));
        put("steps", self.steps.map(|s| s.to_string()));
        put("seed", self.seed.map(|s| s.to_string()));
        put("gates", self.through_gates.map(|g| u8::from(g).to_string()));
        put("rterm", self.router_term.map(|b| b.to_string()));
        put("projector", self.projector.map(|p| u8::from(p).to_string()));
        put("layer", self.layer.map(|l| l.to_string()));
        put("lesson", self.lesson.clone());
        put("card", self.card.map(|c| c.to_string()));
        pairs.join("&")
    }
}

/// A switch as a link writes it: `1` on, `0` off, anything else unreadable.
fn flag(value: &str) -> Option<bool> {
    match value {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// Keep `value` in `slot`; whether there was one.
fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    *slot = value;
    slot.is_some()
}

/// Percent-encode everything but ASCII letters, digits and `-._~`.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Undo [`encode`] (and `+` for a space, as forms write it); a malformed escape stays as it is.
fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
