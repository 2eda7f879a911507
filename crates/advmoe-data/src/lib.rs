//! Datasets of AdvMoE Lab.
//!
//! The built-in `synthetic` set, readers for the official MNIST / Fashion-MNIST (IDX, raw or
//! gzip) and CIFAR-10 / CIFAR-100 (binary version, `.tar.gz` or extracted) files, image folders
//! of PNG/JPEG files (a folder or a `.tar` / `.tar.gz`, see [`read_image_folder`]), augmentation,
//! and seeded batching. Pure Rust with no burn and no I/O beyond reading the given files, so it
//! builds for the browser too; the engine turns [`Batch`]es into tensors.
//!
//! Every reader validates sizes, headers and labels and reports problems as a [`DataError`] that
//! names the file: a dataset is loaded whole or not at all.

mod cifar;
pub mod files;
mod folder;
mod idx;
mod loader;
mod synthetic;

use std::path::{Path, PathBuf};

use advmoe_core::{DatasetKind, DatasetSpec};

pub use cifar::{CifarVariant, read_cifar_bytes, read_cifar_dir};
pub use folder::read_image_folder;
pub use idx::{read_idx_images, read_idx_labels, read_mnist_dir};
pub use loader::{Augment, Batch, Loader, LoaderState};
pub use synthetic::generate_synthetic;

/// Images of one split, stored as 8-bit NCHW pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Short name, e.g. `cifar10/train`.
    pub name: String,
    /// Colour channels.
    pub channels: usize,
    /// Height and width in pixels.
    pub size: [usize; 2],
    /// Number of classes (labels are `0..num_classes`).
    pub num_classes: usize,
    /// Pixels, `len() * channels * height * width` bytes, NCHW.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u16>,
    /// Human-readable class names (`num_classes` entries).
    pub class_names: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set has no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        self.channels * self.size[0] * self.size[1]
    }

    /// The pixels of image `index`, NCHW bytes.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[index * n..(index + 1) * n]
    }

    /// Images `start..end` (clamped to the set), as floats in [0, 1], without augmentation.
    pub fn batch(&self, start: usize, end: usize) -> Batch {
        let end = end.min(self.len());
        let start = start.min(end);
        let indices: Vec<usize> = (start..end).collect();
        Batch::gather(self, &indices, None)
    }

    /// The first `count` images (all when `count` is 0 or larger than the set).
    pub fn truncated(mut self, count: usize) -> Self {
        if count > 0 && count < self.len() {
            self.pixels.truncate(count * self.image_len());
            self.labels.truncate(count);
        }
        self
    }
}

/// Train and test split of one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Which dataset.
    pub kind: DatasetKind,
    /// Training split.
    pub train: ImageSet,
    /// Test split.
    pub test: ImageSet,
}

impl Dataset {
    /// The augmentation a dataset allows when `augment` is requested: random crop everywhere,
    /// horizontal flips only where a flip keeps the class (CIFAR and image folders of photos; not
    /// digits, clothing or the synthetic gratings, whose orientation is the class).
    pub fn augmentation(&self, augment: bool) -> Option<Augment> {
        if !augment {
            return None;
        }
        let pad = if self.train.size[0] >= 32 { 4 } else { 2 };
        let flip = matches!(
            self.kind,
            DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::ImageFolder
        );
        Some(Augment { pad, flip })
    }
}

/// Anything that stops a dataset from loading, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("failed to read {path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but its content is not what the format says.
    #[error("bad {format} file {path:?}: {reason}")]
    Format {
        /// The file (or archive member).
        path: PathBuf,
        /// Which format was expected.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A required file is not there.
    #[error("{dataset}: none of {tried:?} found in {dir:?} ({hint})")]
    Missing {
        /// The dataset.
        dataset: &'static str,
        /// The folder searched.
        dir: PathBuf,
        /// File names tried.
        tried: Vec<String>,
        /// Where to get them.
        hint: &'static str,
    },
    /// A real dataset was asked for without a folder.
    #[error("dataset {0} needs a path: --data-dir (official files) or --data (image folder)")]
    NoDataDir(&'static str),
}

impl DataError {
    fn format(path: &Path, format: &'static str, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            format,
            reason: reason.into(),
        }
    }
}

pub use files::DataFiles;

/// Load the dataset a spec names, from disk.
pub fn load(spec: &DatasetSpec) -> Result<Dataset, DataError> {
    load_from(spec, &DataFiles::default())
}

/// Load the dataset a spec names, looking in `files` (handed over in memory) before the disk.
pub fn load_from(spec: &DatasetSpec, files: &DataFiles) -> Result<Dataset, DataError> {
    let dir = || -> Result<PathBuf, DataError> {
        spec.data_dir
            .as_ref()
            .map(PathBuf::from)
            .ok_or(DataError::NoDataDir(spec.kind.as_str()))
    };
    let (train, test) = match spec.kind {
        DatasetKind::Synthetic => (
            generate_synthetic(spec.synthetic_seed, true, spec.synthetic_train_size),
            generate_synthetic(spec.synthetic_seed, false, spec.synthetic_test_size),
        ),
        DatasetKind::Mnist | DatasetKind::FashionMnist => {
            read_mnist_dir(&dir()?, spec.kind, files)?
        }
        DatasetKind::Cifar10 => read_cifar_dir(&dir()?, CifarVariant::Cifar10, files)?,
        DatasetKind::Cifar100 => read_cifar_dir(&dir()?, CifarVariant::Cifar100, files)?,
        DatasetKind::ImageFolder => read_image_folder(&dir()?, files)?,
    };
    Ok(Dataset {
        kind: spec.kind,
        train,
        test,
    })
}

/// Bounds that keep a hostile or broken file from exhausting memory: each is checked before
/// the allocation it bounds (docs/reliability.md lists them with the measured peaks).
pub mod limits {
    /// Most images one CIFAR binary file (or archive member) may hold: the official files hold
    /// 10,000 (CIFAR-100's `train.bin` 50,000).
    pub const MAX_CIFAR_RECORDS: usize = 60_000;
    /// Most bytes one decompressed IDX file may declare in its header (the official MNIST
    /// training images are 47 MB).
    pub const MAX_IDX_BYTES: usize = 1 << 30;
    /// Most bytes one image file of an image folder may hold.
    pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
    /// Most bytes of image files an image folder may hold in all (CIFAR-10 as JPEG: 150 MB).
    pub const MAX_FOLDER_BYTES: u64 = 2 << 30;
    /// Most bytes of decoded pixels one split may need (CIFAR-10's train split: 150 MB).
    pub const MAX_PIXEL_BYTES: u64 = 4 << 30;
}

/// The bytes of a tar member, as many as its header says (the caller has checked that size
/// against its bound): all of them, or an error naming `path` when the archive ends first.
fn read_member<R: std::io::Read>(
    path: &Path,
    format: &'static str,
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<u8>, DataError> {
    let size = entry.size();
    let mut bytes = Vec::new();
    read_bounded(path, format, entry, size, "its tar header says", &mut bytes)?;
    if bytes.len() as u64 != size {
        return Err(DataError::format(
            path,
            format,
            format!(
                "truncated archive: the member holds {} of the {size} bytes its header says",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Append at most `limit` bytes from `reader` to `out` (room for them is reserved first, so a
/// read of the expected length allocates once); more is an error naming `path`.
fn read_bounded(
    path: &Path,
    format: &'static str,
    reader: impl std::io::Read,
    limit: u64,
    what: &str,
    out: &mut Vec<u8>,
) -> Result<(), DataError> {
    use std::io::Read as _;
    let start = out.len();
    out.reserve_exact(usize::try_from(limit).unwrap_or(0).saturating_add(1));
    reader
        .take(limit.saturating_add(1))
        .read_to_end(out)
        .map_err(|e| DataError::format(path, format, format!("truncated or corrupt: {e}")))?;
    if (out.len() - start) as u64 > limit {
        return Err(DataError::format(
            path,
            format,
            format!("longer than {what} ({limit} bytes)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
