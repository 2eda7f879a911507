//! The views, one module each. A view reads app state and returns what the user asked for; it
//! never touches Burn tensors or blocks on the GPU.

pub mod setup;
pub mod train;
