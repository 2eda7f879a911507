//! What a file is, decided by its name ([`classify`]), and which files form a model
//! ([`model_pairs`]): the same on both platforms once files are bytes (natively by path, typed or
//! dropped; on the web from the browser's picker or a drop, through `platform`).

use advmoe_engine::NamedFiles as Files;

/// What a file is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A PNG or JPEG image, for the attack lab.
    Image,
    /// A model's run configuration (`config.json` or a downloaded `<stem>.json`).
    ModelConfig,
    /// A model's weights (`model.safetensors` or a downloaded `<stem>.safetensors`).
    ModelWeights,
    /// One of the official dataset files: MNIST / Fashion-MNIST IDX (raw or `.gz`), CIFAR
    /// `.bin` batches or the CIFAR `.tar.gz` archive; or an image folder's `.tar` / `.tar.gz`
    /// ([`is_image_folder_archive`]).
    Dataset,
    /// A guided lesson (`.lesson`, see `docs/lessons.md`).
    Lesson,
    /// A comparison `advmoe compare` wrote (`compare.json`, or a downloaded `<name>compare.json`),
    /// for the report view.
    Comparison,
    /// Checkpoint state the web build does not resume from (`run.json`, optimiser state).
    CheckpointState,
    /// Anything else.
    Unknown,
}

/// Classify a file by its name.
pub fn classify(name: &str) -> FileKind {
    let lower = name.to_lowercase();
    if lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
        FileKind::Image
    } else if lower.ends_with(".lesson") {
        FileKind::Lesson
    } else if lower.ends_with("compare.json") {
        FileKind::Comparison
    } else if lower == "run.json" || lower.ends_with("optimizer.safetensors") {
        FileKind::CheckpointState
    } else if lower.ends_with(".json") {
        FileKind::ModelConfig
    } else if lower.ends_with(".safetensors") {
        FileKind::ModelWeights
    } else if lower.contains("-ubyte")
        || lower.contains(".idx")
        || lower.ends_with(".bin")
        || lower.ends_with(".tar.gz")
        || lower.ends_with(".tgz")
        || lower.ends_with(".tar")
    {
        FileKind::Dataset
    } else {
        FileKind::Unknown
    }
}

/// Whether a dataset file is an image folder's archive (`train/<class>/*`, `test/<class>/*`)
/// rather than one of the official CIFAR binary archives.
pub fn is_image_folder_archive(name: &str) -> bool {
    let base = name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(name)
        .to_lowercase();
    let archive = base.ends_with(".tar") || base.ends_with(".tar.gz") || base.ends_with(".tgz");
    archive && base != "cifar-10-binary.tar.gz" && base != "cifar-100-binary.tar.gz"
}

/// A model among named files: `(name, config.json bytes, safetensors bytes)` for each
/// `config.json` + `model.safetensors` pair or `<stem>.json` + `<stem>.safetensors` pair.
pub fn model_pairs(files: &Files) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let stem = |name: &str| {
        let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
        match base {
            "config.json" | "model.safetensors" => "model".to_string(),
            _ => base
                .rsplit_once('.')
                .map_or(base, |(stem, _)| stem)
                .to_string(),
        }
    };
    let mut pairs = Vec::new();
    for (name, config) in files
        .iter()
        .filter(|(n, _)| classify(n) == FileKind::ModelConfig)
    {
        let wanted = stem(name);
        if let Some((_, weights)) = files
            .iter()
            .find(|(n, _)| classify(n) == FileKind::ModelWeights && stem(n) == wanted)
        {
            pairs.push((wanted, config.clone(), weights.clone()));
        }
    }
    pairs
}
