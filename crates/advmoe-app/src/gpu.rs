//! Where training runs. Natively one GPU device serves drawing and training: eframe creates the
//! wgpu device (asking for what the adapter offers, as Burn's own device creation does) and Burn
//! registers that same device. On the web Burn acquires the browser's WebGPU device itself and
//! eframe draws with WebGL 2 beside it (`web.rs`).

#[cfg(not(target_arch = "wasm32"))]
use std::sync::Arc;

#[cfg(not(target_arch = "wasm32"))]
use burn::backend::wgpu::{WgpuSetup, wgpu};
use burn::tensor::Device;
#[cfg(not(target_arch = "wasm32"))]
use eframe::egui_wgpu;

/// The device request: the adapter's features and limits, which Burn's kernels need (eframe's
/// default asks for WebGL-level limits), as Burn's own device creation does.
#[cfg(not(target_arch = "wasm32"))]
pub fn device_descriptor()
-> Arc<dyn Fn(&wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> + Send + Sync> {
    Arc::new(|adapter: &wgpu::Adapter| wgpu::DeviceDescriptor {
        label: Some("advmoe-lab device"),
        required_features: adapter
            .features()
            .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        ..Default::default()
    })
}

/// eframe's wgpu configuration, with [`device_descriptor`].
#[cfg(not(target_arch = "wasm32"))]
pub fn wgpu_configuration() -> egui_wgpu::WgpuConfiguration {
    let mut setup = egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    setup.device_descriptor = device_descriptor();
    egui_wgpu::WgpuConfiguration {
        wgpu_setup: egui_wgpu::WgpuSetup::CreateNew(setup),
        ..Default::default()
    }
}

/// Where training runs, and why.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    /// The Burn device.
    pub device: Device,
    /// What to show the user, e.g. "GPU: NVIDIA H200 (Vulkan)".
    pub label: String,
    /// Why the GPU is not used, if it is not.
    pub fallback_reason: Option<String>,
}

/// Register eframe's wgpu device with Burn; without one (or if Burn rejects it) fall back to
/// Burn's CPU backend and say why.
#[cfg(not(target_arch = "wasm32"))]
pub fn compute_device(render_state: Option<&egui_wgpu::RenderState>) -> ComputeDevice {
    let cpu = |reason: String| ComputeDevice {
        device: Device::flex(),
        label: "CPU (Burn flex backend)".into(),
        fallback_reason: Some(reason),
    };
    let Some(state) = render_state else {
        return cpu("the window has no wgpu renderer".into());
    };
    let info = state.adapter.get_info();
    let setup = WgpuSetup {
        instance: state.instance.clone(),
        adapter: state.adapter.clone(),
        device: state.device.clone(),
        queue: state.queue.clone(),
        backend: info.backend,
    };
    match Device::wgpu_options().setup(setup).init() {
        Ok(device) => ComputeDevice {
            device,
            label: format!("GPU: {} ({:?})", info.name, info.backend),
            fallback_reason: None,
        },
        Err(e) => cpu(format!(
            "Burn could not use the adapter {:?} ({e}); training runs on the CPU",
            info.name
        )),
    }
}
