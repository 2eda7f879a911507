//! Where training runs. Natively one GPU device serves drawing and training: eframe creates the
//! wgpu device (asking for what the adapter offers, as Burn's own device creation does) and Burn
//! registers that same device. On the web Burn acquires the browser's WebGPU device itself and
//! eframe draws with WebGL 2 beside it (`web.rs`). When a run's device is lost, [`acquire`]
//! gets a new one (the web's "continue on a new WebGPU device").

use std::sync::Arc;

use burn::backend::wgpu::{WgpuSetup, wgpu};
use burn::tensor::Device;
#[cfg(not(target_arch = "wasm32"))]
use eframe::egui_wgpu;

/// The device request: the adapter's features and limits, which Burn's kernels need (eframe's
/// default asks for WebGL-level limits), as Burn's own device creation does.
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
    /// The wgpu device Burn trains on, if it is a GPU: kept so that a test can force its loss
    /// ([`crate::LabApp::lose_device`]).
    pub wgpu: Option<wgpu::Device>,
}

impl ComputeDevice {
    /// Burn's CPU backend, and why it is used.
    pub fn cpu(label: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            device: Device::flex(),
            label: label.into(),
            fallback_reason: Some(reason.into()),
            wgpu: None,
        }
    }

    /// Register a wgpu setup with Burn (a new runtime identity), labelled after its adapter.
    ///
    /// # Errors
    /// If Burn rejects the setup.
    pub fn register(setup: WgpuSetup) -> Result<Self, String> {
        let info = setup.adapter.get_info();
        let wgpu = setup.device.clone();
        let device = Device::wgpu_options()
            .setup(setup)
            .init()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            device,
            label: gpu_label(&info),
            fallback_reason: None,
            wgpu: Some(wgpu),
        })
    }
}

/// What the title bar says of a GPU adapter, e.g. "GPU: NVIDIA H200 (Vulkan)" natively,
/// "GPU: WebGPU (…), a software adapter" on the web (where the name is often empty).
pub fn gpu_label(info: &wgpu::AdapterInfo) -> String {
    if info.backend != wgpu::Backend::BrowserWebGpu {
        return format!("GPU: {} ({:?})", info.name, info.backend);
    }
    let mut label = "GPU: WebGPU".to_string();
    if !info.name.is_empty() {
        label += &format!(" ({})", info.name);
    }
    if info.device_type == wgpu::DeviceType::Cpu {
        label += ", a software adapter";
    }
    label
}

/// A new GPU device, from a new wgpu instance's preferred adapter, with
/// [`device_descriptor`]'s request, registered with Burn: where a run continues after its device
/// was lost (a lost device cannot be used again, and on the web neither can its adapter).
///
/// # Errors
/// If there is no adapter, the adapter refuses the device, or Burn refuses it.
pub async fn acquire() -> Result<ComputeDevice, String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("no GPU adapter: {e}"))?;
    let (device, queue) = adapter
        .request_device(&device_descriptor()(&adapter))
        .await
        .map_err(|e| format!("the GPU adapter refused a device: {e}"))?;
    let backend = adapter.get_info().backend;
    ComputeDevice::register(WgpuSetup {
        instance,
        adapter,
        device,
        queue,
        backend,
    })
    .map_err(|e| format!("Burn could not use the new device: {e}"))
}

/// Register eframe's wgpu device with Burn; without one (or if Burn rejects it) fall back to
/// Burn's CPU backend and say why.
#[cfg(not(target_arch = "wasm32"))]
pub fn compute_device(render_state: Option<&egui_wgpu::RenderState>) -> ComputeDevice {
    let cpu = |reason: String| ComputeDevice::cpu(crate::platform::CPU_LABEL, reason);
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
    ComputeDevice::register(setup).unwrap_or_else(|e| {
        cpu(format!(
            "Burn could not use the adapter {:?} ({e}); training runs on the CPU",
            info.name
        ))
    })
}
