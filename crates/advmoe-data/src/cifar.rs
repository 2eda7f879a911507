//! CIFAR-10 and CIFAR-100, binary version: fixed-size records of label byte(s) then 3·32·32
//! pixels (channel-major). Read from the official `.tar.gz` or from its extracted folder.

use std::path::{Path, PathBuf};

use crate::{DataError, DataFiles, ImageSet, limits, read_member};

const FORMAT: &str = "CIFAR binary";
const IMAGE_BYTES: usize = 3 * 32 * 32;
const OFFICIAL_RECORDS: usize = 10_000;

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarVariant {
    /// 10 classes; records of 1 label byte + 3072 pixels.
    Cifar10,
    /// 100 fine classes; records of coarse label, fine label, 3072 pixels.
    Cifar100,
}

impl CifarVariant {
    fn record_len(self) -> usize {
        match self {
            Self::Cifar10 => 1 + IMAGE_BYTES,
            Self::Cifar100 => 2 + IMAGE_BYTES,
        }
    }

    fn num_classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
        }
    }

    fn archive(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-binary.tar.gz",
            Self::Cifar100 => "cifar-100-binary.tar.gz",
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-bin",
            Self::Cifar100 => "cifar-100-binary",
        }
    }

    fn train_files(self) -> Vec<&'static str> {
        match self {
            Self::Cifar10 => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            Self::Cifar100 => vec!["train.bin"],
        }
    }

    fn test_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "test_batch.bin",
            Self::Cifar100 => "test.bin",
        }
    }
}

/// CIFAR-10's class names in label order.
pub(crate) const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Parse the records of one CIFAR binary file, appending pixels and labels.
pub fn read_cifar_bytes(
    path: &Path,
    bytes: &[u8],
    variant: CifarVariant,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<(), DataError> {
    let rec = variant.record_len();
    if bytes.len() / rec > limits::MAX_CIFAR_RECORDS {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "{} bytes is more than {} records",
                bytes.len(),
                limits::MAX_CIFAR_RECORDS
            ),
        ));
    }
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "expected a whole number of {rec}-byte records ({} bytes in an official file), \
                 found {} bytes",
                rec * OFFICIAL_RECORDS,
                bytes.len()
            ),
        ));
    }
    for (i, record) in bytes.chunks_exact(rec).enumerate() {
        let label = match variant {
            CifarVariant::Cifar10 => record[0],
            CifarVariant::Cifar100 => {
                if record[0] >= 20 {
                    return Err(DataError::format(
                        path,
                        FORMAT,
                        format!("record {i}: coarse label {} is not below 20", record[0]),
                    ));
                }
                record[1]
            }
        };
        if label as usize >= variant.num_classes() {
            return Err(DataError::format(
                path,
                FORMAT,
                format!(
                    "record {i}: label {label} is not below {}",
                    variant.num_classes()
                ),
            ));
        }
        labels.push(label as u16);
        pixels.extend_from_slice(&record[rec - IMAGE_BYTES..]);
    }
    Ok(())
}

fn image_set(variant: CifarVariant, split: &str, pixels: Vec<u8>, labels: Vec<u16>) -> ImageSet {
    let class_names = match variant {
        CifarVariant::Cifar10 => CIFAR10_NAMES.iter().map(|s| s.to_string()).collect(),
        CifarVariant::Cifar100 => (0..100).map(|i| format!("class {i}")).collect(),
    };
    ImageSet {
        name: format!("{}/{split}", variant.name()),
        channels: 3,
        size: [32, 32],
        num_classes: variant.num_classes(),
        pixels,
        labels,
        class_names,
    }
}

/// Read the train and test splits of CIFAR from `dir`, which holds the official archive, the
/// folder it extracts to, or the `.bin` files themselves.
pub fn read_cifar_dir(
    dir: &Path,
    variant: CifarVariant,
    files: &DataFiles,
) -> Result<(ImageSet, ImageSet), DataError> {
    let archive = dir.join(variant.archive());
    let mut train_files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut test_file: Option<(PathBuf, Vec<u8>)> = None;
    if files.is_file(&archive) {
        let file = files.read(&archive)?;
        let corrupt = |e: std::io::Error| {
            DataError::format(&archive, "tar.gz", format!("corrupt archive: {e}"))
        };
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file.as_slice()));
        for entry in tar.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let member = entry.path().map_err(corrupt)?.into_owned();
            let Some(name) = member
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
            else {
                continue;
            };
            let wanted_train = variant.train_files().contains(&name.as_str());
            if !wanted_train && name != variant.test_file() {
                continue;
            }
            let path = archive.join(&member);
            let limit = (limits::MAX_CIFAR_RECORDS * variant.record_len()) as u64;
            if entry.size() > limit {
                return Err(DataError::format(
                    &path,
                    FORMAT,
                    format!(
                        "{} bytes is more than {} records",
                        entry.size(),
                        limits::MAX_CIFAR_RECORDS
                    ),
                ));
            }
            let bytes = read_member(&path, "tar.gz", &mut entry)?;
            if wanted_train {
                train_files.push((path, bytes));
            } else {
                test_file = Some((path, bytes));
            }
        }
        train_files.sort_by(|a, b| a.0.cmp(&b.0));
    } else {
        let base = if files.is_dir(&dir.join(variant.folder())) {
            dir.join(variant.folder())
        } else {
            dir.to_path_buf()
        };
        for name in variant.train_files() {
            let path = base.join(name);
            if files.is_file(&path) {
                let bytes = files.read(&path)?;
                train_files.push((path, bytes));
            }
        }
        let path = base.join(variant.test_file());
        if files.is_file(&path) {
            let bytes = files.read(&path)?;
            test_file = Some((path, bytes));
        }
    }
    let expected = variant.train_files().len();
    if train_files.len() != expected || test_file.is_none() {
        let mut tried: Vec<String> = variant
            .train_files()
            .iter()
            .map(|s| s.to_string())
            .collect();
        tried.push(variant.test_file().to_string());
        tried.push(variant.archive().to_string());
        return Err(DataError::Missing {
            dataset: variant.name(),
            dir: dir.to_path_buf(),
            tried,
            hint: "put the official binary-version archive or its extracted files here",
        });
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for (path, bytes) in &train_files {
        read_cifar_bytes(path, bytes, variant, &mut pixels, &mut labels)?;
    }
    let train = image_set(variant, "train", pixels, labels);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    if let Some((path, bytes)) = &test_file {
        read_cifar_bytes(path, bytes, variant, &mut pixels, &mut labels)?;
    }
    Ok((train, image_set(variant, "test", pixels, labels)))
}
