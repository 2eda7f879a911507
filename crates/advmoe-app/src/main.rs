//! Entry points: natively a window whose wgpu device Burn shares for training; on the web
//! (`web/build.sh`, see `web/index.html`) the same app on the page's canvas, on the browser's
//! WebGPU device.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> eframe::Result {
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("AdvMoE Lab")
            .with_inner_size([1200.0, 800.0]),
        wgpu_options: advmoe_app::gpu::wgpu_configuration(),
        ..Default::default()
    };
    eframe::run_native(
        "AdvMoE Lab",
        options,
        Box::new(|cc| Ok(Box::new(advmoe_app::LabApp::new(cc)))),
    )
}

#[cfg(target_arch = "wasm32")]
fn main() {
    advmoe_app::platform::start();
}
