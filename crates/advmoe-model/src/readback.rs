//! Readback of small tensors to the host, with failures as errors (never empty data).
//!
//! Every readback is `async` ([`Tensor::into_data_async`]), because the browser's WebGPU can
//! only map a buffer by returning to its event loop: a synchronous read panics there. Native
//! callers (the CLI, the desktop app's worker threads, tests) drive these futures with
//! [`block_on`]; the web build awaits them in a cooperative task. The training loop defers its
//! readbacks and reads many steps' losses at once.

use burn::tensor::{Element, Int, Tensor, TensorData};

/// A tensor could not be read back from the device (e.g. the device was lost).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("reading {what} back from the device failed: {reason}")]
pub struct ReadbackError {
    /// What was being read.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

fn data_as<E: Element, X: std::fmt::Display>(
    data: Result<TensorData, X>,
    what: &'static str,
) -> Result<Vec<E>, ReadbackError> {
    let error = |reason: String| ReadbackError {
        what,
        reason: one_line(&reason),
    };
    data.map_err(|e| error(e.to_string()))?
        .try_into_vec_as::<E>()
        .map_err(|e| error(e.to_string()))
}

/// Burn's error text on one line, without its backtrace (which a user cannot act on).
fn one_line(reason: &str) -> String {
    let reason = reason.split("\nBacktrace:").next().unwrap_or(reason);
    reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Read a float tensor back as `f32`s.
pub async fn read_f32<const D: usize>(
    t: Tensor<D>,
    what: &'static str,
) -> Result<Vec<f32>, ReadbackError> {
    data_as(t.into_data_async().await, what)
}

/// Read an int tensor back as `i64`s.
pub async fn read_i64<const D: usize>(
    t: Tensor<D, Int>,
    what: &'static str,
) -> Result<Vec<i64>, ReadbackError> {
    data_as(t.into_data_async().await, what)
}

/// Run a future to completion on the calling thread: how native code (threads of its own, the
/// CLI, tests) uses the async engine. Not available on the web, where blocking would freeze the
/// page and a GPU readback could never complete.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    futures_lite::future::block_on(future)
}
