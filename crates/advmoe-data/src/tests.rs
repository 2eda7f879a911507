//! Format tests: small files written here in the official layouts, and broken ones.

use std::io::Write as _;
use std::path::Path;

use advmoe_core::{DatasetKind, DatasetSpec};

use super::*;

fn idx_images(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        b.extend_from_slice(&(d as u32).to_be_bytes());
    }
    b.extend((0..n * rows * cols).map(|i| (i % 251) as u8));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A fresh folder under the system's temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn tempdir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("advmoe-data-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn write_mnist(dir: &Path, gzip: bool) {
    let files = [
        ("train-images-idx3-ubyte", idx_images(6, 28, 28)),
        ("train-labels-idx1-ubyte", idx_labels(&[0, 1, 2, 3, 4, 9])),
        ("t10k-images-idx3-ubyte", idx_images(2, 28, 28)),
        ("t10k-labels-idx1-ubyte", idx_labels(&[7, 8])),
    ];
    for (name, bytes) in files {
        if gzip {
            write(dir, &format!("{name}.gz"), &gz(&bytes));
        } else {
            write(dir, name, &bytes);
        }
    }
}

fn spec(kind: DatasetKind, dir: &Path) -> DatasetSpec {
    DatasetSpec {
        kind,
        data_dir: Some(dir.to_string_lossy().into_owned()),
        ..DatasetSpec::default()
    }
}

#[test]
fn mnist_raw_and_gzip_read_the_same() {
    let raw = tempdir("mnist-raw");
    let zipped = tempdir("mnist-gz");
    write_mnist(&raw, false);
    write_mnist(&zipped, true);
    let a = load(&spec(DatasetKind::Mnist, &raw)).unwrap();
    let b = load(&spec(DatasetKind::Mnist, &zipped)).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!(a.train.len(), 6);
    assert_eq!(a.train.size, [28, 28]);
    assert_eq!(a.train.channels, 1);
    assert_eq!(a.test.labels, vec![7, 8]);
    assert_eq!(a.train.image(1)[0], (784 % 251) as u8);
    let f = load(&spec(DatasetKind::FashionMnist, &raw)).unwrap();
    assert_eq!(f.train.class_names[9], "Ankle boot");
}

#[test]
fn broken_idx_files_name_the_file_and_the_problem() {
    let dir = tempdir("mnist-bad");
    write_mnist(&dir, false);
    let mut truncated = idx_images(6, 28, 28);
    truncated.truncate(1000);
    write(&dir, "train-images-idx3-ubyte", &truncated);
    let err = load(&spec(DatasetKind::Mnist, &dir))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("truncated"),
        "{err}"
    );

    write_mnist(&dir, false);
    write(
        &dir,
        "train-labels-idx1-ubyte",
        &idx_labels(&[0, 1, 2, 3, 4, 12]),
    );
    let err = load(&spec(DatasetKind::Mnist, &dir))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train-labels") && err.contains("label 12 of item 5"),
        "{err}"
    );

    write_mnist(&dir, false);
    write(&dir, "train-labels-idx1-ubyte", &idx_labels(&[0, 1, 2]));
    let err = load(&spec(DatasetKind::Mnist, &dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 labels for 6 images"), "{err}");

    write_mnist(&dir, false);
    let mut wrong_magic = idx_images(6, 28, 28);
    wrong_magic[2] = 0x0d;
    write(&dir, "t10k-images-idx3-ubyte", &wrong_magic);
    let err = load(&spec(DatasetKind::Mnist, &dir))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t10k-images") && err.contains("unsigned byte"),
        "{err}"
    );

    write_mnist(&dir, false);
    let mut bad_gz = gz(&idx_images(2, 28, 28));
    let half = bad_gz.len() / 2;
    bad_gz.truncate(half);
    std::fs::remove_file(dir.join("t10k-images-idx3-ubyte")).unwrap();
    write(&dir, "t10k-images-idx3-ubyte.gz", &bad_gz);
    let err = load(&spec(DatasetKind::Mnist, &dir))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t10k-images-idx3-ubyte.gz") && err.contains("gzip"),
        "{err}"
    );

    let empty = tempdir("mnist-empty");
    let err = load(&spec(DatasetKind::Mnist, &empty))
        .unwrap_err()
        .to_string();
    assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
    let err = load(&DatasetSpec {
        kind: DatasetKind::Mnist,
        ..DatasetSpec::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("--data-dir"), "{err}");
}

fn cifar10_records(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        b.push(l);
        b.extend((0..3072).map(|p| ((p + i * 7) % 256) as u8));
    }
    b
}

fn cifar_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|k| {
            (
                format!("data_batch_{k}.bin"),
                cifar10_records(&[k as u8, 9]),
            )
        })
        .collect();
    files.push(("test_batch.bin".into(), cifar10_records(&[3, 4, 5])));
    files
}

#[test]
fn cifar10_from_archive_and_from_folder_agree() {
    let folder = tempdir("cifar-folder");
    let inner = folder.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&inner).unwrap();
    for (name, bytes) in cifar_files() {
        write(&inner, &name, &bytes);
    }
    let from_folder = load(&spec(DatasetKind::Cifar10, &folder)).unwrap();

    let archive_dir = tempdir("cifar-archive");
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in cifar_files() {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("cifar-10-batches-bin/{name}"),
                bytes.as_slice(),
            )
            .unwrap();
    }
    let tar_bytes = builder.into_inner().unwrap();
    write(&archive_dir, "cifar-10-binary.tar.gz", &gz(&tar_bytes));
    let from_archive = load(&spec(DatasetKind::Cifar10, &archive_dir)).unwrap();

    assert_eq!(from_folder.train, from_archive.train);
    assert_eq!(from_folder.test, from_archive.test);
    assert_eq!(from_folder.train.labels, vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
    assert_eq!(from_folder.test.len(), 3);
    assert_eq!(from_folder.train.image(1)[0], 7);
    assert_eq!(from_folder.train.class_names[0], "airplane");

    // A truncated archive is an error naming the archive.
    let cut = gz(&tar_bytes[..tar_bytes.len() / 2]);
    write(&archive_dir, "cifar-10-binary.tar.gz", &cut);
    let err = load(&spec(DatasetKind::Cifar10, &archive_dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cifar-10-binary.tar.gz"), "{err}");
}

#[test]
fn broken_cifar_files_are_rejected() {
    let dir = tempdir("cifar-bad");
    for (name, bytes) in cifar_files() {
        write(&dir, &name, &bytes);
    }
    let mut partial = cifar10_records(&[1, 2]);
    partial.truncate(3073 + 100);
    write(&dir, "data_batch_3.bin", &partial);
    let err = load(&spec(DatasetKind::Cifar10, &dir))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_3.bin") && err.contains("30730000") && err.contains("3173"),
        "{err}"
    );

    write(&dir, "data_batch_3.bin", &cifar10_records(&[1, 10]));
    let err = load(&spec(DatasetKind::Cifar10, &dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains("record 1: label 10"), "{err}");

    std::fs::remove_file(dir.join("data_batch_5.bin")).unwrap();
    let err = load(&spec(DatasetKind::Cifar10, &dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_batch_5.bin"), "{err}");

    let c100 = tempdir("cifar100");
    let rec = |coarse: u8, fine: u8| {
        let mut r = vec![coarse, fine];
        r.extend(std::iter::repeat_n(3u8, 3072));
        r
    };
    write(&c100, "train.bin", &[rec(1, 99), rec(2, 42)].concat());
    write(&c100, "test.bin", &rec(19, 0));
    let ok = load(&spec(DatasetKind::Cifar100, &c100)).unwrap();
    assert_eq!(ok.train.labels, vec![99, 42]);
    assert_eq!(ok.train.num_classes, 100);
    write(&c100, "test.bin", &rec(20, 0));
    let err = load(&spec(DatasetKind::Cifar100, &c100))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.bin") && err.contains("coarse label 20"),
        "{err}"
    );
}

#[test]
fn loader_is_seeded_resumable_and_covers_each_epoch() {
    let set = generate_synthetic(1, true, 40);
    let aug = Some(Augment {
        pad: 4,
        flip: false,
    });
    let mut a = Loader::new(set.len(), 8, 5, aug);
    let mut b = Loader::new(set.len(), 8, 5, aug);
    let first: Vec<Batch> = (0..7).map(|_| a.next_batch(&set)).collect();
    for batch in &first {
        assert_eq!(batch, &b.next_batch(&set));
        assert_eq!(batch.shape, [8, 3, 32, 32]);
        assert!(batch.images.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // One epoch (5 batches) sees every image exactly once.
    let mut seen: Vec<u16> = first[..5].iter().flat_map(|b| b.labels.clone()).collect();
    seen.sort_unstable();
    let mut all = set.labels.clone();
    all.sort_unstable();
    assert_eq!(seen, all);
    // Resume from a stored state gives the same next batches.
    let state = a.state();
    let mut c = Loader::new(set.len(), 8, 5, aug);
    c.restore(state);
    for _ in 0..6 {
        assert_eq!(a.next_batch(&set), c.next_batch(&set));
    }
    // A different seed gives a different order.
    let mut d = Loader::new(set.len(), 8, 6, aug);
    assert_ne!(d.next_batch(&set).labels, first[0].labels);
}

#[test]
fn augmentation_moves_pixels_and_no_augmentation_is_identity() {
    let set = generate_synthetic(2, false, 4);
    let plain = set.batch(0, 4);
    for (i, v) in plain.images.iter().enumerate() {
        assert_eq!(*v, set.pixels[i] as f32 / 255.0);
    }
    let mut rng = advmoe_core::Rng::seed(3);
    let flipped = Batch::gather(&set, &[0], Some((Augment { pad: 0, flip: true }, &mut rng)));
    let mut rng = advmoe_core::Rng::seed(3);
    let flip_drawn = rng.below(1) == 0 && rng.below(1) == 0 && rng.coin();
    let row0: Vec<f32> = flipped.images[..32].to_vec();
    let mut expected: Vec<f32> = plain.images[..32].to_vec();
    if flip_drawn {
        expected.reverse();
    }
    assert_eq!(row0, expected);
}

#[test]
fn files_handed_over_in_memory_read_like_files_on_disk() {
    // What the web build does with files picked in the browser.
    let disk = tempdir("mnist-memory");
    write_mnist(&disk, true);
    let mut dir = None;
    let mut picked = DataFiles::default();
    for entry in std::fs::read_dir(&*disk).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        dir = Some(picked.add(&name, std::fs::read(entry.path()).unwrap()));
    }
    let dir = dir.unwrap();
    assert_eq!(dir, Path::new(files::MEMORY_DIR));
    assert!(!dir.exists(), "the memory folder must not be a real folder");
    let from_disk = load(&spec(DatasetKind::Mnist, &disk)).unwrap();
    let from_memory = load_from(&spec(DatasetKind::Mnist, &dir), &picked).unwrap();
    // Files handed to one loader are not seen by another: nothing is global.
    assert!(load(&spec(DatasetKind::Mnist, &dir)).is_err());
    assert_eq!(from_disk.train, from_memory.train);
    assert_eq!(from_disk.test, from_memory.test);

    for (name, bytes) in cifar_files() {
        picked.add(&name, bytes);
    }
    let cifar = load_from(&spec(DatasetKind::Cifar10, &dir), &picked).unwrap();
    assert_eq!(cifar.train.labels, vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
    assert!(picked.names().contains(&"test_batch.bin".to_string()));

    // A broken file handed over in memory is reported under its name like one on disk.
    picked.add("t10k-labels-idx1-ubyte.gz", gz(&idx_labels(&[7, 10])));
    let err = load_from(&spec(DatasetKind::Mnist, &dir), &picked)
        .unwrap_err()
        .to_string();
    assert!(err.contains("t10k-labels-idx1-ubyte.gz"), "{err}");
    assert!(err.contains("label 10"), "{err}");
}

/// A `w`×`h` PNG (RGB, or grey when `grey`) whose pixels are `seed + x + 3y (+ channel)`.
fn png_bytes(w: usize, h: usize, grey: bool, seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
    enc.set_color(if grey {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    enc.set_depth(png::BitDepth::Eight);
    let channels = if grey { 1 } else { 3 };
    let data: Vec<u8> = (0..w * h * channels)
        .map(|i| {
            let (p, c) = (i / channels, i % channels);
            seed.wrapping_add((p % w + 3 * (p / w) + 50 * c) as u8)
        })
        .collect();
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    out
}

/// Files of a small image folder: classes `b_cat` and `a_dog` (sorted: a_dog = 0), three train
/// images of each and two test images, 8×6 RGB.
/// Named files of a tree, as written by [`write_tree`].
type Tree = Vec<(String, Vec<u8>)>;

fn image_folder_files() -> Tree {
    let mut files = Vec::new();
    for (split, count) in [("train", 3), ("test", 2)] {
        for (c, class) in ["b_cat", "a_dog"].iter().enumerate() {
            for i in 0..count {
                let seed = (10 * c + i) as u8 + if split == "test" { 100 } else { 0 };
                files.push((
                    format!("{split}/{class}/{i:04}.png"),
                    png_bytes(8, 6, false, seed),
                ));
            }
        }
    }
    files
}

fn write_tree(root: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn tar_of(files: &[(String, Vec<u8>)], prefix: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("{prefix}{name}"), bytes.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn folder_spec(path: &Path) -> DatasetSpec {
    DatasetSpec {
        kind: DatasetKind::ImageFolder,
        data_dir: Some(path.to_string_lossy().into_owned()),
        ..DatasetSpec::default()
    }
}

#[test]
fn image_folder_from_folder_tar_and_tar_gz_agree() {
    let files = image_folder_files();
    let dir = tempdir("folder-ok");
    write_tree(&dir.join("tree"), &files);
    let from_dir = load(&folder_spec(&dir.join("tree"))).unwrap();
    write(&dir, "plain.tar", &tar_of(&files, ""));
    let from_tar = load(&folder_spec(&dir.join("plain.tar"))).unwrap();
    // An archive whose layout sits under one leading folder, gzip-compressed.
    write(&dir, "pets.tar.gz", &gz(&tar_of(&files, "pets/")));
    let from_gz = load(&folder_spec(&dir.join("pets.tar.gz"))).unwrap();
    assert_eq!(from_dir.train.pixels, from_tar.train.pixels);
    assert_eq!(from_dir.test.labels, from_gz.test.labels);
    assert_eq!(from_dir.train.pixels, from_gz.train.pixels);
    assert_eq!(from_gz.train.name, "pets/train");

    let train = &from_dir.train;
    assert_eq!(train.class_names, vec!["a_dog", "b_cat"]);
    assert_eq!((train.channels, train.size, train.len()), (3, [6, 8], 6));
    // Class-interleaved: image 0 of each class, then image 1, …
    assert_eq!(train.labels, vec![0, 1, 0, 1, 0, 1]);
    assert_eq!(from_dir.test.labels, vec![0, 1, 0, 1]);
    // train[1] is b_cat/0000.png (seed 0): CHW, pixel (x, y) of channel c is x + 3y + 50c.
    let img = train.image(1);
    assert_eq!(img[0], 0);
    assert_eq!(img[2 + 8], 2 + 3);
    assert_eq!(img[48 + 1], 51);
    // train[0] is a_dog/0000.png (seed 10).
    assert_eq!(train.image(0)[0], 10);
    let spec = folder_spec(&dir.join("tree"));
    let data = load(&spec).unwrap();
    assert!(data.augmentation(true).is_some_and(|a| a.flip));

    // A grey PNG among colour ones is repeated over the channels.
    let mut mixed = files.clone();
    mixed[0].1 = png_bytes(8, 6, true, 7);
    write_tree(&dir.join("mixed"), &mixed);
    let m = load(&folder_spec(&dir.join("mixed"))).unwrap();
    let grey = m.train.image(1);
    assert_eq!((grey[0], grey[48], grey[96]), (7, 7, 7));
}

#[test]
fn broken_image_folders_name_the_file_and_the_problem() {
    let files = image_folder_files();
    let dir = tempdir("folder-bad");
    let case = |name: &str, edit: &dyn Fn(&mut Tree)| -> String {
        let mut f = files.clone();
        edit(&mut f);
        write_tree(&dir.join(name), &f);
        load(&folder_spec(&dir.join(name)))
            .map(|_| String::new())
            .unwrap_err()
            .to_string()
    };
    let err = case("not-image", &|f| f[1].1 = b"hello".to_vec());
    assert!(
        err.contains("not an image") && err.contains("0001.png"),
        "{err}"
    );
    let err = case("corrupt-png", &|f| f[1].1.truncate(40));
    assert!(err.contains("bad PNG") && err.contains("0001.png"), "{err}");
    let err = case("wrong-size", &|f| f[4].1 = png_bytes(9, 6, false, 0));
    assert!(
        err.contains("9×6") && err.contains("8×6") && err.contains("a_dog/0001.png"),
        "{err}"
    );
    let err = case("extra-test-class", &|f| {
        f.push(("test/cow/0000.png".into(), png_bytes(8, 6, false, 0)))
    });
    assert!(err.contains("\"cow\" is in test/"), "{err}");
    let err = case("no-test", &|f| f.retain(|(n, _)| n.starts_with("train")));
    assert!(err.contains("no test/<class>/ folder"), "{err}");
    std::fs::create_dir_all(dir.join("empty-class/train/c_owl")).unwrap();
    let err = case("empty-class", &|_| {});
    assert!(err.contains("train/c_owl/ holds no image"), "{err}");
    let err = load(&folder_spec(&dir.join("nowhere")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains("no such folder"),
        "{err}"
    );

    // Archives: truncated, not an archive, and an empty class folder recorded as an entry.
    let tar_bytes = tar_of(&files, "");
    write(&dir, "cut.tar.gz", &gz(&tar_bytes[..tar_bytes.len() / 2]));
    let err = load(&folder_spec(&dir.join("cut.tar.gz")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.tar.gz") && err.contains("truncated"),
        "{err}"
    );
    write(&dir, "junk.tar", b"not an archive at all");
    let err = load(&folder_spec(&dir.join("junk.tar")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.tar"), "{err}");
    let mut archive = tar_of(&files, "");
    archive.truncate(archive.len() - 1024); // drop the end-of-archive blocks, then add a folder
    let mut builder = tar::Builder::new(archive);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_cksum();
    builder
        .append_data(&mut header, "test/e_elk/", &b""[..])
        .unwrap();
    let b = builder;
    write(&dir, "empty.tar", &b.into_inner().unwrap());
    let err = load(&folder_spec(&dir.join("empty.tar")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"e_elk\" is in test/"), "{err}");
}

/// The CIFAR-10 image folder in the project's shared data (as CI has it): every image, the
/// official classes in order, and class-interleaved test images.
#[test]
fn shared_cifar10_image_folder_loads_whole() {
    let archive =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar10-jpg.tar.gz");
    assert!(
        archive.is_file(),
        "{archive:?} is missing: the project's shared data must sit beside the checkout"
    );
    let start = std::time::Instant::now();
    let data = load(&folder_spec(&archive)).unwrap();
    eprintln!(
        "CIFAR-10 image folder loaded in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!((data.train.len(), data.test.len()), (50_000, 10_000));
    assert_eq!((data.train.channels, data.train.size), (3, [32, 32]));
    // Sorted folder names give CIFAR-10's official label order, as the binary reader names it.
    assert_eq!(data.train.class_names, crate::cifar::CIFAR10_NAMES);
    let first: Vec<u16> = data.test.labels[..20].to_vec();
    assert_eq!(first, (0..20).map(|i| i % 10).collect::<Vec<u16>>());
    // Real photographs: pixel statistics far from constant.
    let mean =
        data.test.pixels.iter().map(|&p| p as f64).sum::<f64>() / data.test.pixels.len() as f64;
    assert!((100.0..140.0).contains(&mean), "mean pixel {mean}");
}
