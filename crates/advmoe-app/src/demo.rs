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
    /// `config.json` and `model.safetensors`, compiled in.
    #[cfg(not(target_arch = "wasm32"))]
    embedded: (&'static [u8], &'static [u8]),
}

#[cfg(not(target_arch = "wasm32"))]
macro_rules! demo {
    ($name:literal, $title:literal) => {
        Demo {
            name: $name,
            title: $title,
            embedded: (
                include_bytes!(concat!("../demo/", $name, "/config.json")),
                include_bytes!(concat!("../demo/", $name, "/model.safetensors")),
            ),
        }
    };
}

#[cfg(target_arch = "wasm32")]
macro_rules! demo {
    ($name:literal, $title:literal) => {
        Demo {
            name: $name,
            title: $title,
        }
    };
}

/// The bundled models, in the order the lab lists them.
pub const DEMOS: [Demo; 3] = [
    demo!("dense-full-trades", "Demo: dense ResNet-10, TRADES"),
    demo!("moe-at", "Demo: MoE, vanilla MoE AT"),
    demo!("advmoe", "Demo: MoE, AdvMoE"),
];

impl Demo {
    /// Its `config.json` and `model.safetensors`.
    ///
    /// # Errors
    /// On the web, if the page's `demo/<name>/` files cannot be fetched.
    pub async fn files(&self) -> Result<(Cow<'static, [u8]>, Cow<'static, [u8]>), String> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            Ok((
                Cow::Borrowed(self.embedded.0),
                Cow::Borrowed(self.embedded.1),
            ))
        }
        #[cfg(target_arch = "wasm32")]
        {
            let fetch = |file: &str| crate::web::fetch_bytes(format!("demo/{}/{file}", self.name));
            let config = fetch("config.json").await?;
            let model = fetch("model.safetensors").await?;
            Ok((Cow::Owned(config), Cow::Owned(model)))
        }
    }
}

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
