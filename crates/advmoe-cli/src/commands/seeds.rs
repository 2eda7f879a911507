//! `advmoe seeds`: the same comparison trained with several seeds, summarised (engine's
//! `seeds`): each model's mean and spread, and AdvMoE's gaps seed by seed; with `--add`, models
//! trained another way set beside them and paired with them.

use std::path::{Path, PathBuf};

use advmoe_engine::compare::Comparison;
use advmoe_engine::seeds::{Added, SeedSummary};
use anyhow::{Context as _, bail};
use clap::Args;

#[derive(Args)]
pub(crate) struct SeedsArgs {
    /// The comparisons: each an `advmoe compare` output folder or its compare.json, trained
    /// with the same flags but `--seed`.
    #[arg(required = true, num_args = 1..)]
    comparisons: Vec<PathBuf>,
    /// A model trained another way to set beside the comparisons' models, as NAME=PATH: PATH is
    /// the output folder (or compare.json) of a `compare --models <one>` run with one of the
    /// comparisons' seeds, measured with the same evaluation flags; NAME is what the tables
    /// call it. Repeat it, with the same NAME, for each seed it was trained with.
    #[arg(long, value_name = "NAME=PATH")]
    add: Vec<String>,
    /// Also write seeds.json and seeds.md into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the JSON on stdout instead of the tables.
    #[arg(long)]
    json: bool,
}

/// The comparison at `path`: a folder's compare.json, or the file itself.
fn read_comparison(path: &Path) -> anyhow::Result<Comparison> {
    let file = if path.is_dir() {
        path.join("compare.json")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let comparison = Comparison::from_json(&bytes)
        .with_context(|| format!("{} is not a compare.json", file.display()))?;
    if comparison.rows.is_empty() {
        bail!("{} holds no finished model yet", file.display());
    }
    Ok(comparison)
}

pub(crate) fn run(args: SeedsArgs) -> anyhow::Result<()> {
    let comparisons = args
        .comparisons
        .iter()
        .map(|p| read_comparison(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let added = args
        .add
        .iter()
        .map(|arg| {
            let parts = arg.split_once('=');
            let Some((name, path)) = parts.filter(|(n, p)| !n.is_empty() && !p.is_empty()) else {
                bail!(
                    "--add takes NAME=PATH (a name for the model, then its compare folder), \
                     not {arg:?}"
                );
            };
            Ok((name.to_string(), read_comparison(Path::new(path))?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refs: Vec<&Comparison> = comparisons.iter().collect();
    let added_refs: Vec<Added> = added
        .iter()
        .map(|(name, comparison)| Added { name, comparison })
        .collect();
    let summary = SeedSummary::with_added(&refs, &added_refs).map_err(|e| {
        let named: Vec<String> = args
            .comparisons
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{} = {}", i + 1, p.display()))
            .collect();
        anyhow::anyhow!("{e} (comparisons: {})", named.join(", "))
    })?;
    let markdown = summary.markdown();
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("seeds.json"), serde_json::to_vec_pretty(&summary)?)?;
        std::fs::write(out.join("seeds.md"), &markdown)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{markdown}");
    }
    Ok(())
}
