//! The desktop side of [`crate::platform`]: a thread per worker, blocking waits, panics caught
//! and reported, demo models compiled in; no downloads, no picker (paths are typed or dropped),
//! nothing arrives from outside a frame.

use std::borrow::Cow;
use std::future::Future;
use std::sync::mpsc::Receiver;

use eframe::egui;

use super::{Dropped, Incoming};
use crate::error::{AppError, AppResult};
use advmoe_engine::NamedFiles as Files;

/// What the title bar says of Burn's CPU backend.
pub const CPU_LABEL: &str = "CPU (Burn flex backend)";

/// Start a worker on a thread called `name`, driving the future `body` makes with `block_on`
/// (Burn's streams are per thread, so all of a worker's work stays on its thread).
///
/// # Errors
/// If the thread cannot be spawned.
pub fn spawn_worker<F>(name: &str, body: impl FnOnce() -> F + Send + 'static) -> std::io::Result<()>
where
    F: Future<Output = ()> + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || advmoe_engine::block_on(body()))?;
    Ok(())
}

/// The next message on `queue`, blocking the worker's own thread; `None` when the sender is
/// gone.
pub async fn next_message<T>(queue: &Receiver<T>) -> Option<T> {
    queue.recv().ok()
}

/// Let the UI draw: nothing to do, the worker has its own thread.
pub async fn yield_now() {}

/// Run `work`, turning a panic inside it (a failed or lost GPU device, a bug) into an error
/// instead of a dead worker, so no panic reaches the user.
pub async fn guarded<T>(what: &str, work: impl Future<Output = AppResult<T>>) -> AppResult<T> {
    use futures_lite::FutureExt as _;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("no detail");
            Err(AppError::Panicked {
                what: what.to_string(),
                detail: detail.to_string(),
            })
        }
    }
}

/// Downloads exist only in the web build.
///
/// # Errors
/// Always: the desktop app saves into folders.
pub fn offer_downloads(_files: &Files) -> AppResult<()> {
    Err(AppError::Refused(
        "downloads exist only in the web build; save into a folder".into(),
    ))
}

/// There is no file picker natively (type a path or drop files on the window): `false`.
pub fn pick_files(_ctx: &egui::Context) -> bool {
    false
}

/// Files dropped on the window, by path.
pub fn dropped(files: Vec<egui::DroppedFileHandle>, _ctx: &egui::Context) -> Vec<Dropped> {
    files
        .into_iter()
        .map(|file| Dropped::Path(file.path().to_path_buf()))
        .collect()
}

macro_rules! embedded {
    ($($name:literal),+) => {
        /// A bundled demo model's `config.json` and `model.safetensors`, compiled in.
        ///
        /// # Errors
        /// A name that is not bundled.
        pub async fn demo_files(
            name: &str,
        ) -> AppResult<(Cow<'static, [u8]>, Cow<'static, [u8]>)> {
            match name {
                $($name => Ok((
                    Cow::Borrowed(include_bytes!(concat!("../../demo/", $name, "/config.json"))),
                    Cow::Borrowed(include_bytes!(concat!(
                        "../../demo/", $name, "/model.safetensors"
                    ))),
                )),)+
                other => Err(AppError::Refused(format!("no bundled demo model {other:?}"))),
            }
        }
    };
}

embedded!("dense-full-trades", "moe-at", "advmoe");

/// Milliseconds since the page started loading: only the web has a page.
pub fn now_ms() -> Option<f64> {
    None
}

/// Nothing arrives from outside a frame natively (tests call the app directly).
pub fn take_incoming() -> Vec<Incoming> {
    Vec::new()
}

/// Natively no page reads the status.
pub fn publish_status(_status: impl FnOnce() -> String) {}

/// The address a copied link starts with: natively none, so the link is its fragment
/// (`#v=1&…`), which `advmoe-lab --open` and the page both read.
pub fn link_base() -> String {
    String::new()
}

/// Show the link to the current state where the platform keeps one: natively nowhere.
pub fn show_link(_fragment: &str) {}
