//! Reliability: a training process killed at random moments (mid-save included) resumes bit for
//! bit, a full disk keeps the previous checkpoint, hostile files are refused within a stated
//! memory bound, and a sample of the fuzz harness (`fuzz.rs`). docs/reliability.md has the
//! figures and the commands of the long runs.
//!
//! Some checks need a process of their own (to be killed, or to measure its peak allocation):
//! the suite runs itself with one ignored `child_*` test selected and an environment variable
//! naming the job. Run alone, those tests do nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use advmoe_core::{MethodKind, Rng, RouterKind};
use advmoe_engine::{COMMIT_FILE, CheckpointSource, Run, RunConfig, RunState};
use advmoe_model::checkpoint::parse_safetensors;
use burn::module::Module as _;

use crate::common::{Scratch, Wait, cpu, small_config, synthetic};

/// The folder a `child_training` process trains in.
const TRAIN_DIR: &str = "ADVMOE_CHILD_TRAIN_DIR";

/// How many steps a `child_training` process may take before it waits to be killed (all, if
/// unset): a chain of killed runs then never reaches the end of its run, however fast the machine.
const STEP_BUDGET: &str = "ADVMOE_CHILD_STEPS";

/// This test binary, running only the test `name` (an ignored child) with `env` set.
fn child(name: &str, env: (&str, &str)) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env.0, env.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// AdvMoE (two optimisers, so the most files) on a tiny model, an evaluation every 5 steps.
fn kill_config() -> RunConfig {
    let mut config = small_config(4, 2, 60);
    config.model.router = RouterKind::PerLayer;
    config.train.method = MethodKind::Advmoe;
    config.train.attack.steps = 1;
    config.train.batch_size = 8;
    config.train.eval_every = 5;
    config.train.eval_size = 16;
    config
}

/// Trains [`kill_config`] in `$ADVMOE_CHILD_TRAIN_DIR`, resuming the checkpoint there if one
/// loads, and checkpoints after every step; after `$ADVMOE_CHILD_STEPS` steps it waits for its
/// kill.
#[test]
#[ignore = "a child process of a_training_run_killed_50_times_resumes_bit_for_bit"]
fn child_training() {
    let Some(dir) = std::env::var_os(TRAIN_DIR).map(PathBuf::from) else {
        return;
    };
    let data = synthetic(64, 16);
    let source = CheckpointSource::Folder(dir.clone());
    let mut run = if source.read("run.json").is_ok() {
        Run::from_checkpoint_with(&source, data, &cpu()).unwrap()
    } else {
        Run::new(kill_config(), data, &cpu()).unwrap()
    };
    let budget = std::env::var(STEP_BUDGET).map_or(usize::MAX, |s| s.parse().unwrap());
    for _ in 0..budget {
        if run.state() != RunState::Running {
            return;
        }
        run.advance(1, &mut |_| true).wait().unwrap();
        // Tells the parent that a save starts now, so that it can kill in the middle of one.
        println!("saving {}", run.step_index());
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        run.save_checkpoint(&dir).wait().unwrap();
    }
    if run.state() == RunState::Running {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Every tensor of a safetensors file, by name: (shape, values as bits). The header's order of
/// metadata keys varies between processes, so files of equal tensors are compared this way.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<u32>)>;

fn tensors(name: &str, bytes: &[u8]) -> Tensors {
    let (tensors, _) = parse_safetensors(Path::new(name), bytes).unwrap();
    tensors
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                (t.shape, t.values.iter().map(|v| v.to_bits()).collect()),
            )
        })
        .collect()
}

/// The evaluations of a finished checkpoint without their wall-clock times, its weights and its
/// optimisers' state.
fn outcome(dir: &Path) -> (Vec<String>, Tensors, Tensors, Tensors) {
    let source = CheckpointSource::Folder(dir.to_path_buf());
    let record: serde_json::Value =
        serde_json::from_slice(&source.read("run.json").unwrap()).unwrap();
    assert_eq!(record["step"], 60, "{dir:?} did not finish");
    let history = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("elapsed_secs");
            e.to_string()
        })
        .collect();
    let read = |name: &str| tensors(name, &source.read(name).unwrap());
    (
        history,
        read("model.safetensors"),
        read("optimizer.safetensors"),
        read("router_optimizer.safetensors"),
    )
}

fn run_to_end(dir: &Path) {
    let out = child(
        "reliability::child_training",
        (TRAIN_DIR, dir.to_str().unwrap()),
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "training child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_training_run_killed_50_times_resumes_bit_for_bit() {
    let reference = Scratch::new("kill-reference");
    run_to_end(&reference);
    let (history, model, optimizer, router_optimizer) = outcome(&reference);
    assert_eq!(history.len(), 12);

    let chain = Scratch::new("kill-chain");
    let data = synthetic(64, 16);
    let mut rng = Rng::seed(19);
    let (mut step, mut mid_save, mut progressed) = (0, 0, 0);
    for kill in 0..50 {
        // A few steps per process, and never the last: the chain must not finish early.
        let budget = (1 + rng.below(3 - kill % 2)).min(59 - step);
        let mut process = child(
            "reliability::child_training",
            (TRAIN_DIR, chain.to_str().unwrap()),
        )
        .env(STEP_BUDGET, budget.to_string())
        .spawn()
        .unwrap();
        if kill % 2 == 0 || budget == 0 {
            // Anywhere: while the test binary starts, loads, trains or saves.
            std::thread::sleep(Duration::from_millis(rng.below(400) as u64));
        } else {
            // In a save: 0-4 ms after the child says that its first or second save starts.
            let stdout = std::io::BufReader::new(process.stdout.take().unwrap());
            let saves = budget;
            let mut lines = std::io::BufRead::lines(stdout)
                .map(Result::unwrap)
                .filter(|line| line.contains("saving "));
            for _ in 0..saves {
                lines.next().expect("the child saves before it ends");
            }
            std::thread::sleep(Duration::from_micros(rng.below(4000) as u64));
        }
        // SIGKILL: no destructor, no flush, no signal handler runs.
        process.kill().ok();
        let status = process.wait().unwrap();
        assert!(
            !status.success(),
            "the run ended before its kill; make it longer"
        );
        let leftovers = std::fs::read_dir(&*chain)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            })
            .unwrap_or(false);
        mid_save += usize::from(leftovers || chain.join(COMMIT_FILE).exists());
        // The newest complete checkpoint loads, and no kill ever loses a committed step.
        let source = CheckpointSource::Folder(chain.to_path_buf());
        if source.read("run.json").is_ok() {
            let run = Run::from_checkpoint_with(&source, data.clone(), &cpu()).unwrap();
            assert!(run.step_index() >= step, "{} < {step}", run.step_index());
            progressed += usize::from(run.step_index() > step);
            step = run.step_index();
        }
    }
    eprintln!(
        "50 kills: {mid_save} left a save unfinished, {progressed} after progress, at step {step} of 60"
    );
    assert!(
        progressed >= 5,
        "too few kills after progress ({progressed}) to test resumption"
    );
    assert!(mid_save >= 10, "too few kills in a save ({mid_save})");
    run_to_end(&chain);
    let (chain_history, chain_model, chain_optimizer, chain_router) = outcome(&chain);
    assert_eq!(chain_history, history);
    assert!(chain_model == model, "the killed run's weights differ");
    assert!(
        chain_optimizer == optimizer,
        "the killed run's optimiser state differs"
    );
    assert!(
        chain_router == router_optimizer,
        "the killed run's router optimiser differs"
    );
}

/// A full disk during a save (a tmpfs with room for one checkpoint and a half): the save fails
/// with an error naming the file, the previous checkpoint still loads at its step, and the
/// failed write leaves none of its files behind.
#[test]
fn a_full_disk_keeps_the_previous_checkpoint() {
    let data = synthetic(64, 16);
    let mut run = Run::new(kill_config(), data.clone(), &cpu()).unwrap();
    run.advance(2, &mut |_| true).wait().unwrap();
    let files = run.checkpoint_files().wait().unwrap();
    let size: usize = files
        .iter()
        .map(|(_, bytes)| bytes.len().div_ceil(4096) * 4096)
        .sum();

    let mount = Scratch::new("full-disk");
    std::fs::create_dir_all(&*mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={}", size * 3 / 2 + 8192))
        .arg("tmpfs")
        .arg(&*mount)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "mounting a tmpfs at {} needs root (CI runs as root)",
        mount.display()
    );
    let unmount = Unmount(mount.to_path_buf());
    let dir = mount.join("run");
    run.save_checkpoint(&dir).wait().unwrap();
    run.advance(2, &mut |_| true).wait().unwrap();
    let err = run.save_checkpoint(&dir).wait().unwrap_err().to_string();
    assert!(
        err.contains(".partial") && err.contains("No space left"),
        "{err}"
    );
    let source = CheckpointSource::Folder(dir.clone());
    let resumed = Run::from_checkpoint_with(&source, data, &cpu()).unwrap();
    assert_eq!(resumed.step_index(), 2);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    drop(resumed);
    drop(unmount);
}

/// Unmounts a tmpfs when dropped (before its folder is removed).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        Command::new("umount").arg(&self.0).status().ok();
    }
}

// ----- hostile files -----

/// The case a `child_hostile` process runs.
const HOSTILE_CASE: &str = "ADVMOE_HOSTILE_CASE";
/// Most bytes any reader may allocate on a hostile file (the largest legitimate allocation among
/// the cases is the 47 MB that a gzip-bombed IDX header for 60,000 MNIST images declares).
const HOSTILE_BOUND: usize = 64 << 20;

/// A PNG whose header says `width × height` (with one tiny, wrong data chunk).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        [
            &(data.len() as u32).to_be_bytes()[..],
            kind,
            data,
            &crc.sum().to_be_bytes(),
        ]
        .concat()
    };
    let ihdr = [
        &width.to_be_bytes()[..],
        &height.to_be_bytes(),
        &[8, 2, 0, 0, 0],
    ]
    .concat();
    let idat = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &[0; 64]).unwrap();
        e.finish().unwrap()
    };
    [
        &b"\x89PNG\r\n\x1a\n"[..],
        &chunk(b"IHDR", &ihdr),
        &chunk(b"IDAT", &idat),
        &chunk(b"IEND", &[]),
    ]
    .concat()
}

/// A valid JPEG whose frame header is patched to say `width × height`.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = crate::fuzz::picture(16, true, false, 1);
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .expect("a baseline JPEG has an SOF0 marker");
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// A tar member header claiming `size` bytes, followed by `present` bytes of zeros.
fn tar_member_claiming(name: &str, size: u64, present: usize) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name).unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    [header.as_bytes().as_slice(), &vec![0; present]].concat()
}

/// Edit a safetensors file's JSON header.
fn edit_header(bytes: &[u8], edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let header = serde_json::to_vec(&header).unwrap();
    [
        &(header.len() as u64).to_le_bytes()[..],
        &header,
        &bytes[8 + n..],
    ]
    .concat()
}

fn image_folder(archive: &str, bytes: Vec<u8>) -> Result<(), String> {
    let (files, dir) = crate::fuzz::in_memory(archive, bytes);
    advmoe_data::read_image_folder(&dir.join(archive), &files)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn idx_images(name: &str, bytes: Vec<u8>) -> Result<(), String> {
    let (files, dir) = crate::fuzz::in_memory(name, bytes);
    advmoe_data::read_idx_images(&dir.join(name), &files)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn user_image(bytes: &[u8]) -> Result<(), String> {
    advmoe_app::picture::fit_user_image(bytes, [3, 32, 32])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn model(config: &[u8], weights: &[u8]) -> Result<(), String> {
    advmoe_engine::load_model_bytes(config, weights, Path::new("hostile"), &cpu())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The hostile cases: each builds its input (not measured), then reads it (measured).
type Case = (
    &'static str,
    fn() -> Box<dyn FnOnce() -> Result<(), String>>,
);

fn hostile_cases() -> Vec<Case> {
    fn with_model(
        edit: fn(&mut serde_json::Value, &mut Vec<u8>),
    ) -> Box<dyn FnOnce() -> Result<(), String>> {
        let (config, weights) = crate::fuzz::model_pair();
        let mut config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        let mut weights = weights;
        edit(&mut config, &mut weights);
        let config = serde_json::to_vec(&config).unwrap();
        Box::new(move || model(&config, &weights))
    }
    vec![
        ("safetensors: a tensor claiming 10^12 values", || {
            with_model(|_, w| {
                *w = edit_header(w, |h| {
                    let (_, t) = h
                        .as_object_mut()
                        .unwrap()
                        .iter_mut()
                        .find(|(k, _)| *k != "__metadata__")
                        .unwrap();
                    t["shape"] = serde_json::json!([1_000_000, 1_000_000]);
                })
            })
        }),
        ("safetensors: overlapping offsets", || {
            with_model(|_, w| {
                *w = edit_header(w, |h| {
                    for (k, t) in h.as_object_mut().unwrap().iter_mut() {
                        if k != "__metadata__" {
                            t["data_offsets"][0] = serde_json::json!(0);
                        }
                    }
                })
            })
        }),
        ("safetensors: header length 2^62", || {
            with_model(|_, w| w[..8].copy_from_slice(&(1u64 << 62).to_le_bytes()))
        }),
        ("config.json: width 10^9", || {
            with_model(|c, _| c["model"]["width"] = serde_json::json!(1_000_000_000u64))
        }),
        ("config.json: 10^6 experts", || {
            with_model(|c, _| c["model"]["num_experts"] = serde_json::json!(1_000_000))
        }),
        (
            "config.json: width 1024 (valid) with the file of a width-2 model",
            || with_model(|c, _| c["model"]["width"] = serde_json::json!(1024)),
        ),
        (
            "gzip bomb: IDX declaring 60,000 images, then 256 MB of zeros",
            || {
                let header = [0, 0, 8, 3, 0, 0, 0xea, 0x60, 0, 0, 0, 28, 0, 0, 0, 28];
                let bomb = crate::fuzz::gzip(&[&header[..], &vec![0; 256 << 20]].concat());
                Box::new(move || idx_images("train-images-idx3-ubyte.gz", bomb))
            },
        ),
        (
            "gzip bomb: IDX declaring 4 × 10^9 × 28 × 28 bytes",
            || {
                let header = [0, 0, 8, 3, 0xee, 0x6b, 0x28, 0, 0, 0, 0, 28, 0, 0, 0, 28];
                let bomb = crate::fuzz::gzip(&[&header[..], &vec![0; 1 << 20]].concat());
                Box::new(move || idx_images("train-images-idx3-ubyte.gz", bomb))
            },
        ),
        (
            "gzip bomb: image-folder tar.gz member claiming 8 GiB",
            || {
                let bomb =
                    crate::fuzz::gzip(&tar_member_claiming("train/cat/0.png", 8 << 30, 16 << 20));
                Box::new(move || image_folder("bomb.tar.gz", bomb))
            },
        ),
        ("gzip bomb: CIFAR tar.gz member claiming 8 GiB", || {
            let bomb = crate::fuzz::gzip(&tar_member_claiming(
                "cifar-10-batches-bin/data_batch_1.bin",
                8 << 30,
                16 << 20,
            ));
            Box::new(move || {
                let (files, dir) = crate::fuzz::in_memory("cifar-10-binary.tar.gz", bomb);
                let spec = advmoe_core::DatasetSpec {
                    kind: advmoe_core::DatasetKind::Cifar10,
                    data_dir: Some(dir.to_string_lossy().into_owned()),
                    ..Default::default()
                };
                advmoe_data::load_from(&spec, &files)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        }),
        ("image folder: a 60,000 × 60,000 PNG", || {
            let tar = crate::fuzz::folder_tar(&[(
                "train/cat/2.png".into(),
                png_claiming(60_000, 60_000),
            )]);
            Box::new(move || image_folder("huge.tar", tar))
        }),
        (
            "image folder: a 60,000 × 60,000 PNG as the first image",
            || {
                let tar = crate::fuzz::folder_tar(&[(
                    "train/aardvark/0.png".into(),
                    png_claiming(60_000, 60_000),
                )]);
                Box::new(move || image_folder("huge.tar", tar))
            },
        ),
        ("image folder: a 60,000 × 60,000 JPEG", || {
            let tar = crate::fuzz::folder_tar(&[(
                "train/cat/2.jpg".into(),
                jpeg_claiming(60_000, 60_000),
            )]);
            Box::new(move || image_folder("huge.tar", tar))
        }),
        ("attack lab: a 60,000 × 60,000 PNG", || {
            let png = png_claiming(60_000, 60_000);
            Box::new(move || user_image(&png))
        }),
        ("attack lab: a 60,000 × 60,000 JPEG", || {
            let jpeg = jpeg_claiming(60_000, 60_000);
            Box::new(move || user_image(&jpeg))
        }),
    ]
}

/// Runs the hostile case `$ADVMOE_HOSTILE_CASE` (an index) and prints its peak allocation and
/// its error.
#[test]
#[ignore = "a child process of hostile_files_are_refused_within_a_memory_bound"]
fn child_hostile() {
    let Some(case) = std::env::var(HOSTILE_CASE)
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    else {
        return;
    };
    let (_, build) = hostile_cases().swap_remove(case);
    let read = build();
    let base = crate::allocated::reset_peak();
    let result = read();
    let peak = crate::allocated::peak() - base;
    let message = match result {
        Ok(()) => "accepted".to_string(),
        Err(e) => e.replace('\n', " "),
    };
    println!("HOSTILE {peak} {message}");
}

#[test]
fn hostile_files_are_refused_within_a_memory_bound() {
    let cases = hostile_cases();
    let mut table = Vec::new();
    for (i, (name, _)) in cases.iter().enumerate() {
        let out = child("reliability::child_hostile", (HOSTILE_CASE, &i.to_string()))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("HOSTILE ").map(|(_, rest)| rest))
            .unwrap_or_else(|| {
                panic!(
                    "{name}: no result ({})",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let (peak, message) = line.split_once(' ').unwrap();
        let peak: usize = peak.parse().unwrap();
        table.push(format!(
            "| {name} | {:.1} | {message} |",
            peak as f64 / (1 << 20) as f64
        ));
        assert!(
            peak < HOSTILE_BOUND,
            "{name}: allocated {peak} bytes ({message})"
        );
        assert!(message != "accepted", "{name}: accepted");
    }
    eprintln!(
        "| hostile file | peak (MiB) | error |\n|---|---|---|\n{}",
        table.join("\n")
    );
}

/// Archive members named `../x` or with an absolute path are never taken, and nothing is written
/// anywhere: the reader only reads.
#[test]
fn archive_members_outside_the_folder_are_ignored() {
    let outside = std::env::temp_dir().join(format!("advmoe-escape-{}", std::process::id()));
    let absolute = format!("{}/train/cat/9.png", outside.display());
    let extra = vec![
        (
            "../escape/train/cat/9.png".to_string(),
            crate::fuzz::picture(8, false, false, 0),
        ),
        (
            absolute.trim_start_matches('/').to_string(),
            crate::fuzz::picture(8, false, false, 0),
        ),
    ];
    let mut tar = crate::fuzz::folder_tar(&[]);
    tar.truncate(tar.len() - 1024);
    for (name, bytes) in &extra {
        let mut header = tar::Header::new_ustar();
        // Written raw, as a hostile archive would be (set_path refuses these names).
        let name = if name.starts_with("tmp") {
            format!("/{name}")
        } else {
            name.clone()
        };
        header.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(bytes);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.extend_from_slice(&[0; 1024]);
    let (files, dir) = crate::fuzz::in_memory("escape.tar", tar);
    let (train, test) = advmoe_data::read_image_folder(&dir.join("escape.tar"), &files).unwrap();
    assert_eq!(
        (train.len(), test.len()),
        (4, 2),
        "the escaping members were taken"
    );
    assert!(!outside.exists());
    assert!(!Path::new("../escape").exists());
}

// ----- NaN and Inf -----

fn nan_config(recoveries: usize) -> RunConfig {
    let mut config = small_config(4, 2, 12);
    config.train.batch_size = 16;
    config.train.eval_every = 4;
    config.train.eval_size = 32;
    config.train.nan_recoveries = recoveries;
    config
}

/// The run's weights are all finite: its evaluation's test loss is.
fn finite(run: &mut Run) -> bool {
    run.evaluate().wait().unwrap().test_loss.is_finite()
}

#[test]
fn a_poisoned_batch_is_rolled_back_and_skipped_or_stops_the_run() {
    let data = synthetic(256, 32);
    // Without recovery: the run stops naming the step, holding the last checked state.
    let mut run = Run::new(nan_config(0), data.clone(), &cpu()).unwrap();
    run.poison_batch_at(5);
    let err = crate::common::try_finish(&mut run).unwrap_err().to_string();
    assert!(err.contains("step 5"), "{err}");
    assert_eq!((run.state(), run.step_index()), (RunState::Failed, 4));
    assert!(finite(&mut run));

    // With recovery: rolled back to step 4, the batches of steps 4-7 skipped, half the rate.
    let mut run = Run::new(nan_config(2), data.clone(), &cpu()).unwrap();
    run.poison_batch_at(5);
    crate::common::try_finish(&mut run).unwrap();
    assert_eq!(run.state(), RunState::Finished);
    let recoveries = run.recoveries().to_vec();
    assert_eq!(recoveries.len(), 1, "{recoveries:?}");
    assert_eq!((recoveries[0].step, recoveries[0].rolled_back_to), (5, 4));
    assert_eq!((recoveries[0].value.as_str(), run.lr_scale()), ("NaN", 0.5));
    let steps: Vec<usize> = run.history().iter().map(|e| e.step).collect();
    assert_eq!(steps, [4, 8, 12]);
    assert!(finite(&mut run));

    // The recovery and the halved rate survive a checkpoint.
    let dir = Scratch::new("nan-resume");
    run.save_checkpoint(&dir).wait().unwrap();
    let source = CheckpointSource::Folder(dir.to_path_buf());
    let resumed = Run::from_checkpoint_with(&source, data, &cpu()).unwrap();
    assert_eq!(
        (resumed.recoveries(), resumed.lr_scale()),
        (&recoveries[..], 0.5)
    );
}

#[test]
fn a_poisoned_weight_and_a_huge_learning_rate_recover() {
    let data = synthetic(256, 32);
    // A weight turned NaN between two advances (a fault in memory, say): back to the checked
    // state from before it.
    let mut run = Run::new(nan_config(1), data.clone(), &cpu()).unwrap();
    run.advance(4, &mut |_| true).wait().unwrap();
    let poisoned = run.model().clone().map(&mut crate::common::Poison::all());
    run.set_model(poisoned);
    crate::common::try_finish(&mut run).unwrap();
    assert_eq!(run.recoveries().len(), 1);
    assert_eq!(run.recoveries()[0].rolled_back_to, 4);
    assert!(finite(&mut run));

    // A learning rate of 10 with weight decay 0.5 multiplies the weights by 1 - 5 = -4 each
    // step. Batch norm hides it from the training loss (batch statistics), not from the
    // evaluation (running statistics), whose router scores overflow: back to the last finite
    // evaluation, and halving the rate until the decay is stable lets the run finish. (With
    // batch norm everywhere, a rate of 10 alone does not diverge in 24 steps.)
    let mut config = nan_config(12);
    config.train.lr = 10.0;
    config.train.weight_decay = 0.5;
    config.train.total_steps = 24;
    let mut run = Run::new(config.clone(), data.clone(), &cpu()).unwrap();
    crate::common::try_finish(&mut run).unwrap();
    assert_eq!(run.state(), RunState::Finished);
    assert!(!run.recoveries().is_empty());
    assert!(finite(&mut run));
    eprintln!(
        "lr 10: {} recoveries, lr now x{}",
        run.recoveries().len(),
        run.lr_scale()
    );
    config.train.nan_recoveries = 0;
    let mut run = Run::new(config, data, &cpu()).unwrap();
    assert!(crate::common::try_finish(&mut run).is_err());
    assert!(finite(&mut run));
}
