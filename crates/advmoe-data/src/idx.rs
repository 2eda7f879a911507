//! MNIST and Fashion-MNIST: the IDX format (big-endian header, unsigned bytes), raw or gzip.

use std::path::{Path, PathBuf};

use advmoe_core::DatasetKind;

use crate::{DataError, DataFiles, ImageSet, limits, read_bounded};

const FORMAT: &str = "IDX";

/// The file length an IDX header of `header` bytes and `shape` declares, refused above
/// [`limits::MAX_IDX_BYTES`] (so a hostile header cannot overflow or make a reader allocate).
fn declared_len(path: &Path, header: usize, shape: &[usize]) -> Result<usize, DataError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_add(header))
        .filter(|len| *len <= limits::MAX_IDX_BYTES)
        .ok_or_else(|| {
            DataError::format(
                path,
                FORMAT,
                format!(
                    "header declares shape {shape:?}, more than the {} bytes an IDX file may hold",
                    limits::MAX_IDX_BYTES
                ),
            )
        })
}

/// The file's bytes, decompressed if they start with the gzip magic number. A gzip stream is
/// decompressed header first, then no further than the length that header declares.
fn idx_bytes(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    use std::io::Read as _;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut gz = flate2::read::GzDecoder::new(raw.as_slice());
    let corrupt = |e: std::io::Error| {
        DataError::format(
            path,
            "gzip",
            format!("corrupt or truncated gzip stream: {e}"),
        )
    };
    let mut bytes = vec![0u8; 4];
    gz.read_exact(&mut bytes).map_err(corrupt)?;
    let dims = bytes[3] as usize;
    if bytes[..3] != [0, 0, 8] || !(1..=3).contains(&dims) {
        // parse_idx names what is wrong with this magic number.
        return Ok(bytes);
    }
    bytes.resize(4 + 4 * dims, 0);
    gz.read_exact(&mut bytes[4..]).map_err(corrupt)?;
    let shape: Vec<usize> = bytes[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = declared_len(path, bytes.len(), &shape)?;
    let rest = (expected - bytes.len()) as u64;
    read_bounded(path, "gzip", gz, rest, "its header declares", &mut bytes)?;
    Ok(bytes)
}

fn parse_idx(path: &Path, bytes: &[u8], want_dims: usize) -> Result<Vec<usize>, DataError> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "{} bytes is shorter than the 4-byte magic number",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "magic number starts with {:#04x} {:#04x}, expected 0x00 0x00",
                bytes[0], bytes[1]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "element type {:#04x}, expected 0x08 (unsigned byte)",
                bytes[2]
            ),
        ));
    }
    let dims = bytes[3] as usize;
    if dims != want_dims {
        return Err(DataError::format(
            path,
            FORMAT,
            format!("{dims} dimensions, expected {want_dims}"),
        ));
    }
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            FORMAT,
            format!("truncated header: {} bytes, need {header}", bytes.len()),
        ));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = declared_len(path, header, &shape)?;
    if bytes.len() != expected {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "header says shape {shape:?}, so {expected} bytes, found {}{}",
                bytes.len(),
                if bytes.len() < expected {
                    " (truncated)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(shape)
}

/// Read an IDX image file (`[n, rows, cols]` bytes), raw or gzip. Returns `(n, [rows, cols],
/// pixels)`.
pub fn read_idx_images(
    path: &Path,
    files: &DataFiles,
) -> Result<(usize, [usize; 2], Vec<u8>), DataError> {
    let bytes = idx_bytes(path, files.read(path)?)?;
    let shape = parse_idx(path, &bytes, 3)?;
    if shape[1] == 0 || shape[2] == 0 {
        return Err(DataError::format(
            path,
            FORMAT,
            format!("empty images {shape:?}"),
        ));
    }
    Ok((shape[0], [shape[1], shape[2]], bytes[16..].to_vec()))
}

/// Read an IDX label file (`[n]` bytes), raw or gzip; every label must be below `num_classes`.
pub fn read_idx_labels(
    path: &Path,
    num_classes: usize,
    files: &DataFiles,
) -> Result<Vec<u16>, DataError> {
    let bytes = idx_bytes(path, files.read(path)?)?;
    parse_idx(path, &bytes, 1)?;
    let labels = &bytes[8..];
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= num_classes)
    {
        return Err(DataError::format(
            path,
            FORMAT,
            format!("label {l} of item {i} is not below {num_classes}"),
        ));
    }
    Ok(labels.iter().map(|&l| l as u16).collect())
}

fn find(
    dir: &Path,
    stem: &str,
    kind: &'static str,
    files: &DataFiles,
) -> Result<PathBuf, DataError> {
    // The official names, the common dotted variant, each raw or gzip.
    let dotted = stem.replacen("-idx", ".idx", 1);
    let tried: Vec<String> = [stem, dotted.as_str()]
        .iter()
        .flat_map(|s| [s.to_string(), format!("{s}.gz")])
        .collect();
    tried
        .iter()
        .map(|name| dir.join(name))
        .find(|p| files.is_file(p))
        .ok_or_else(|| DataError::Missing {
            dataset: kind,
            dir: dir.to_path_buf(),
            tried,
            hint: "download the four official IDX files (gzip is fine) into this folder",
        })
}

const MNIST_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
const FASHION_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Read the train and test splits of MNIST or Fashion-MNIST from a folder holding the official
/// files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`, each optionally `.gz`).
pub fn read_mnist_dir(
    dir: &Path,
    kind: DatasetKind,
    files: &DataFiles,
) -> Result<(ImageSet, ImageSet), DataError> {
    let (label, names) = match kind {
        DatasetKind::FashionMnist => ("fashion-mnist", FASHION_NAMES),
        _ => ("mnist", MNIST_NAMES),
    };
    let split = |prefix: &str, split_name: &str| -> Result<ImageSet, DataError> {
        let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"), label, files)?;
        let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"), label, files)?;
        let (n, size, pixels) = read_idx_images(&images_path, files)?;
        let labels = read_idx_labels(&labels_path, 10, files)?;
        if labels.len() != n {
            return Err(DataError::format(
                &labels_path,
                FORMAT,
                format!("{} labels for {n} images in {images_path:?}", labels.len()),
            ));
        }
        Ok(ImageSet {
            name: format!("{label}/{split_name}"),
            channels: 1,
            size,
            num_classes: 10,
            pixels,
            labels,
            class_names: names.iter().map(|s| s.to_string()).collect(),
        })
    };
    Ok((split("train", "train")?, split("t10k", "test")?))
}
