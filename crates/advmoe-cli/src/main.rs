//! `advmoe`: train, evaluate and inspect mixture-of-experts CNNs from the command line. One
//! module per command under `commands/`; the flags several commands share are in `args`.

mod args;
mod commands;

use clap::{Parser, Subcommand};

use commands::{attack, bench, compare, eval, macs, train};

/// Train and attack compact mixture-of-experts CNNs (AdvMoE, arXiv 2308.10110).
#[derive(Parser)]
#[command(name = "advmoe", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and write DIR/config.json, DIR/model.safetensors, DIR/metrics.jsonl
    /// (plus optimizer.safetensors and run.json, so `--resume DIR` continues exactly).
    Train(Box<train::TrainArgs>),
    /// Evaluate a trained model on the test split: clean, and with `--attack` the whole
    /// robustness dissection (robust accuracy, router and expert robustness, route flips).
    Eval(eval::EvalArgs),
    /// Attack one test image and write the clean image, the amplified perturbation and the
    /// adversarial image as PNGs plus attack.json (predictions, confidences, routes).
    Attack(attack::AttackArgs),
    /// The AdvMoE paper's comparison: train dense TRADES (full and same-cost width), an MoE with
    /// vanilla MoE AT (without and with the balance term) and an MoE with AdvMoE, evaluate all
    /// with the same attacks, print a markdown table and write compare.json.
    Compare(Box<compare::CompareArgs>),
    /// Print the analytic inference cost (MACs) of an architecture.
    Macs(args::ModelArgs),
    /// Benchmarks, timed side by side in one run (`bench sparse-conv`).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Attack(args) => attack::run(args),
        Command::Compare(args) => compare::run(*args),
        Command::Macs(args) => macs::run(&args),
        Command::Bench { command } => bench::run(command),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
