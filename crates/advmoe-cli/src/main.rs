//! `advmoe`: train, evaluate and inspect mixture-of-experts CNNs from the command line. One
//! module per command under `commands/`; the flags several commands share are in `args`.

mod args;
mod commands;

use clap::{Parser, Subcommand};

use commands::{attack, bench, compare, eval, macs, seeds, train};

/// mimalloc as the allocator: Burn's CPU backend and the CPU kernels allocate a fresh buffer for
/// every tensor operation, and mimalloc reuses freed pages where glibc's malloc hands large
/// blocks back to the system and faults them in again (bench/README.md: an AdvMoE step on the
/// CPU took about 0.75× the time).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (its place in `mi_option_e`; `libmimalloc-sys` names
/// only the options before it): milliseconds before freed pages are given back to the system,
/// -1 for never.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed pages for the rest of the process instead of returning them after 10 ms: a
/// training step frees and reallocates the same buffers every few milliseconds, and fresh pages
/// cost a page fault and a clearing each (measured: an AdvMoE step on the CPU 0.77× the time of
/// mimalloc's default, a PGD-10 batch 0.65×). The resident size stays at its peak, which a step
/// reaches anyway.
#[expect(
    unsafe_code,
    reason = "mimalloc's options are set through its C interface"
)]
fn keep_freed_pages() {
    // SAFETY: mi_option_set stores one value in mimalloc's option table. It is not thread-safe,
    // and it is called first thing in main, while no other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}

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
    /// Summarise the same comparison trained with several seeds: each model's mean and spread,
    /// and AdvMoE's paired gaps seed by seed with a standard error over the seeds; `--add` sets
    /// models trained another way beside them (print the tables; with `--out`, also write
    /// seeds.json and seeds.md).
    Seeds(seeds::SeedsArgs),
    /// Print the analytic inference cost (MACs) of an architecture.
    Macs(args::ModelArgs),
    /// Benchmarks, timed side by side in one run (`bench sparse-conv`).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn main() {
    keep_freed_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Attack(args) => attack::run(args),
        Command::Compare(args) => compare::run(*args),
        Command::Seeds(args) => seeds::run(args),
        Command::Macs(args) => macs::run(&args),
        Command::Bench { command } => bench::run(command),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
