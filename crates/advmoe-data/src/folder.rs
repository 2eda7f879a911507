//! Image folders: `train/<class>/*` and `test/<class>/*` PNG or JPEG files, read from a folder
//! or straight from a `.tar` / `.tar.gz` of that layout (the layout may sit under one leading
//! folder of the archive). Class names are the train split's folder names, sorted; the image size
//! and the channel count come from the files (every image must match the first one, or the error
//! names the file that differs).
//!
//! Files sort by name within a class; each split is then put in class-interleaved order (image 0
//! of every class, then image 1 of every class, …), so that any prefix of the test split, which
//! is what an evaluation of "the first N test images" reads, holds the classes in proportion.
//! Natively the images are decoded on every core.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use crate::{DataError, DataFiles, ImageSet, limits};

const FORMAT: &str = "image folder";
const SPLITS: [&str; 2] = ["train", "test"];
/// Largest side accepted from one image: a dataset of thumbnails never needs more, and a hostile
/// header cannot make the decoder allocate gigabytes.
const MAX_SIDE: usize = 4096;

/// One encoded image found in a split: class folder, file name, bytes.
struct Encoded {
    class: String,
    path: PathBuf,
    bytes: Vec<u8>,
}

/// What was found under one split folder.
#[derive(Default)]
struct Split {
    /// Every class folder seen, even an empty one.
    classes: BTreeSet<String>,
    images: Vec<Encoded>,
}

/// Read both splits of the image folder or archive at `path`. Returns (train, test); the sets are
/// named `<name>/train` and `<name>/test`, `<name>` being the folder's or archive's stem.
pub fn read_image_folder(
    path: &Path,
    files: &DataFiles,
) -> Result<(ImageSet, ImageSet), DataError> {
    let mut splits: BTreeMap<&'static str, Split> = BTreeMap::new();
    if files.is_file(path) {
        read_archive(path, &files.read(path)?, &mut splits)?;
    } else if files.is_dir(path) {
        read_dir(path, &mut splits)?;
    } else {
        return Err(DataError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such folder or archive (an image folder is a folder or a .tar / .tar.gz \
                 holding train/<class>/* and test/<class>/*)",
            ),
        });
    }
    let name = dataset_name(path);
    let missing = |split: &str| {
        DataError::format(
            path,
            FORMAT,
            format!(
                "no {split}/<class>/ folder with images (expected train/<class>/*.jpg|png and test/<class>/*.jpg|png)"
            ),
        )
    };
    let train = splits.remove("train").ok_or_else(|| missing("train"))?;
    let test = splits.remove("test").ok_or_else(|| missing("test"))?;
    let class_names: Vec<String> = train.classes.iter().cloned().collect();
    if class_names.len() < 2 {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "train/ holds {} class folder(s); a classifier needs at least 2",
                class_names.len()
            ),
        ));
    }
    if let Some(extra) = test.classes.iter().find(|c| !train.classes.contains(*c)) {
        return Err(DataError::format(
            path,
            FORMAT,
            format!("class {extra:?} is in test/ but train/ has no folder of that name"),
        ));
    }
    for (split_name, split) in [("train", &train), ("test", &test)] {
        if let Some(empty) = split
            .classes
            .iter()
            .find(|c| !split.images.iter().any(|i| &i.class == *c))
        {
            return Err(DataError::format(
                path,
                FORMAT,
                format!("class folder {split_name}/{empty}/ holds no image"),
            ));
        }
    }
    let train = decode_split(&name, "train", train, &class_names, None)?;
    let test = decode_split(&name, "test", test, &class_names, Some(&train))?;
    Ok((train, test))
}

fn dataset_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "images".to_string());
    let stem = [".tar.gz", ".tgz", ".tar"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))
        .unwrap_or(&file);
    stem.to_string()
}

/// `<split>/<class>/<file>` (or the folder `<split>/<class>/` when `is_dir`), possibly under one
/// leading folder, with only normal components: an entry named `../x` or `/x` is never taken.
fn split_class_file(member: &Path, is_dir: bool) -> Option<(&'static str, String)> {
    let mut parts = Vec::new();
    for c in member.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if parts.iter().any(|p| p.starts_with('.')) {
        return None;
    }
    let split_at = parts.len().checked_sub(if is_dir { 2 } else { 3 })?;
    if split_at > 1 {
        return None;
    }
    let split = SPLITS.iter().find(|s| **s == parts[split_at])?;
    Some((split, parts[split_at + 1].to_string()))
}

/// Refuse an image file above [`limits::MAX_IMAGE_FILE_BYTES`], or one that takes the folder's
/// files above [`limits::MAX_FOLDER_BYTES`], before reading it.
fn check_file_size(path: &Path, size: u64, total: u64) -> Result<(), DataError> {
    if size > limits::MAX_IMAGE_FILE_BYTES {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "{size} bytes is more than an image file may hold ({} bytes)",
                limits::MAX_IMAGE_FILE_BYTES
            ),
        ));
    }
    if total > limits::MAX_FOLDER_BYTES {
        return Err(DataError::format(
            path,
            FORMAT,
            format!(
                "the image files up to this one hold more than {} bytes, the most an image \
                 folder may hold",
                limits::MAX_FOLDER_BYTES
            ),
        ));
    }
    Ok(())
}

/// Refuse a file that is neither PNG nor JPEG as soon as it is read.
fn check_magic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    if bytes.starts_with(&[0xff, 0xd8]) || bytes.starts_with(b"\x89PNG") {
        Ok(())
    } else {
        Err(DataError::format(
            path,
            FORMAT,
            "not an image (expected a PNG or JPEG file)",
        ))
    }
}

fn read_archive(
    path: &Path,
    bytes: &[u8],
    splits: &mut BTreeMap<&'static str, Split>,
) -> Result<(), DataError> {
    let corrupt = |e: std::io::Error| {
        DataError::format(
            path,
            "tar archive",
            format!("truncated or corrupt archive: {e}"),
        )
    };
    let gzip = bytes.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn std::io::Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut tar = tar::Archive::new(reader);
    let mut members = 0usize;
    let mut total = 0u64;
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        members += 1;
        let member = entry.path().map_err(corrupt)?.into_owned();
        let kind = entry.header().entry_type();
        if !kind.is_dir() && !kind.is_file() {
            continue;
        }
        let Some((split, class)) = split_class_file(&member, kind.is_dir()) else {
            continue;
        };
        let target = splits.entry(split).or_default();
        if kind.is_dir() {
            target.classes.insert(class);
        } else {
            let member_path = path.join(&member);
            total = total.saturating_add(entry.size());
            check_file_size(&member_path, entry.size(), total)?;
            let data = crate::read_member(&member_path, "tar archive", &mut entry)?;
            check_magic(&member_path, &data)?;
            target.classes.insert(class.clone());
            target.images.push(Encoded {
                class,
                path: member_path,
                bytes: data,
            });
        }
    }
    if members == 0 {
        return Err(DataError::format(
            path,
            "tar archive",
            "not a tar archive, or an empty one",
        ));
    }
    Ok(())
}

fn read_dir(root: &Path, splits: &mut BTreeMap<&'static str, Split>) -> Result<(), DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let list = |dir: &Path| -> Result<Vec<PathBuf>, DataError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
        Ok(out)
    };
    // Also accept a folder holding exactly one folder that has the layout (an extracted archive).
    let mut base = root.to_path_buf();
    if !SPLITS.iter().any(|s| base.join(s).is_dir()) {
        let subdirs: Vec<PathBuf> = list(&base)?.into_iter().filter(|p| p.is_dir()).collect();
        if let [only] = subdirs.as_slice() {
            base = only.clone();
        }
    }
    let mut total = 0u64;
    for split in SPLITS {
        let dir = base.join(split);
        if !dir.is_dir() {
            continue;
        }
        let target = splits.entry(split).or_default();
        for class_dir in list(&dir)?.into_iter().filter(|p| p.is_dir()) {
            let class = class_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            target.classes.insert(class.clone());
            for file in list(&class_dir)?.into_iter().filter(|p| p.is_file()) {
                let size = std::fs::metadata(&file).map_err(io(&file))?.len();
                total = total.saturating_add(size);
                check_file_size(&file, size, total)?;
                let bytes = std::fs::read(&file).map_err(io(&file))?;
                check_magic(&file, &bytes)?;
                target.images.push(Encoded {
                    class: class.clone(),
                    path: file,
                    bytes,
                });
            }
        }
    }
    Ok(())
}

/// A decoded image: height, width, channels (1 or 3) and HWC pixels.
struct Decoded {
    size: [usize; 2],
    channels: usize,
    hwc: Vec<u8>,
}

/// The size every image of a split must have, and the image that set it.
type Expected<'a> = Option<([usize; 2], &'a Path)>;

fn size_mismatch(path: &Path, size: [usize; 2], (want, first): ([usize; 2], &Path)) -> DataError {
    DataError::format(
        path,
        FORMAT,
        format!(
            "image is {}×{} pixels but {} is {}×{}: every image must have one size",
            size[1],
            size[0],
            first.display(),
            want[1],
            want[0]
        ),
    )
}

/// Decode one image; an image whose header gives another size than `expect` is refused before
/// its pixels are decoded.
fn decode_one(image: &Encoded, expect: Expected) -> Result<Decoded, DataError> {
    let bytes = image.bytes.as_slice();
    let bad = |format: &'static str, reason: String| DataError::format(&image.path, format, reason);
    let check = |width: usize, height: usize| match expect {
        Some(e) if e.0 != [height, width] => Err(size_mismatch(&image.path, [height, width], e)),
        _ => Ok(()),
    };
    if bytes.starts_with(&[0xff, 0xd8]) {
        use zune_jpeg::zune_core::colorspace::ColorSpace;
        use zune_jpeg::zune_core::options::DecoderOptions;
        let options = DecoderOptions::default()
            .set_max_width(MAX_SIDE)
            .set_max_height(MAX_SIDE);
        let mut decoder =
            zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(bytes), options);
        decoder
            .decode_headers()
            .map_err(|e| bad("JPEG", format!("{e:?}")))?;
        if let Some((width, height)) = decoder.dimensions() {
            check(width, height)?;
        }
        let gray = decoder.input_colorspace() == Some(ColorSpace::Luma);
        let out = if gray {
            ColorSpace::Luma
        } else {
            ColorSpace::RGB
        };
        decoder.set_options(options.jpeg_set_out_colorspace(out));
        let hwc = decoder
            .decode()
            .map_err(|e| bad("JPEG", format!("{e:?}")))?;
        let info = decoder
            .info()
            .ok_or_else(|| bad("JPEG", "no image header".to_string()))?;
        let channels = if gray { 1 } else { 3 };
        let size = [info.height as usize, info.width as usize];
        if hwc.len() != size[0] * size[1] * channels {
            return Err(bad(
                "JPEG",
                format!(
                    "decoded {} bytes for a {}×{} image",
                    hwc.len(),
                    size[1],
                    size[0]
                ),
            ));
        }
        Ok(Decoded {
            size,
            channels,
            hwc,
        })
    } else if bytes.starts_with(b"\x89PNG") {
        let mut decoder = png::Decoder::new_with_limits(
            std::io::Cursor::new(bytes),
            png::Limits {
                bytes: MAX_SIDE * MAX_SIDE * 4,
            },
        );
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().map_err(|e| bad("PNG", e.to_string()))?;
        let (w, h) = (reader.info().width as usize, reader.info().height as usize);
        if w > MAX_SIDE || h > MAX_SIDE {
            return Err(bad(
                "PNG",
                format!("{w}×{h} is larger than {MAX_SIDE} pixels a side"),
            ));
        }
        check(w, h)?;
        let len = reader
            .output_buffer_size()
            .ok_or_else(|| bad("PNG", "image too large".to_string()))?;
        let mut buf = vec![0; len];
        let frame = reader
            .next_frame(&mut buf)
            .map_err(|e| bad("PNG", e.to_string()))?;
        let (w, h) = (frame.width as usize, frame.height as usize);
        let src = frame.color_type.samples();
        buf.truncate(frame.buffer_size());
        // Grey stays grey; alpha is dropped.
        let channels = if src >= 3 { 3 } else { 1 };
        let hwc = buf
            .chunks_exact(src)
            .flat_map(|px| px[..channels].to_vec())
            .collect();
        Ok(Decoded {
            size: [h, w],
            channels,
            hwc,
        })
    } else {
        Err(bad(
            FORMAT,
            "not an image (expected a PNG or JPEG file)".to_string(),
        ))
    }
}

/// Decode every image, on every core natively.
fn decode_all(images: &[Encoded], expect: Expected) -> Vec<Result<Decoded, DataError>> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(images.len().div_ceil(256).max(1));
        if threads > 1 {
            let chunk = images.len().div_ceil(threads);
            return std::thread::scope(|s| {
                let handles: Vec<_> = images
                    .chunks(chunk)
                    .map(|part| {
                        s.spawn(move || {
                            part.iter()
                                .map(|i| decode_one(i, expect))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| match h.join() {
                        Ok(v) => v,
                        Err(panic) => std::panic::resume_unwind(panic),
                    })
                    .collect()
            });
        }
    }
    images.iter().map(|i| decode_one(i, expect)).collect()
}

fn decode_split(
    name: &str,
    split: &str,
    mut found: Split,
    class_names: &[String],
    like: Option<&ImageSet>,
) -> Result<ImageSet, DataError> {
    // Class-interleaved order: files by name within a class, then image k of every class (in
    // class order) before image k + 1 of any.
    found
        .images
        .sort_by(|a, b| (&a.class, &a.path).cmp(&(&b.class, &b.path)));
    let mut within = BTreeMap::<String, usize>::new();
    let mut keyed: Vec<((usize, usize), Encoded)> = found
        .images
        .into_iter()
        .map(|image| {
            let class = class_names
                .iter()
                .position(|c| c == &image.class)
                .unwrap_or(0);
            let k = within.entry(image.class.clone()).or_default();
            *k += 1;
            ((*k, class), image)
        })
        .collect();
    keyed.sort_by_key(|(key, _)| *key);
    let (keys, images): (Vec<(usize, usize)>, Vec<Encoded>) = keyed.into_iter().unzip();
    // The first image sets the size (the train split's, for the test split); every other image
    // is checked against it before its pixels are decoded.
    let mut decoded = Vec::with_capacity(images.len());
    let expect: ([usize; 2], usize, &Path) = match like {
        Some(l) => (
            l.size,
            l.channels,
            Path::new("the train split's first image"),
        ),
        None => {
            let Some(first) = images.first() else {
                return Err(DataError::format(
                    Path::new(name),
                    FORMAT,
                    format!("{split}/ holds no image"),
                ));
            };
            let d = decode_one(first, None)?;
            let shape = (d.size, d.channels, first.path.as_path());
            decoded.push(Ok(d));
            shape
        }
    };
    let (size, channels, first) = expect;
    let needed = images.len() as u64 * (channels * size[0] * size[1]) as u64;
    if needed > limits::MAX_PIXEL_BYTES {
        return Err(DataError::format(
            first,
            FORMAT,
            format!(
                "{} images of {}×{}×{channels} need {needed} bytes of pixels, more than the {} \
                 a split may take",
                images.len(),
                size[1],
                size[0],
                limits::MAX_PIXEL_BYTES
            ),
        ));
    }
    decoded.extend(decode_all(&images[decoded.len()..], Some((size, first))));
    let mut pixels = Vec::with_capacity(usize::try_from(needed).unwrap_or(0));
    let mut labels = Vec::with_capacity(images.len());
    for (((_, class), image), d) in keys.iter().zip(&images).zip(decoded) {
        let d = d?;
        if d.size != size {
            return Err(size_mismatch(&image.path, d.size, (size, first)));
        }
        if d.channels == 3 && channels == 1 {
            return Err(DataError::format(
                &image.path,
                FORMAT,
                format!(
                    "colour image in a grey dataset ({} is grey)",
                    first.display()
                ),
            ));
        }
        let plane = size[0] * size[1];
        // HWC to CHW; a grey image in a colour set is repeated over the channels.
        for c in 0..channels {
            let src = if d.channels == 1 { 0 } else { c };
            pixels.extend((0..plane).map(|p| d.hwc[p * d.channels + src]));
        }
        labels.push(*class as u16);
    }
    Ok(ImageSet {
        name: format!("{name}/{split}"),
        channels,
        size,
        num_classes: class_names.len(),
        pixels,
        labels,
        class_names: class_names.to_vec(),
    })
}
