//! `advmoe attack`: attack one test image and write the clean image, the amplified
//! perturbation and the adversarial image as PNGs plus attack.json.

use std::path::{Path, PathBuf};

use advmoe_core::{AttackKind, AttackTarget};
use advmoe_engine::tensors::to_device;
use advmoe_engine::{DeviceChoice, attack_image, block_on, make_device};
use anyhow::{Context as _, bail};
use clap::Args;

use crate::args::{AttackFlags, choice, load_model_and_data};

#[derive(Args)]
pub(crate) struct AttackArgs {
    /// Folder written by `advmoe train`, or a model pair the web app downloaded (either of
    /// `<name>.safetensors` / `<name>.json`).
    #[arg(long)]
    model: PathBuf,
    /// Index of the test image.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Attack algorithm.
    #[arg(long, default_value = "pgd", value_parser = choice::<AttackKind>())]
    attack: AttackKind,
    /// Target: full (whole MoE), router (routing only) or expert (routes frozen).
    #[arg(long, default_value = "full", value_parser = choice::<AttackTarget>())]
    target: AttackTarget,
    #[command(flatten)]
    flags: AttackFlags,
    /// Nearest-neighbour upscaling of the PNGs.
    #[arg(long, default_value_t = 4)]
    scale: usize,
    /// Read the model's real dataset from this folder (or image-folder archive) instead of the
    /// path in its config.
    #[arg(long, alias = "data")]
    data_dir: Option<PathBuf>,
    /// Device: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Seed of the random start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "runs/attack")]
    out: PathBuf,
}

pub(crate) fn run(args: AttackArgs) -> anyhow::Result<()> {
    let device = make_device(args.device).autodiff();
    let (config, model, dataset) =
        load_model_and_data(&args.model, args.data_dir.as_deref(), &device)?;
    let test = &dataset.test;
    if args.index >= test.len() {
        bail!(
            "--index {} is out of range: the test split has {} images",
            args.index,
            test.len()
        );
    }
    let spec = args.flags.spec(args.attack, args.target)?;
    let host = test.batch(args.index, args.index + 1);
    let label = usize::from(host.labels[0]);
    let batch = to_device(&host, config.model.num_classes, &device);
    let result = block_on(attack_image(&model, batch.images, label, &spec, args.seed))?;
    let [c, h, w] = result.shape;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
    for (name, values) in [
        ("clean.png", &result.clean_pixels),
        ("perturbation.png", &result.perturbation_pixels()),
        ("adversarial.png", &result.adversarial_pixels),
    ] {
        let path = args.out.join(name);
        write_png(&path, values, c, h, w, args.scale.max(1))
            .with_context(|| format!("writing {path:?}"))?;
    }
    let mut json = serde_json::json!({
        "model": args.model,
        "index": args.index,
        "label": label,
        "attack": spec,
        "linf": result.linf,
        "l2": result.l2,
        "clean": result.clean,
        "adversarial": result.adversarial,
        "files": ["clean.png", "perturbation.png", "adversarial.png"],
        "perturbation_png": "0.5 + 0.5 * delta / eps (gray = unchanged); for pgd-l2, scaled by the largest |delta|",
    });
    if let (Some(frozen), Some(obj)) = (&result.adversarial_with_clean_routes, json.as_object_mut())
    {
        obj.insert(
            "adversarial_with_clean_routes".into(),
            serde_json::to_value(frozen)?,
        );
    }
    let path = args.out.join("attack.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {path:?}"))?;
    println!("{json}");
    Ok(())
}

/// Write a `[c, h, w]` image with values in [0, 1] as an 8-bit gray (c = 1) or RGB PNG,
/// upscaled `scale` times.
fn write_png(
    path: &Path,
    values: &[f32],
    c: usize,
    h: usize,
    w: usize,
    scale: usize,
) -> anyhow::Result<()> {
    let (sh, sw) = (h * scale, w * scale);
    let out_channels = if c == 1 { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(sh * sw * out_channels);
    for y in 0..sh {
        for x in 0..sw {
            for ch in 0..out_channels {
                let v = values[(ch.min(c - 1) * h + y / scale) * w + x / scale];
                pixels.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, sw as u32, sh as u32);
    encoder.set_color(if c == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&pixels)?;
    Ok(())
}
