//! What differs between the desktop app and the web page, behind one interface: starting a
//! worker and waiting inside it, catching panics, downloads, the file picker, dropped files,
//! the bundled demo models' bytes, the clock, and what reaches the app from outside a frame (the
//! page's test hooks and file reads). The rest of the app is the same on both; the `cfg`s that
//! choose a side live here (and in `gpu`'s native device setup and `main.rs`).

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(not(target_arch = "wasm32"))]
pub use native::*;
#[cfg(target_arch = "wasm32")]
pub mod web;
#[cfg(target_arch = "wasm32")]
pub use web::*;

use crate::hooks::HookCommand;
use advmoe_engine::NamedFiles as Files;

/// Whether this is the web build: it saves by download, picks files in the browser's picker
/// and publishes its status to the page every frame.
pub const WEB: bool = cfg!(target_arch = "wasm32");

/// What reached the app from outside a frame; it takes these at the start of the next frame
/// ([`take_incoming`]).
#[derive(Debug, Clone)]
pub enum Incoming {
    /// Files the browser read (a pick or a drop).
    Files(Files),
    /// A test-hook command from the page (`window.advmoeLab.send`).
    Hook(HookCommand),
    /// Something failed outside the frame (a file that could not be read).
    Error(String),
    /// A link to open (the page's address fragment, at start or when it changed).
    Link(String),
}

/// A file dropped on the window, as the platform hands it over.
#[derive(Debug, Clone)]
pub enum Dropped {
    /// A path (native): a model folder or file, an image.
    Path(std::path::PathBuf),
}
