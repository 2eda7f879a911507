//! The bundled demo models: three small checkpoints trained by `advmoe compare` on the built-in
//! `synthetic` data (dense TRADES, an MoE under vanilla MoE AT, an MoE under AdvMoE), compiled
//! into the app so a class can attack and compare before training anything. `demo/README.md`
//! has the command that regenerates them; `demo/compare.json` holds what that command measured.

use advmoe_engine::compare::CompareRow;

/// One bundled model.
#[derive(Debug, Clone, Copy)]
pub struct Demo {
    /// Its entry name in `advmoe compare` (and its folder under `demo/`).
    pub name: &'static str,
    /// What the lab calls it.
    pub title: &'static str,
    /// `config.json`.
    pub config_json: &'static [u8],
    /// `model.safetensors`.
    pub model_safetensors: &'static [u8],
}

macro_rules! demo {
    ($name:literal, $title:literal) => {
        Demo {
            name: $name,
            title: $title,
            config_json: include_bytes!(concat!("../demo/", $name, "/config.json")),
            model_safetensors: include_bytes!(concat!("../demo/", $name, "/model.safetensors")),
        }
    };
}

/// The bundled models, in the order the lab lists them.
pub const DEMOS: [Demo; 3] = [
    demo!("dense-full-trades", "Demo: dense ResNet-10, TRADES"),
    demo!("moe-at", "Demo: MoE, vanilla MoE AT"),
    demo!("advmoe", "Demo: MoE, AdvMoE"),
];

/// What `advmoe compare` wrote when it trained them.
pub const COMPARE_JSON: &str = include_str!("../demo/compare.json");

/// The recorded measurements of the bundled model `name`.
///
/// # Errors
/// If the bundled `compare.json` cannot be read (a build packaging mistake).
pub fn recorded_row(name: &str) -> Result<Option<CompareRow>, String> {
    #[derive(serde::Deserialize)]
    struct Compare {
        rows: Vec<CompareRow>,
    }
    let compare: Compare = serde_json::from_str(COMPARE_JSON)
        .map_err(|e| format!("the bundled demo/compare.json is unreadable: {e}"))?;
    Ok(compare.rows.into_iter().find(|r| r.name == name))
}
