//! Where dataset files come from: the file system, or files handed over in memory, which is how
//! the web build reads the official files a user picks or drops in the browser (they are
//! registered under [`MEMORY_DIR`], and the dataset's folder is set to it). The readers look in
//! memory first, then on disk, so the same formats and checks apply to both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::DataError;

/// The folder name that files handed over in memory appear in.
pub const MEMORY_DIR: &str = "browser-files";

type Store = BTreeMap<PathBuf, Arc<Vec<u8>>>;

static MEMORY: Mutex<Store> = Mutex::new(BTreeMap::new());

fn with_store<T>(f: impl FnOnce(&mut Store) -> T) -> T {
    f(&mut MEMORY.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Hand over a file in memory as `MEMORY_DIR/<name>` (replacing one of that name); returns the
/// folder to point a dataset at.
pub fn add_memory_file(name: &str, bytes: Vec<u8>) -> PathBuf {
    let dir = PathBuf::from(MEMORY_DIR);
    with_store(|s| s.insert(dir.join(name), Arc::new(bytes)));
    dir
}

/// Names of the files handed over in memory.
pub fn memory_files() -> Vec<String> {
    with_store(|s| {
        s.keys()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    })
}

pub(crate) fn is_file(path: &Path) -> bool {
    with_store(|s| s.contains_key(path)) || path.is_file()
}

pub(crate) fn is_dir(path: &Path) -> bool {
    with_store(|s| s.keys().any(|p| p.starts_with(path) && p != path)) || path.is_dir()
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    if let Some(bytes) = with_store(|s| s.get(path).cloned()) {
        return Ok(bytes.as_ref().clone());
    }
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}
