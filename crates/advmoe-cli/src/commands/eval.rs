//! `advmoe eval`: clean accuracy, cost and expert load of a trained model, and with `--attack`
//! the robustness dissection (robust accuracy, router and expert robustness, route flips,
//! ε-curves, the per-image worst case).

use std::path::PathBuf;

use advmoe_core::{AttackKind, AttackSpec, count_macs};
use advmoe_engine::eval::{EvalOptions, evaluate};
use advmoe_engine::robust::{
    LadderOptions, RobustOptions, RobustReport, RouterRung, evaluate_robust, router_ladder,
};
use advmoe_engine::{DeviceChoice, block_on, make_device};
use burn::module::Module as _;
use clap::Args;

use crate::args::{
    AttackFlags, RouterAttackFlags, WorstCaseFlags, choice, load_model_and_data, parse_fraction,
    pct, progress_bar,
};

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Folder written by `advmoe train`, or a model pair the web app downloaded (either of
    /// `<name>.safetensors` / `<name>.json`).
    #[arg(long)]
    model: PathBuf,
    /// Device: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Read the model's real dataset from this folder (or image-folder archive) instead of the
    /// path in its config.
    #[arg(long, alias = "data")]
    data_dir: Option<PathBuf>,
    /// Evaluate only the first N test images (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Images per batch (default: 250 clean, 100 under attack).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Attack algorithm. Without it only clean accuracy is measured.
    #[arg(long, value_parser = choice::<AttackKind>())]
    attack: Option<AttackKind>,
    #[command(flatten)]
    flags: AttackFlags,
    /// Radii of the ε-curves, comma separated (e.g. 1/255,2/255,4/255,8/255).
    #[arg(long, value_delimiter = ',', value_parser = parse_fraction)]
    eps_sweep: Vec<f32>,
    /// Seed of the attacks' random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    worst: WorstCaseFlags,
    #[command(flatten)]
    router: RouterAttackFlags,
    /// Measure router robustness under ever stronger router attacks at --eps (PGD on
    /// --router-loss, aimed at each router: 5 steps × 1 start, 10 × 1, 20 × 1, the default
    /// 20 × 2, then 40 × 2 and 20 × 4), to show whether the router attack has converged.
    #[arg(long)]
    router_ladder: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.attack.is_none() && args.worst.needs_attack() {
        anyhow::bail!(
            "--worst-case, --partition-routes and --per-image measure under attack: add --attack (e.g. --attack pgd)"
        );
    }
    let device = make_device(args.device);
    let (config, model, dataset) =
        load_model_and_data(&args.model, args.data_dir.as_deref(), &device)?;
    if args.worst.partition_routes && !config.model.is_moe() {
        anyhow::bail!("--partition-routes forces an MoE model's routes; this model is dense");
    }
    let macs = count_macs(&config.model);
    let started = std::time::Instant::now();
    let result = block_on(evaluate(
        &model,
        &dataset.test,
        &EvalOptions {
            batch_size: args.batch_size.unwrap_or(250),
            limit: args.limit,
            ..EvalOptions::default()
        },
        &device,
    ))?;
    let clean_secs = started.elapsed().as_secs_f64();
    let mut json = serde_json::json!({
        "model": args.model,
        "device": args.device,
        "dataset": config.data.kind,
        "images": result.images,
        "clean_acc": result.clean_acc,
        "test_loss": result.test_loss,
        "macs_pathway": macs.pathway,
        "macs_pathway_with_router": macs.pathway_with_router,
        "macs_all_experts": macs.all_experts,
        "macs_dense": macs.dense,
        "moe_layers": macs.moe_layers,
        "expert_load": result.expert_load,
        "eval_secs": clean_secs,
        "images_per_sec": result.images as f64 / clean_secs.max(1e-9),
    });
    let attackable = model.fork(&device.clone().autodiff());
    let robust = match args.attack {
        None => None,
        Some(kind) => {
            let options = RobustOptions {
                eps_sweep: args.eps_sweep.clone(),
                batch_size: args.batch_size.unwrap_or(100),
                limit: args.limit,
                seed: args.seed,
                worst_case: args
                    .worst
                    .attacks(kind, args.flags.eps, config.model.num_classes)?,
                partition_routes: args.worst.partition_routes,
                per_image: args.worst.per_image,
                ..args.flags.robust_options(kind, &args.router)?
            };
            let bar = progress_bar(result.images, "images attacked");
            let report = block_on(evaluate_robust(
                &attackable,
                &dataset.test,
                &options,
                &device,
                &mut |done, _| bar.set_position(done as u64),
            ))?;
            bar.finish_and_clear();
            Some(report)
        }
    };
    let ladder = if args.router_ladder {
        let bar = progress_bar(result.images, "images, router ladder");
        let options = LadderOptions {
            rungs: AttackSpec::router_ladder(args.flags.eps)
                .into_iter()
                .map(|rung| AttackSpec {
                    loss: args.flags.dissection_router_loss(),
                    ..rung
                })
                .collect(),
            limit: args.limit,
            batch_size: args.batch_size.unwrap_or(100),
            seed: args.seed,
        };
        let rungs = block_on(router_ladder(
            &attackable,
            &dataset.test,
            &options,
            &device,
            &mut |done, _| bar.set_position(done as u64),
        ))?;
        bar.finish_and_clear();
        if rungs.is_empty() {
            anyhow::bail!("--router-ladder needs an MoE model; this one is dense");
        }
        json["router_ladder"] = serde_json::to_value(&rungs)?;
        Some(rungs)
    } else {
        None
    };
    if let (Some(report), Some(obj)) = (&robust, json.as_object_mut()) {
        let extra = serde_json::to_value(report)?;
        if let Some(extra) = extra.as_object() {
            for (k, v) in extra {
                if k != "expert_load" {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if args.json {
        println!("{json}");
        return Ok(());
    }
    println!(
        "{}: clean accuracy {:.2}% on {} test images ({:.0} images/s on {})",
        args.model.display(),
        100.0 * result.clean_acc,
        result.images,
        result.images as f64 / clean_secs.max(1e-9),
        args.device
    );
    println!(
        "cost: {:.4} GMACs per image ({:.4} with router; all experts {:.4}; dense {:.4})",
        macs.pathway as f64 / 1e9,
        macs.pathway_with_router as f64 / 1e9,
        macs.all_experts as f64 / 1e9,
        macs.dense as f64 / 1e9
    );
    for (i, layer) in result.expert_load.iter().enumerate() {
        let l: Vec<String> = layer
            .iter()
            .map(|f| format!("{:5.1}%", 100.0 * f))
            .collect();
        println!("MoE layer {:>2}: {}", i + 1, l.join(" "));
    }
    if let Some(r) = &robust {
        print_robust(r);
    }
    if let Some(rungs) = &ladder {
        print_ladder(rungs);
    }
    Ok(())
}

fn print_ladder(rungs: &[RouterRung]) {
    let loss = rungs
        .first()
        .map_or("kl", |r| r.attack.loss.as_str())
        .to_uppercase();
    println!("router robustness under ever stronger router attacks (PGD on the routers' {loss}):");
    for rung in rungs {
        let a = &rung.attack;
        println!(
            "  {:>4} steps × {} start{} (step {:.2}/255)  {:.2}%",
            a.steps,
            a.restarts,
            if a.restarts == 1 { " " } else { "s" },
            a.step_size * 255.0,
            100.0 * rung.router_robustness
        );
    }
    if let [.., default, more_steps, more_starts] = rungs {
        println!(
            "  against the default ({} × {}): twice the steps lower it by {:.2} points, twice the starts by {:.2}",
            default.attack.steps,
            default.attack.restarts,
            100.0 * (default.router_robustness - more_steps.router_robustness),
            100.0 * (default.router_robustness - more_starts.router_robustness)
        );
    }
}

fn print_robust(r: &RobustReport) {
    let a = &r.attack;
    println!(
        "attack {} ε={:.4} steps={} step={:.4} restarts={} loss={}{}{}{}:",
        a.kind,
        a.eps,
        a.steps,
        a.step_size,
        a.restarts,
        a.loss,
        a.targeted
            .map_or(String::new(), |t| format!(" targeted={t}")),
        if a.through_gates {
            " through the straight-through gates (weaker than the exact gradient)"
        } else {
            ""
        },
        if a.router_term > 0.0 {
            format!(
                " + {} × the routers' cross-entropy against the class partition",
                a.router_term
            )
        } else {
            String::new()
        }
    );
    println!("  robust accuracy     {:.2}%", 100.0 * r.robust_acc);
    if let Some(w) = &r.worst_case {
        let names: Vec<&str> = w.each.iter().map(|(name, _)| name.as_str()).collect();
        println!(
            "  worst case (RA)     {:.2}%  (per image, over {})",
            100.0 * w.robust_acc,
            names.join(", ")
        );
        for (name, acc) in &w.each {
            println!("    {name:<28} {:.2}%", 100.0 * acc);
        }
    }
    if let Some(p) = &r.partition_routes {
        let robust = advmoe_engine::robust::headline_label(r.worst_case.is_some());
        let all = p.all();
        println!(
            "  routes forced to y mod N (SA % / {robust} %): {} on all {}; {} on the {} the router sends there; {} on the other {}",
            all.accuracies(),
            all.images,
            p.follows.accuracies(),
            p.follows.images,
            p.rest.accuracies(),
            p.rest.images
        );
        println!(
            "  routes shifted to (y + 1) mod N, SA %: {} (on the {} the router sends to y mod N / on the other {})",
            p.shifted_accuracies(),
            p.follows.images,
            p.rest.images
        );
    }
    println!("  route flips (full)  {}", pct(r.route_flip_rate));
    let router_attack = r.router_attack.as_ref().map_or(String::new(), |a| {
        format!("  ({})", advmoe_engine::robust::router_attack_name(a))
    });
    println!(
        "  router robustness   {}{router_attack}",
        pct(r.router_robustness)
    );
    println!("  expert robustness   {}", pct(r.expert_robustness));
    for p in &r.sweep {
        println!(
            "  ε={:.4}: robust {:.2}%  route flips {}  router robustness {}",
            p.eps,
            100.0 * p.robust_acc,
            pct(p.route_flip_rate),
            pct(p.router_robustness)
        );
    }
    println!("  ({} images, {:.1} s)", r.images, r.secs);
}
