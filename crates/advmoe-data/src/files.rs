//! Where dataset files come from: the file system, or files handed over in memory
//! ([`DataFiles`]), which is how the web build reads the official files a user picks or drops in
//! the browser (they appear under [`MEMORY_DIR`], and the dataset's folder is set to it). The
//! readers look in the handed-over files first, then on disk, so the same formats and checks
//! apply to both. Whoever loads a dataset passes the files it was given; nothing is global.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::DataError;

/// The folder name that files handed over in memory appear in.
pub const MEMORY_DIR: &str = "browser-files";

/// Dataset files handed over in memory, by path under [`MEMORY_DIR`]. Cheap to clone (the
/// bytes are shared). The default holds none: datasets come from disk alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataFiles {
    memory: BTreeMap<PathBuf, Arc<Vec<u8>>>,
}

impl DataFiles {
    /// Hand over a file as `MEMORY_DIR/<name>` (replacing one of that name); returns the
    /// folder to point a dataset at.
    pub fn add(&mut self, name: &str, bytes: Vec<u8>) -> PathBuf {
        let dir = PathBuf::from(MEMORY_DIR);
        self.memory.insert(dir.join(name), Arc::new(bytes));
        dir
    }

    /// Names of the files handed over.
    pub fn names(&self) -> Vec<String> {
        self.memory
            .keys()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    }

    pub(crate) fn is_file(&self, path: &Path) -> bool {
        self.memory.contains_key(path) || path.is_file()
    }

    pub(crate) fn is_dir(&self, path: &Path) -> bool {
        self.memory.keys().any(|p| p.starts_with(path) && p != path) || path.is_dir()
    }

    pub(crate) fn read(&self, path: &Path) -> Result<Vec<u8>, DataError> {
        if let Some(bytes) = self.memory.get(path) {
            return Ok(bytes.as_ref().clone());
        }
        std::fs::read(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
