//! Cross-crate tests of AdvMoE Lab, linked as one binary (one link of burn + wgpu).
//!
//! GPU tests run on whatever adapter wgpu finds; on CI machines that is Mesa's lavapipe
//! (software Vulkan). They fail, never skip, when no adapter exists.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly, like the tests"
)]

mod adversarial;
mod app;
mod attacks;
mod checkpoint;
mod common;
mod fuzz;
mod lessons;
mod moe_conv;
mod reliability;
mod sparse;
mod training;

/// Counts the bytes this process has allocated, so that a test in a child process of its own can
/// measure the peak a reader allocates on hostile input (`reliability.rs`).
pub mod allocated {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    static CURRENT: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// The system allocator, counting.
    pub struct Counting;

    fn grew(bytes: usize) {
        let now = CURRENT.fetch_add(bytes, Relaxed) + bytes;
        PEAK.fetch_max(now, Relaxed);
    }

    #[expect(
        unsafe_code,
        reason = "a global allocator is an unsafe trait; this one forwards to System"
    )]
    // SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
    // updates two counters, so `System`'s guarantees are this allocator's.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller upholds `alloc`'s contract, which is `System.alloc`'s.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as `alloc`.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
            unsafe { System.dealloc(ptr, layout) };
            CURRENT.fetch_sub(layout.size(), Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as `dealloc`, and `new_size` is the caller's, valid for `System.realloc`.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                if new_size >= layout.size() {
                    grew(new_size - layout.size());
                } else {
                    CURRENT.fetch_sub(layout.size() - new_size, Relaxed);
                }
            }
            p
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Start a measurement: the peak is set to what is allocated now, which is returned.
    pub fn reset_peak() -> usize {
        let now = CURRENT.load(Relaxed);
        PEAK.store(now, Relaxed);
        now
    }

    /// The most bytes allocated at once since [`reset_peak`].
    pub fn peak() -> usize {
        PEAK.load(Relaxed)
    }
}
