//! `advmoe seeds`: the same comparison trained with several seeds, summarised (engine's
//! `seeds`): each model's mean and spread, and AdvMoE's gaps seed by seed.

use std::path::{Path, PathBuf};

use advmoe_engine::compare::Comparison;
use advmoe_engine::seeds::SeedSummary;
use anyhow::{Context as _, bail};
use clap::Args;

#[derive(Args)]
pub(crate) struct SeedsArgs {
    /// The comparisons: each an `advmoe compare` output folder or its compare.json, trained
    /// with the same flags but `--seed`.
    #[arg(required = true, num_args = 1..)]
    comparisons: Vec<PathBuf>,
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
    let refs: Vec<&Comparison> = comparisons.iter().collect();
    let summary = SeedSummary::of(&refs).map_err(|e| {
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
