//! The web side of [`crate::platform`]: starting the app on the page's canvas, workers as tasks
//! on the page's event loop, timers, downloads, the file picker, dropped files, the demo models
//! fetched beside the page, the page's status line, and the test hooks (`window.advmoeLab`) the
//! headless-browser test drives the app through. The page has one thread and one app, so what
//! arrives from outside a frame waits in this thread's queue ([`take_incoming`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::sync::mpsc::{Receiver, TryRecvError};

use eframe::egui;
use eframe::wasm_bindgen::{JsCast as _, JsValue, closure::Closure};
use eframe::web_sys;

use super::{Dropped, Incoming};
use crate::error::{AppError, AppResult};
use crate::hooks::HookCommand;
use advmoe_engine::NamedFiles as Files;

thread_local! {
    /// Files read, hook commands and errors, waiting for the app's next frame.
    static INCOMING: RefCell<Vec<Incoming>> = const { RefCell::new(Vec::new()) };
    /// The app's status as JSON, as last published (what `window.advmoeLab.status()` returns).
    static STATUS: RefCell<String> = const { RefCell::new(String::new()) };
}

fn push_incoming(item: Incoming) {
    INCOMING.with(|queue| queue.borrow_mut().push(item));
}

/// Everything that arrived since the last call.
pub fn take_incoming() -> Vec<Incoming> {
    INCOMING.with(|queue| std::mem::take(&mut *queue.borrow_mut()))
}

/// Publish the app's status for the page's hooks (every frame).
pub fn publish_status(status: impl FnOnce() -> String) {
    let status = status();
    STATUS.with(|s| *s.borrow_mut() = status);
}

fn status_json() -> String {
    STATUS.with(|s| {
        let status = s.borrow();
        if status.is_empty() {
            "{}".into()
        } else {
            status.clone()
        }
    })
}

/// Start a worker as a task on the page's event loop; it yields at every await.
///
/// # Errors
/// Never (the signature matches the native side's).
pub fn spawn_worker<F>(
    _name: &str,
    body: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + 'static,
{
    wasm_bindgen_futures::spawn_local(body());
    Ok(())
}

/// The next message on `queue`, sleeping between looks so the page keeps drawing; `None` when
/// the sender is gone.
pub async fn next_message<T>(queue: &Receiver<T>) -> Option<T> {
    loop {
        match queue.try_recv() {
            Ok(message) => return Some(message),
            Err(TryRecvError::Empty) => sleep_ms(15).await,
            Err(TryRecvError::Disconnected) => return None,
        }
    }
}

/// Let the page draw: return to the browser's event loop once.
pub async fn yield_now() {
    sleep_ms(0).await;
}

/// Run `work`. A panic aborts the module on the web (wasm has no unwinding); the page's panic
/// hook then says so.
pub async fn guarded<T>(_what: &str, work: impl Future<Output = AppResult<T>>) -> AppResult<T> {
    work.await
}

/// Offer files as browser downloads.
///
/// # Errors
/// If the browser refuses.
pub fn offer_downloads(files: &Files) -> AppResult<()> {
    for (name, bytes) in files {
        download(name, bytes).map_err(AppError::Browser)?;
    }
    Ok(())
}

/// A bundled demo model's `config.json` and `model.safetensors`, fetched from the page's
/// `demo/<name>/` folder (which keeps their 2.4 MB out of the wasm).
///
/// # Errors
/// If the files cannot be fetched.
pub async fn demo_files(name: &str) -> AppResult<(Cow<'static, [u8]>, Cow<'static, [u8]>)> {
    let fetch = |file: &str| fetch_bytes(format!("demo/{name}/{file}"));
    let config = fetch("config.json").await.map_err(AppError::Browser)?;
    let model = fetch("model.safetensors")
        .await
        .map_err(AppError::Browser)?;
    Ok((Cow::Owned(config), Cow::Owned(model)))
}

fn window() -> Result<web_sys::Window, String> {
    web_sys::window().ok_or_else(|| "no browser window".to_string())
}

fn js_error(e: JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Sleep on the page's event loop (a `setTimeout`), letting the browser draw meanwhile.
pub async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Ok(window) = window() {
            let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// Milliseconds since the page started loading (`performance.now()`).
pub fn now_ms() -> Option<f64> {
    web_sys::window()?.performance().map(|p| p.now())
}

/// Offer `bytes` as a download called `name`.
///
/// # Errors
/// If the browser refuses to build the file.
fn download(name: &str, bytes: &[u8]) -> Result<(), String> {
    let array = js_sys::Uint8Array::from(bytes);
    let parts = js_sys::Array::of1(&array.buffer());
    let options = web_sys::BlobPropertyBag::new();
    options.set_type("application/octet-stream");
    let blob = web_sys::Blob::new_with_buffer_source_sequence_and_options(&parts, &options)
        .map_err(js_error)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(js_error)?;
    let document = window()?.document().ok_or("no document")?;
    let anchor: web_sys::HtmlAnchorElement = document
        .create_element("a")
        .map_err(js_error)?
        .dyn_into()
        .map_err(|_| "not an anchor")?;
    anchor.set_href(&url);
    anchor.set_download(name);
    anchor.click();
    // The click has started the download; the URL can go once the browser has taken it.
    let revoke = Closure::once_into_js(move || {
        let _ = web_sys::Url::revoke_object_url(&url);
    });
    let _ = window()?
        .set_timeout_with_callback_and_timeout_and_arguments_0(revoke.unchecked_ref(), 10_000);
    Ok(())
}

/// Fetch a file that is served beside the page (`url` relative to it).
///
/// # Errors
/// If the request fails or the server answers other than 200.
async fn fetch_bytes(url: String) -> Result<Vec<u8>, String> {
    use wasm_bindgen_futures::JsFuture;
    let response = JsFuture::from(window()?.fetch_with_str(&url))
        .await
        .map_err(|e| format!("fetching {url}: {}", js_error(e)))?;
    let response: web_sys::Response = response
        .dyn_into()
        .map_err(|_| format!("fetching {url}: the answer is not a Response"))?;
    if !response.ok() {
        return Err(format!(
            "fetching {url}: the server answered {} {} (was the page served from the web \
             build's folder, with its demo/ files?)",
            response.status(),
            response.status_text()
        ));
    }
    let buffer = response
        .array_buffer()
        .map_err(|e| format!("fetching {url}: {}", js_error(e)))?;
    let buffer = JsFuture::from(buffer)
        .await
        .map_err(|e| format!("fetching {url}: {}", js_error(e)))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// Read browser files into memory and hand them to the app.
async fn read_files(files: Vec<web_sys::File>, ctx: egui::Context) {
    let mut out = Vec::new();
    for file in files {
        match wasm_bindgen_futures::JsFuture::from(file.array_buffer()).await {
            Ok(buffer) => out.push((file.name(), js_sys::Uint8Array::new(&buffer).to_vec())),
            Err(e) => push_incoming(Incoming::Error(format!(
                "reading {}: {}",
                file.name(),
                js_error(e)
            ))),
        }
    }
    push_incoming(Incoming::Files(out));
    ctx.request_repaint();
}

/// Open the browser's file picker (several files at once: a model's two files, a dataset's
/// four); the chosen files reach the app through [`take_incoming`]. Returns `true`.
pub fn pick_files(ctx: &egui::Context) -> bool {
    let ctx = ctx.clone();
    let result = (|| -> Result<(), String> {
        let document = window()?.document().ok_or("no document")?;
        let input: web_sys::HtmlInputElement = document
            .create_element("input")
            .map_err(js_error)?
            .dyn_into()
            .map_err(|_| "not an input")?;
        input.set_type("file");
        input.set_multiple(true);
        input.set_id("advmoe-file-picker");
        let picked = input.clone();
        let on_change = Closure::once_into_js(move || {
            let Some(list) = picked.files() else {
                return;
            };
            let files: Vec<web_sys::File> =
                (0..list.length()).filter_map(|i| list.get(i)).collect();
            wasm_bindgen_futures::spawn_local(read_files(files, ctx));
        });
        input.set_onchange(Some(on_change.unchecked_ref()));
        input.click();
        Ok(())
    })();
    if let Err(message) = result {
        push_incoming(Incoming::Error(format!(
            "the file picker failed: {message}"
        )));
    }
    true
}

/// Read files dropped on the page (eframe hands them over with their browser handles); they
/// reach the app through [`take_incoming`], so none is returned now.
pub fn dropped(dropped: Vec<egui::DroppedFileHandle>, ctx: &egui::Context) -> Vec<Dropped> {
    let ctx = ctx.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let mut out = Vec::new();
        for file in &dropped {
            let name = file.path().to_string_lossy().into_owned();
            match file.bytes_async().await {
                Ok(bytes) => out.push((name, bytes)),
                Err(e) => push_incoming(Incoming::Error(format!("reading {name}: {e}"))),
            }
        }
        push_incoming(Incoming::Files(out));
        ctx.request_repaint();
    });
    Vec::new()
}

/// Show `message` in the page's status line (`#status`), above the canvas.
pub fn set_page_status(message: &str, is_error: bool) {
    let Some(element) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("status"))
    else {
        return;
    };
    element.set_text_content(Some(message));
    let _ = element.set_attribute("class", if is_error { "error" } else { "" });
    if let Ok(element) = element.dyn_into::<web_sys::HtmlElement>() {
        let _ = element
            .style()
            .set_property("display", if message.is_empty() { "none" } else { "block" });
    }
}

thread_local! {
    static KEEP: RefCell<Vec<JsValue>> = const { RefCell::new(Vec::new()) };
}

/// Install `window.advmoeLab`: `status()` returns the app's state as JSON (as last
/// published); `send(json)` queues a command ([`HookCommand`]) that the app carries out on its
/// next frame, as the matching clicks would.
fn install_hooks(ctx: egui::Context) -> Result<(), String> {
    let object = js_sys::Object::new();
    let status = Closure::<dyn Fn() -> String>::new(status_json);
    let send = Closure::<dyn Fn(String) -> Result<(), JsValue>>::new(move |json: String| {
        let command = HookCommand::parse(&json)
            .map_err(|e| JsValue::from_str(&format!("not a hook command: {e}")))?;
        push_incoming(Incoming::Hook(command));
        ctx.request_repaint();
        Ok(())
    });
    js_sys::Reflect::set(&object, &"status".into(), status.as_ref()).map_err(js_error)?;
    js_sys::Reflect::set(&object, &"send".into(), send.as_ref()).map_err(js_error)?;
    js_sys::Reflect::set(&window()?.into(), &"advmoeLab".into(), &object).map_err(js_error)?;
    KEEP.with(|k| {
        k.borrow_mut().push(status.into_js_value());
        k.borrow_mut().push(send.into_js_value());
    });
    Ok(())
}

/// Burn acquires the browser's WebGPU device (asynchronously, as the web requires); without
/// one it runs on its CPU backend and says why. eframe draws with WebGL 2 either way: a canvas
/// presenting from the WebGPU device that trains lost that device in headless Chromium ("A valid
/// external Instance reference no longer exists"), and drawing with glow keeps wgpu's own WebGL
/// path (wgpu-core, wgpu-hal, naga) out of the wasm.
async fn compute_device() -> crate::gpu::ComputeDevice {
    match burn::tensor::Device::wgpu_options()
        .init_with_setup_async()
        .await
    {
        Ok((device, setup)) => crate::gpu::ComputeDevice {
            device,
            label: crate::gpu::gpu_label(&setup.adapter.get_info()),
            fallback_reason: None,
            wgpu: Some(setup.device),
        },
        Err(e) => crate::gpu::ComputeDevice::cpu(
            CPU_LABEL,
            format!(
                "No WebGPU device ({e}), so training and attacks run on Burn's CPU backend \
                 compiled to WebAssembly: expect them to be much slower. Chrome or Edge \
                 113+ (on Linux with WebGPU enabled), Firefox 141+ on Windows or Safari 26 \
                 have WebGPU"
            ),
        ),
    }
}

/// What the title bar says of Burn's CPU backend on the web.
pub const CPU_LABEL: &str = "CPU (Burn flex backend, WebAssembly)";

/// Start the app on the page's canvas (`#the_canvas_id`). Whatever fails is said in the page,
/// never left as a blank canvas.
pub fn start() {
    eframe::WebLogger::init(log::LevelFilter::Warn).ok();
    let runner = eframe::WebRunner::new();
    // After eframe's own hook (which logs to the console): also say it in the page.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        set_page_status(
            &format!(
                "AdvMoE Lab stopped after an internal error: {info}. Reload the page; \
                 downloaded models are unaffected."
            ),
            true,
        );
    }));
    wasm_bindgen_futures::spawn_local(async move {
        let canvas = window()
            .ok()
            .and_then(|w| w.document())
            .and_then(|d| d.get_element_by_id("the_canvas_id"))
            .and_then(|c| c.dyn_into::<web_sys::HtmlCanvasElement>().ok());
        let Some(canvas) = canvas else {
            set_page_status("This page has no canvas #the_canvas_id to draw in.", true);
            return;
        };
        let compute = compute_device().await;
        let options = eframe::WebOptions::default();
        let started = runner
            .start(
                canvas,
                options,
                Box::new(|cc| {
                    install_hooks(cc.egui_ctx.clone()).map_err(|e| e.to_string())?;
                    follow_address(cc.egui_ctx.clone())?;
                    Ok(Box::new(crate::LabApp::with_device(
                        compute,
                        cc.egui_ctx.clone(),
                    )))
                }),
            )
            .await;
        match started {
            Ok(()) => set_page_status("", false),
            Err(e) => set_page_status(
                &format!(
                    "AdvMoE Lab could not start: {}. It needs a browser with WebGPU (Chrome or \
                     Edge 113+, Firefox 141+ on Windows, Safari 26) and WebGL 2.",
                    js_error(e)
                ),
                true,
            ),
        }
    });
}

/// The page's address without its fragment, which a copied link starts with.
pub fn link_base() -> String {
    window()
        .ok()
        .map(|w| w.location())
        .and_then(|l| {
            Some(format!(
                "{}{}{}",
                l.origin().ok()?,
                l.pathname().ok()?,
                l.search().ok()?
            ))
        })
        .unwrap_or_default()
}

/// Keep the page's address fragment equal to the link to the current state, without adding
/// to the browser's history.
pub fn show_link(fragment: &str) {
    if let Ok(history) = window().and_then(|w| w.history().map_err(js_error)) {
        let _ = history.replace_state_with_url(&JsValue::NULL, "", Some(&format!("#{fragment}")));
    }
}

/// Open the fragment the page was loaded with, and any fragment the user types later.
fn follow_address(ctx: egui::Context) -> Result<(), String> {
    let w = window()?;
    let hash = w.location().hash().map_err(js_error)?;
    if hash.len() > 1 {
        push_incoming(Incoming::Link(hash));
    }
    let changed = Closure::<dyn Fn()>::new(move || {
        if let Ok(hash) = window().and_then(|w| w.location().hash().map_err(js_error)) {
            push_incoming(Incoming::Link(hash));
            ctx.request_repaint();
        }
    });
    w.add_event_listener_with_callback("hashchange", changed.as_ref().unchecked_ref())
        .map_err(js_error)?;
    KEEP.with(|k| k.borrow_mut().push(changed.into_js_value()));
    Ok(())
}
