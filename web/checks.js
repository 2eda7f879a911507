// Runs before the app loads: says in the page what is missing instead of leaving a blank
// canvas. The app itself falls back to Burn's CPU backend when WebGPU is absent, and replaces
// this text once it draws (or with its own error if it cannot start).
(function () {
  function say(text, isError) {
    var status = document.getElementById("status");
    if (!status) return;
    status.textContent = text;
    status.className = isError ? "error" : "";
    status.style.display = "block";
  }
  window.addEventListener("DOMContentLoaded", function () {
    if (typeof WebAssembly !== "object") {
      say("AdvMoE Lab needs WebAssembly, which this browser does not offer.", true);
      return;
    }
    // The module uses WebAssembly's 128-bit SIMD (every browser with WebGPU has it): a
    // one-function module returning i8x16.popcnt(i8x16.splat(0)) must validate.
    var simd = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0,
      10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);
    if (!WebAssembly.validate(simd)) {
      say("AdvMoE Lab needs WebAssembly SIMD, which this browser does not offer (Chrome or " +
        "Edge 91+, Firefox 89+, Safari 16.4+).", true);
      return;
    }
    if (!("gpu" in navigator)) {
      say(
        "Loading AdvMoE Lab… This browser offers no WebGPU (needs Chrome or Edge 113+, " +
          "on Linux with WebGPU enabled; Firefox 141+ on Windows; Safari 26, over https or " +
          "localhost), so training will run on the CPU and be slow.",
        false
      );
    }
  });
  // A failed download or instantiation of the wasm module.
  window.addEventListener("error", function (e) {
    var status = document.getElementById("status");
    if (status && status.textContent.indexOf("Loading") === 0) {
      say("AdvMoE Lab failed to load: " + (e.message || e), true);
    }
  });
})();
