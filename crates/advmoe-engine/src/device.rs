//! Picking the device a run uses.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, DeviceKind};

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceChoice {
    /// Burn's `flex` CPU backend.
    #[serde(rename = "cpu")]
    Cpu,
    /// Burn's `wgpu` backend on the default adapter (a software Vulkan adapter where no GPU is).
    #[serde(rename = "gpu")]
    Gpu,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" | "wgpu" => Ok(Self::Gpu),
            _ => Err(format!("unknown device {s:?}; expected cpu or gpu")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        })
    }
}

/// The plain (non-autodiff) device for a choice. GPU devices come up lazily on first use.
pub fn make_device(choice: DeviceChoice) -> Device {
    match choice {
        DeviceChoice::Cpu => Device::flex(),
        DeviceChoice::Gpu => Device::wgpu(DeviceKind::DefaultDevice),
    }
}
