//! Entry points: natively a window whose wgpu device Burn shares for training; on the web
//! (`web/build.sh`, see `web/index.html`) the same app on the page's canvas, on the browser's
//! WebGPU device.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> eframe::Result {
    // `advmoe-lab --open '<link>'` opens a link copied from the page or the app.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let link = match args.as_slice() {
        [] => None,
        [flag, link] if flag == "--open" => Some(link.clone()),
        _ => {
            eprintln!(
                "usage: advmoe-lab [--open LINK]   (LINK: an AdvMoE Lab link, e.g. '#v=1&view=attack&model=moe-at')"
            );
            std::process::exit(2);
        }
    };
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
        Box::new(move |cc| {
            let mut app = advmoe_app::LabApp::new(cc);
            if let Some(link) = &link {
                app.open_link(link);
            }
            Ok(Box::new(app))
        }),
    )
}

/// The page's one call of the static constructors (CubeCL registers about 4,900 pieces of its
/// IR through `inventory`). A binary that never calls them is linked "command-style":
/// wasm-ld then calls them at the top of every exported function, and the page calls into the
/// module many times per training step (every object WebGPU hands back goes through an
/// export), so each call re-ran all the registrations. That was most of the page's CPU time in
/// a step (bench/README.md, `browser.sh`). With this call in the module,
/// wasm-ld wraps no export.
#[cfg(target_arch = "wasm32")]
#[expect(
    unsafe_code,
    reason = "the constructors wasm-ld synthesises are reached through an extern function"
)]
mod constructors {
    unsafe extern "C" {
        fn __wasm_call_ctors();
    }

    /// Run every static constructor; once, first thing in `main`.
    pub fn run() {
        // SAFETY: called once, before anything reads what the constructors register; nothing
        // runs before `main` that needs them.
        unsafe { __wasm_call_ctors() };
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {
    constructors::run();
    advmoe_app::platform::start();
}
