//! Why something the user asked for failed: one typed error for the whole app, formatted once,
//! where it is shown (the error bar; the workers send it there as text). [`Context::context`]
//! says what was being done, as `anyhow` would, while keeping the cause typed.

use std::path::PathBuf;

use advmoe_core::SpecError;
use advmoe_data::DataError;
use advmoe_engine::EngineError;
use advmoe_engine::eval::EvalError;

/// An app error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The engine: a run, a checkpoint, a model file.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// An evaluation or an attack (routing, readback).
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A dataset that cannot be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// An invalid setting.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An image that cannot be used.
    #[error("{name}: {reason}")]
    Image {
        /// The image's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Something that cannot be done in the app's current state (no model chosen, an index out
    /// of range, a file kind the platform does not offer).
    #[error("{0}")]
    Refused(String),
    /// The browser refused (a download, the file picker, fetching the demo models).
    #[error("{0}")]
    Browser(String),
    /// A worker's work panicked (natively: a lost GPU device, or a bug).
    #[error(
        "{what} failed unexpectedly ({detail}). If the GPU device was lost, restart the app; \
         saved models and checkpoints are unaffected"
    )]
    Panicked {
        /// What the worker was doing.
        what: String,
        /// The panic's message.
        detail: String,
    },
    /// What was being done when `source` failed.
    #[error("{what}: {source}")]
    While {
        /// What was being done, e.g. "opening runs/lab".
        what: String,
        /// Why it failed.
        source: Box<AppError>,
    },
}

impl AppError {
    /// Whether the device failed under the work (a readback that did not complete, as a lost
    /// GPU device gives, or a panic, as a wgpu error inside Burn gives natively), rather than the
    /// work itself.
    pub fn is_device_failure(&self) -> bool {
        match self {
            Self::Panicked { .. } => true,
            Self::Engine(e) => e.is_device_failure(),
            Self::Eval(e) => e.is_device_failure(),
            Self::While { source, .. } => source.is_device_failure(),
            _ => false,
        }
    }
}

/// Say what was being done when an error happened.
pub trait Context<T> {
    /// Wrap the error with what was being done.
    ///
    /// # Errors
    /// The wrapped error.
    fn context(self, what: impl FnOnce() -> String) -> Result<T, AppError>;
}

impl<T, E: Into<AppError>> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, AppError> {
        self.map_err(|e| AppError::While {
            what: what(),
            source: Box::new(e.into()),
        })
    }
}

/// An app result.
pub type AppResult<T> = Result<T, AppError>;
