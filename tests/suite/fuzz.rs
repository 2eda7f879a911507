//! A fuzz harness on stable Rust for every reader a user can reach: the IDX (raw and gzip) and
//! CIFAR binary readers, CIFAR's `.tar.gz`, image folders (a folder, a `.tar`, a `.tar.gz`), the
//! attack lab's PNG/JPEG images, a model's `config.json` + `model.safetensors` (also what the
//! browser's model pair holds), and a run checkpoint's `run.json`, `config.json` and optimiser
//! files.
//!
//! Inputs are valid files changed by structure-aware mutations (a JSON value, a safetensors
//! header, a tar header with its checksum recomputed or not, a gzip stream's payload) and
//! byte-level ones (bit flips, interesting integers, cuts, inserts, splices). Each input runs
//! under `catch_unwind` while a watchdog waits; the goal is 0 panics, 0 hangs, and every error
//! naming its file. A panic or hang writes its input under the system's temporary folder
//! (`advmoe-fuzz-findings/`), from which it becomes a regression test.
//!
//! `fuzz_sample_of_every_reader` runs 100 inputs per reader in the suite; the full run is
//! `fuzz_every_reader` (ignored), with `ADVMOE_FUZZ_INPUTS` inputs per reader (100,000 unless
//! set) and, for the run-checkpoint readers, one training step after every
//! `ADVMOE_FUZZ_STEP_EVERY`-th input that loads (every one unless set); docs/reliability.md has
//! the command.

use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use advmoe_core::{DatasetKind, DatasetSpec, MethodKind, Rng};
use advmoe_data::{CifarVariant, DataFiles, read_cifar_bytes, read_idx_images, read_idx_labels};
use advmoe_engine::{CheckpointSource, Run, load_model_bytes};
use serde_json::{Value, json};

use crate::common::{Scratch, Wait, cpu, small_config, synthetic};

/// A mutator: a new input from a seed (and the other seeds, for splices).
type Mutate = fn(&mut Rng, &[u8], &[Vec<u8>]) -> Vec<u8>;
/// A reader under test: `Err` carries the error message shown to the user.
type Reader = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

struct Target {
    name: &'static str,
    /// Every error message must name one of these files.
    files: &'static [&'static str],
    seeds: Vec<Vec<u8>>,
    mutate: Mutate,
    /// Whether inputs are gzip-compressed after mutation (and sometimes mutated again after).
    gzip: bool,
    read: Reader,
}

/// What one target's run found.
#[derive(Debug, Default)]
pub struct Findings {
    pub inputs: usize,
    pub accepted: usize,
    pub refused: usize,
    pub panics: Vec<String>,
    pub unnamed: Vec<String>,
    pub slowest_secs: f64,
    pub secs: f64,
}

const HANG_SECS: u64 = 20;

fn findings_dir() -> PathBuf {
    std::env::temp_dir().join("advmoe-fuzz-findings")
}

fn run_target(target: &Target, inputs: usize, seed: u64) -> Findings {
    let mut rng = Rng::seed(seed);
    let mut found = Findings::default();
    let started = Instant::now();
    // The watchdog: a reader busy on one input for HANG_SECS is a hang.
    let current = Arc::new(Mutex::new(Vec::new()));
    let busy_since = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (current, busy_since, done) = (current.clone(), busy_since.clone(), done.clone());
        let name = target.name;
        std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    let since = busy_since.load(Ordering::SeqCst);
                    let now = started.elapsed().as_millis() as u64;
                    if since > 0 && now.saturating_sub(since) > HANG_SECS * 1000 {
                        let path =
                            findings_dir().join(format!("{}-hang.bin", name.replace(' ', "-")));
                        std::fs::create_dir_all(findings_dir()).ok();
                        std::fs::write(&path, &*current.lock().unwrap()).ok();
                        eprintln!(
                            "fuzz {name}: an input ran {HANG_SECS} s (a hang); saved in {path:?}"
                        );
                        std::process::abort();
                    }
                }
            })
            .unwrap()
    };
    for _ in 0..inputs {
        let seed_bytes = &target.seeds[rng.below(target.seeds.len())];
        let mut input = (target.mutate)(&mut rng, seed_bytes, &target.seeds);
        if target.gzip {
            input = gzip(&input);
            if rng.below(4) == 0 {
                byte_mutation(&mut rng, &mut input, &[]);
            }
        }
        current.lock().unwrap().clone_from(&input);
        let t = Instant::now();
        busy_since.store(
            started.elapsed().as_millis().max(1) as u64,
            Ordering::SeqCst,
        );
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.read)(&input)));
        busy_since.store(0, Ordering::SeqCst);
        found.slowest_secs = found.slowest_secs.max(t.elapsed().as_secs_f64());
        found.inputs += 1;
        match result {
            Ok(Ok(())) => found.accepted += 1,
            Ok(Err(message)) => {
                found.refused += 1;
                if !target.files.iter().any(|f| message.contains(f)) && found.unnamed.len() < 5 {
                    found.unnamed.push(message);
                }
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let path = findings_dir().join(format!(
                    "{}-panic-{}.bin",
                    target.name.replace(' ', "-"),
                    found.panics.len()
                ));
                std::fs::create_dir_all(findings_dir()).ok();
                std::fs::write(&path, &input).ok();
                found
                    .panics
                    .push(format!("{message} (input saved in {})", path.display()));
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    watchdog.join().ok();
    found.secs = started.elapsed().as_secs_f64();
    found
}

// ----- mutations -----

const INTERESTING: [u32; 9] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

fn byte_mutation(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    let len = data.len();
    let at = |rng: &mut Rng| rng.below(len.max(1));
    match rng.below(8) {
        0 if len > 0 => {
            let i = at(rng);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = at(rng);
            data[i] = INTERESTING[rng.below(INTERESTING.len())] as u8;
        }
        2 if len >= 4 => {
            let i = rng.below(len - 3);
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let bytes = if rng.coin() {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            data[i..i + 4].copy_from_slice(&bytes);
        }
        3 => data.truncate(rng.below(len + 1)),
        4 if len > 0 => {
            let i = at(rng);
            let end = (i + 1 + rng.below(64)).min(len);
            data.drain(i..end);
        }
        5 => {
            let i = rng.below(len + 1);
            let extra: Vec<u8> = (0..1 + rng.below(64))
                .map(|_| rng.next_u64() as u8)
                .collect();
            data.splice(i..i, extra);
        }
        6 if len > 0 => {
            let i = at(rng);
            let end = (i + 1 + rng.below(256)).min(len);
            let chunk = data[i..end].to_vec();
            let j = rng.below(len + 1);
            data.splice(j..j, chunk);
        }
        _ => {
            if let Some(other) = others.get(rng.below(others.len().max(1))) {
                data.truncate(rng.below(len + 1));
                data.extend_from_slice(&other[rng.below(other.len() + 1)..]);
            }
        }
    }
}

fn mutate_bytes(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        byte_mutation(rng, &mut data, others);
    }
    data
}

fn interesting_value(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(1),
        3 => json!(1_000_000_000u64),
        4 => json!(u64::MAX),
        5 => json!(1e300),
        6 => json!(-1.5),
        7 => json!(0.5),
        8 => Value::Null,
        9 => json!("x"),
        10 => json!([]),
        11 => json!({}),
        12 => json!(true),
        _ => json!(1u64 << 40),
    }
}

fn mutate_value(rng: &mut Rng, value: &mut Value) {
    let children = match value {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        _ => 0,
    };
    if children > 0 && rng.below(5) != 0 {
        let i = rng.below(children);
        match value {
            Value::Array(a) => {
                if rng.below(8) == 0 {
                    let copy = a[i].clone();
                    a.push(copy);
                } else {
                    mutate_value(rng, &mut a[i]);
                }
            }
            Value::Object(o) => {
                if rng.below(8) == 0 {
                    let key = o.keys().nth(i).cloned().unwrap_or_default();
                    o.remove(&key);
                } else if let Some(child) = o.values_mut().nth(i) {
                    mutate_value(rng, child);
                }
            }
            _ => {}
        }
        return;
    }
    *value = match value {
        Value::Number(n) if rng.coin() => {
            // A nearby number: off by one, doubled, negated.
            let x = n.as_f64().unwrap_or(0.0);
            json!([x + 1.0, x - 1.0, x * 2.0, -x, x * 1e6][rng.below(5)])
        }
        _ => interesting_value(rng),
    };
}

fn mutate_json(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(seed) {
        Ok(mut value) if rng.below(5) != 0 => {
            for _ in 0..1 + rng.below(3) {
                mutate_value(rng, &mut value);
            }
            serde_json::to_vec(&value).unwrap()
        }
        _ => mutate_bytes(rng, seed, others),
    }
}

/// The safetensors header (8-byte length, JSON) mutated as JSON, or the data as bytes.
fn mutate_safetensors(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let n = seed
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
        .unwrap_or(usize::MAX);
    if n > seed.len() - 8 || rng.below(4) == 0 {
        return mutate_bytes(rng, seed, others);
    }
    let (header, data) = seed[8..].split_at(n);
    match rng.below(3) {
        0 => {
            let mut data = data.to_vec();
            byte_mutation(rng, &mut data, &[]);
            [&seed[..8 + n], &data].concat()
        }
        choice => {
            let header = mutate_json(rng, header, &[]);
            let len = if choice == 1 { header.len() } else { n } as u64;
            [&len.to_le_bytes()[..], &header, data].concat()
        }
    }
}

/// A tar archive's header fields (name, size, type; the checksum recomputed three times in
/// four, so most mutations get past it) or a member's content.
fn mutate_tar(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let headers: Vec<usize> = (0..seed.len() / 512)
        .map(|b| b * 512)
        .filter(|&o| &seed[o + 257..o + 262] == b"ustar")
        .collect();
    if headers.is_empty() || rng.below(5) == 0 {
        return mutate_bytes(rng, seed, others);
    }
    let mut data = seed.to_vec();
    let o = headers[rng.below(headers.len())];
    match rng.below(5) {
        0 => {
            const NAMES: [&str; 8] = [
                "../x/train/a/0.png",
                "/tmp/advmoe-fuzz-absolute/train/a/0.png",
                "train/a/../../../x.png",
                "train/a\u{0}b/0.png",
                "test/zebra/0.png",
                "train/.hidden/0.png",
                "train/a/0.png/more",
                "./train/b/9.png",
            ];
            let name = NAMES[rng.below(NAMES.len())].as_bytes();
            data[o..o + 100].fill(0);
            data[o..o + name.len()].copy_from_slice(name);
        }
        1 => {
            let size: u64 = [0, 1, 511, 512, 1 << 20, 1 << 33, (1 << 33) - 1][rng.below(7)];
            let field = format!("{size:011o}\0");
            data[o + 124..o + 136].copy_from_slice(&field.as_bytes()[field.len() - 12..]);
        }
        2 => data[o + 156] = b"0125LxgK\0"[rng.below(9)],
        3 => {
            let i = o + rng.below(512);
            data[i] = rng.next_u64() as u8;
        }
        _ => {
            let i = (o + 512 + rng.below(512)).min(data.len() - 1);
            data[i] ^= 1 << rng.below(8);
        }
    }
    if rng.below(4) != 0 {
        data[o + 148..o + 156].fill(b' ');
        let sum: u32 = data[o..o + 512].iter().map(|&b| u32::from(b)).sum();
        data[o + 148..o + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
    data
}

/// Gzip `bytes` (fast level).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ----- valid files -----

fn tar(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn idx_images() -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 8, 0, 0, 0, 8];
    bytes.extend((0..640).map(|i| i as u8));
    bytes
}

fn idx_labels() -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 1, 0, 0, 0, 10];
    bytes.extend(0..10);
    bytes
}

fn cifar_records(labels: &[u8]) -> Vec<u8> {
    labels
        .iter()
        .flat_map(|&l| std::iter::once(l).chain((0..3072).map(move |i| (i as u8) ^ l)))
        .collect()
}

/// A `side × side` picture as PNG or JPEG, colour or grey.
pub fn picture(side: u32, jpeg: bool, grey: bool, shade: u8) -> Vec<u8> {
    let rgb = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([shade ^ (x * 20) as u8, (y * 30) as u8, shade])
    });
    let img = if grey {
        image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(rgb).to_luma8())
    } else {
        image::DynamicImage::ImageRgb8(rgb)
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let format = if jpeg {
        image::ImageFormat::Jpeg
    } else {
        image::ImageFormat::Png
    };
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn folder_members() -> Vec<(String, Vec<u8>)> {
    vec![
        ("train/cat/0.png".into(), picture(8, false, false, 1)),
        ("train/cat/1.jpg".into(), picture(8, true, false, 2)),
        ("train/dog/0.png".into(), picture(8, false, true, 3)),
        ("train/dog/1.png".into(), picture(8, false, false, 4)),
        ("test/cat/0.jpg".into(), picture(8, true, false, 5)),
        ("test/dog/0.png".into(), picture(8, false, false, 6)),
    ]
}

/// A tiny AdvMoE run's checkpoint files after two steps.
fn run_checkpoint() -> Vec<(String, Vec<u8>)> {
    let mut config = small_config(2, 2, 40);
    config.train.method = MethodKind::Advmoe;
    config.train.attack.steps = 1;
    config.train.batch_size = 4;
    config.train.eval_every = 40;
    config.train.eval_size = 8;
    let mut run = Run::new(config, synthetic(64, 16), &cpu()).unwrap();
    run.advance(2, &mut |_| true).wait().unwrap();
    run.checkpoint_files()
        .wait()
        .unwrap()
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect()
}

fn replaced(files: &[(String, Vec<u8>)], name: &str, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|(n, b)| {
            (
                n.clone(),
                if n == name { bytes.to_vec() } else { b.clone() },
            )
        })
        .collect()
}

fn file(files: &[(String, Vec<u8>)], name: &str) -> Vec<u8> {
    files.iter().find(|(n, _)| n == name).unwrap().1.clone()
}

/// `bytes` handed over as the file `name`, as the browser hands picked files over: the files and
/// the folder they appear in.
pub fn in_memory(name: &str, bytes: impl Into<Vec<u8>>) -> (DataFiles, PathBuf) {
    let mut files = DataFiles::default();
    let dir = files.add(name, bytes.into());
    (files, dir)
}

/// Every reader a user can reach, with its valid seeds. `scratch` holds the on-disk folder.
fn targets(scratch: &Path) -> Vec<Target> {
    let mut targets = Vec::new();
    // IDX, raw and gzip (the gzip target mutates the payload, then sometimes the stream).
    for (gzip, name) in [(false, "idx"), (true, "idx gzip")] {
        targets.push(Target {
            name,
            files: &["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
            seeds: vec![idx_images(), idx_labels()],
            mutate: mutate_bytes,
            gzip,
            read: Box::new(|bytes| {
                let (files, dir) = in_memory("train-images-idx3-ubyte", bytes);
                let images = read_idx_images(&dir.join("train-images-idx3-ubyte"), &files);
                let (files, dir) = in_memory("train-labels-idx1-ubyte", bytes);
                let labels = read_idx_labels(&dir.join("train-labels-idx1-ubyte"), 10, &files);
                match (images, labels) {
                    (Ok(_), _) | (_, Ok(_)) => Ok(()),
                    (Err(e), _) => Err(e.to_string()),
                }
            }),
        });
    }
    targets.push(Target {
        name: "cifar binary",
        files: &["data_batch_1.bin"],
        seeds: vec![cifar_records(&[0, 9, 3])],
        mutate: mutate_bytes,
        gzip: false,
        read: Box::new(|bytes| {
            let (mut pixels, mut labels) = (Vec::new(), Vec::new());
            let path = Path::new("data_batch_1.bin");
            read_cifar_bytes(path, bytes, CifarVariant::Cifar10, &mut pixels, &mut labels)
                .map_err(|e| e.to_string())
        }),
    });
    let mut cifar_members: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|i| {
            (
                format!("cifar-10-batches-bin/data_batch_{i}.bin"),
                cifar_records(&[i, 9 - i]),
            )
        })
        .collect();
    cifar_members.push((
        "cifar-10-batches-bin/test_batch.bin".into(),
        cifar_records(&[7]),
    ));
    targets.push(Target {
        name: "cifar tar.gz",
        files: &["cifar-10-binary.tar.gz"],
        seeds: vec![tar(&cifar_members)],
        mutate: mutate_tar,
        gzip: true,
        read: Box::new(|bytes| {
            let (files, dir) = in_memory("cifar-10-binary.tar.gz", bytes);
            let spec = DatasetSpec {
                kind: DatasetKind::Cifar10,
                data_dir: Some(dir.to_string_lossy().into_owned()),
                ..DatasetSpec::default()
            };
            advmoe_data::load_from(&spec, &files)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    });
    for (gzip, name, archive) in [
        (false, "image folder tar", "images.tar"),
        (true, "image folder tar.gz", "images.tar.gz"),
    ] {
        targets.push(Target {
            name,
            files: if gzip {
                &["images.tar.gz"]
            } else {
                &["images.tar"]
            },
            seeds: vec![tar(&folder_members())],
            mutate: mutate_tar,
            gzip,
            read: Box::new(move |bytes| {
                let (files, dir) = in_memory(archive, bytes);
                advmoe_data::read_image_folder(&dir.join(archive), &files)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        });
    }
    // An image folder on disk: one of its files (picked by the input's length) replaced.
    let root = scratch.join("fuzz-folder");
    let members = folder_members();
    for (name, bytes) in &members {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    targets.push(Target {
        name: "image folder",
        files: &["fuzz-folder"],
        seeds: members.iter().map(|(_, b)| b.clone()).collect(),
        mutate: mutate_bytes,
        gzip: false,
        read: Box::new(move |bytes| {
            let (name, original) = &members[bytes.len() % members.len()];
            let path = root.join(name);
            std::fs::write(&path, bytes).unwrap();
            let result = advmoe_data::read_image_folder(&root, &DataFiles::default());
            std::fs::write(&path, original).unwrap();
            result.map(|_| ()).map_err(|e| e.to_string())
        }),
    });
    targets.push(Target {
        name: "attack-lab image",
        files: &["photo"],
        seeds: vec![
            picture(16, false, false, 9),
            picture(16, true, false, 9),
            picture(12, false, true, 9),
        ],
        mutate: mutate_bytes,
        gzip: false,
        read: Box::new(|bytes| {
            advmoe_app::picture::fit_user_image(bytes, [3, 32, 32])
                .map(|_| ())
                .map_err(|e| {
                    advmoe_app::error::AppError::Image {
                        name: "photo".into(),
                        reason: e.to_string(),
                    }
                    .to_string()
                })
        }),
    });

    // A model (what a model folder, `--model`, the app's "Open model" and the browser's pair
    // read), and a run checkpoint (what `--resume` and the app's "Resume" read).
    let checkpoint = run_checkpoint();
    let model_files = vec![
        ("config.json".to_string(), file(&checkpoint, "config.json")),
        (
            "model.safetensors".to_string(),
            file(&checkpoint, "model.safetensors"),
        ),
    ];
    let read_model = |files: Vec<(String, Vec<u8>)>| -> Result<(), String> {
        load_model_bytes(
            &file(&files, "config.json"),
            &file(&files, "model.safetensors"),
            Path::new("fuzz-model"),
            &cpu(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    for (name, label, mutate) in [
        ("config.json", "model config.json", mutate_json as Mutate),
        ("model.safetensors", "model.safetensors", mutate_safetensors),
    ] {
        let files = model_files.clone();
        targets.push(Target {
            name: label,
            files: &["config.json", "model.safetensors"],
            seeds: vec![file(&files, name)],
            mutate,
            gzip: false,
            read: Box::new(move |bytes| read_model(replaced(&files, name, bytes))),
        });
    }
    let data = synthetic(64, 16);
    let step_every = std::env::var("ADVMOE_FUZZ_STEP_EVERY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    for (name, label, mutate) in [
        ("run.json", "run.json", mutate_json as Mutate),
        ("config.json", "run config.json", mutate_json),
        (
            "optimizer.safetensors",
            "optimizer.safetensors",
            mutate_safetensors,
        ),
        (
            "router_optimizer.safetensors",
            "router_optimizer.safetensors",
            mutate_safetensors,
        ),
    ] {
        let files = checkpoint.clone();
        let data = data.clone();
        let loaded = std::sync::atomic::AtomicUsize::new(0);
        targets.push(Target {
            name: label,
            files: &[
                "run.json",
                "config.json",
                "model.safetensors",
                "optimizer.safetensors",
                "router_optimizer.safetensors",
            ],
            seeds: vec![file(&files, name)],
            mutate,
            gzip: false,
            read: Box::new(move |bytes| {
                let source = CheckpointSource::Files(replaced(&files, name, bytes));
                let mut run = Run::from_checkpoint_with(&source, data.clone(), &cpu())
                    .map_err(|e| e.to_string())?;
                // What loads must also train: one step (after every `step_every`-th input that
                // loads). Weights or settings that load but diverge (finite but huge) are
                // stopped by the run's NaN/Inf guard, which names the step: that is the run's
                // outcome, not the reader's.
                if !loaded
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(step_every)
                {
                    return Ok(());
                }
                match run.advance(1, &mut |_| true).wait() {
                    Err(e) if !e.to_string().contains("training diverged") => {
                        Err(format!("loaded, then its first step failed: {e}"))
                    }
                    _ => Ok(()),
                }
            }),
        });
    }
    targets
}

/// Fuzz every reader with `inputs` inputs each; prints a table and returns the findings.
pub fn fuzz_every_reader_with(inputs: usize) -> Vec<(&'static str, Findings)> {
    let scratch = Scratch::new("fuzz");
    std::fs::create_dir_all(&*scratch).unwrap();
    let only = std::env::var("ADVMOE_FUZZ_ONLY").ok();
    let mut out = Vec::new();
    for (i, target) in targets(&scratch).iter().enumerate() {
        if only.as_deref().is_some_and(|o| !target.name.contains(o)) {
            continue;
        }
        let found = run_target(target, inputs, 0xf022 + i as u64);
        eprintln!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            target.name,
            found.inputs,
            found.accepted,
            found.refused,
            found.panics.len(),
            found.unnamed.len(),
            found.slowest_secs * 1000.0,
            found.secs
        );
        out.push((target.name, found));
    }
    out
}

fn assert_clean(results: &[(&str, Findings)]) {
    for (name, found) in results {
        assert!(found.panics.is_empty(), "{name}: panics {:?}", found.panics);
        assert!(
            found.unnamed.is_empty(),
            "{name}: errors that do not name the file: {:?}",
            found.unnamed
        );
        assert!(
            found.refused > 0,
            "{name}: no input was refused, so nothing was tested"
        );
    }
}

#[test]
fn fuzz_sample_of_every_reader() {
    let results = fuzz_every_reader_with(100);
    assert_eq!(results.len(), 14);
    assert_clean(&results);
}

/// The full run: `ADVMOE_FUZZ_INPUTS` inputs per reader (100,000 unless set).
#[test]
#[ignore = "long: run it by name (docs/reliability.md)"]
fn fuzz_every_reader() {
    let inputs = std::env::var("ADVMOE_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    eprintln!(
        "| reader | inputs | accepted | refused | panics | unnamed errors | slowest (ms) | total (s) |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|");
    let results = fuzz_every_reader_with(inputs);
    assert_clean(&results);
}

/// What the fuzz harness found, kept fixed: counts in run.json that overflowed a `+ 1` (the
/// optimisers' steps, the loader's batches and position), and invalid configs whose error did
/// not name config.json.
#[test]
fn fuzz_findings_stay_fixed() {
    let files = run_checkpoint();
    let data = synthetic(64, 16);
    let record: Value = serde_json::from_slice(&file(&files, "run.json")).unwrap();
    let load = |name: &str, bytes: Vec<u8>| {
        let source = CheckpointSource::Files(replaced(&files, name, &bytes));
        Run::from_checkpoint_with(&source, data.clone(), &cpu()).map(|mut run| {
            run.advance(1, &mut |_| true).wait().unwrap();
        })
    };
    for (field, refused) in [
        ("/optimizer_steps", true),
        ("/router_optimizer_steps", true),
        ("/loader/position", true),
        ("/loader/batches", false),
    ] {
        let mut edited = record.clone();
        *edited.pointer_mut(field).unwrap() = json!(u64::MAX);
        let result = load("run.json", serde_json::to_vec(&edited).unwrap());
        match result {
            Err(e) => {
                let e = e.to_string();
                assert!(refused, "{field}: {e}");
                let name = field.rsplit('/').next().unwrap();
                assert!(e.contains("run.json") && e.contains(name), "{e}");
            }
            Ok(()) => assert!(!refused, "{field} = u64::MAX was accepted"),
        }
    }
    let mut config: Value = serde_json::from_slice(&file(&files, "config.json")).unwrap();
    config["model"]["ratio"] = json!(-0.5);
    let config = serde_json::to_vec(&config).unwrap();
    let e = load("config.json", config.clone()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("ratio"), "{e}");
    let e = load_model_bytes(
        &config,
        &file(&files, "model.safetensors"),
        Path::new("m"),
        &cpu(),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("config.json") && e.contains("ratio"), "{e}");
}

/// The model files of a tiny run (for the hostile-file tests).
pub fn model_pair() -> (Vec<u8>, Vec<u8>) {
    let files = run_checkpoint();
    (
        file(&files, "config.json"),
        file(&files, "model.safetensors"),
    )
}

/// An image folder archive (for the hostile-file tests).
pub fn folder_tar(extra: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut members = folder_members();
    members.extend_from_slice(extra);
    tar(&members)
}
