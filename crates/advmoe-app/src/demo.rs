//! The bundled demo models: three small checkpoints trained by `advmoe compare` on the built-in
//! `synthetic` data (dense TRADES, an MoE under vanilla MoE AT, an MoE under AdvMoE), so a class
//! can attack and compare before training anything. The native app compiles them in; the web
//! build fetches them from the page's `demo/` folder (`web/build.sh` copies this crate's `demo/`
//! there), which keeps their 2.4 MB out of the wasm. `demo/README.md` has the command that regenerates
//! them; `demo/compare.json` holds what that command measured.

use std::borrow::Cow;

use advmoe_engine::compare::CompareRow;

/// One bundled model.
#[derive(Debug, Clone, Copy)]
pub struct Demo {
    /// Its entry name in `advmoe compare` (and its folder under `demo/`).
    pub name: &'static str,
    /// What the lab calls it.
    pub title: &'static str,
}

/// The bundled models, in the order the lab lists them.
pub const DEMOS: [Demo; 3] = [
    Demo {
        name: "dense-full-trades",
        title: "Demo: dense ResNet-10, TRADES",
    },
    Demo {
        name: "moe-at",
        title: "Demo: MoE, vanilla MoE AT",
    },
    Demo {
        name: "advmoe",
        title: "Demo: MoE, AdvMoE",
    },
];

impl Demo {
    /// Its `config.json` and `model.safetensors`.
    ///
    /// # Errors
    /// On the web, if the page's `demo/<name>/` files cannot be fetched.
    pub async fn files(&self) -> crate::error::AppResult<(Cow<'static, [u8]>, Cow<'static, [u8]>)> {
        crate::platform::demo_files(self.name).await
    }
}

/// What `advmoe compare` wrote when it trained them.
pub const COMPARE_JSON: &str = include_str!("../demo/compare.json");

/// The recorded measurements of the bundled model `name`.
///
/// # Errors
/// If the bundled `compare.json` cannot be read (a build packaging mistake).
pub fn recorded_row(name: &str) -> crate::error::AppResult<Option<CompareRow>> {
    #[derive(serde::Deserialize)]
    struct Compare {
        rows: Vec<CompareRow>,
    }
    let compare: Compare = serde_json::from_str(COMPARE_JSON).map_err(|e| {
        crate::error::AppError::Refused(format!(
            "the bundled demo/compare.json is unreadable (a packaging mistake): {e}"
        ))
    })?;
    Ok(compare.rows.into_iter().find(|r| r.name == name))
}
