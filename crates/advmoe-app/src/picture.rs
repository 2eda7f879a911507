//! Images between the engine's channel-major pixels, egui textures, the user's own PNG/JPEG
//! files and PNG exports.

use crate::error::{AppError, AppResult};
use std::path::Path;

use eframe::egui::{self, ColorImage, TextureHandle, TextureOptions};

/// A channel-major `[c, h, w]` image with values in [0, 1] (c = 1 or 3) as an egui image.
pub fn color_image(pixels: &[f32], [c, h, w]: [usize; 3]) -> ColorImage {
    let plane = h * w;
    let rgb: Vec<u8> = (0..plane)
        .flat_map(|p| {
            (0..3).map(move |ch| {
                let v = pixels
                    .get(ch.min(c.saturating_sub(1)) * plane + p)
                    .copied()
                    .unwrap_or(0.0);
                (v.clamp(0.0, 1.0) * 255.0).round() as u8
            })
        })
        .collect();
    ColorImage::from_rgb([w, h], &rgb)
}

/// The same for 8-bit dataset pixels.
pub fn color_image_u8(pixels: &[u8], shape: [usize; 3]) -> ColorImage {
    let values: Vec<f32> = pixels.iter().map(|&v| f32::from(v) / 255.0).collect();
    color_image(&values, shape)
}

/// The side, in points, at which an image `side` pixels high is drawn: at least 4× (a 32-pixel
/// CIFAR image at 128 points, so a class can see a cat turn into a dog) and at least `at_least`.
pub fn magnified_side(side: usize, at_least: f32) -> f32 {
    (4.0 * side as f32).max(at_least)
}

/// Upload an image as a texture drawn with sharp pixels (small images are shown enlarged).
pub fn texture(ctx: &egui::Context, name: &str, image: ColorImage) -> TextureHandle {
    ctx.load_texture(name, image, TextureOptions::NEAREST)
}

/// Decode the user's PNG or JPEG and fit it to a model's input: resized to `h × w` (the whole
/// picture, aspect not kept), gray when the model takes one channel, channel-major in [0, 1].
///
/// # Errors
/// A file that is not a readable PNG or JPEG, or an empty one.
pub fn fit_user_image(bytes: &[u8], [c, h, w]: [usize; 3]) -> Result<Vec<f32>, ImageError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Unreadable(image::ImageError::IoError(e)))?;
    reader.limits(user_image_limits());
    let decoded = reader.decode().map_err(ImageError::Unreadable)?;
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(ImageError::Empty);
    }
    let resized = decoded.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle);
    let plane = h * w;
    let mut out = vec![0.0f32; c * plane];
    if c == 1 {
        for (i, p) in resized.to_luma8().pixels().enumerate() {
            out[i] = f32::from(p.0[0]) / 255.0;
        }
    } else {
        for (i, p) in resized.to_rgb8().pixels().enumerate() {
            for ch in 0..c.min(3) {
                out[ch * plane + i] = f32::from(p.0[ch]) / 255.0;
            }
        }
    }
    Ok(out)
}

/// Most pixels a side and bytes a user's image may decode to: a 48-megapixel photo fits, a
/// hostile header claiming 60,000 × 60,000 pixels is refused before anything is allocated.
pub const USER_IMAGE_MAX_SIDE: u32 = 8192;
/// See [`USER_IMAGE_MAX_SIDE`].
pub const USER_IMAGE_MAX_BYTES: u64 = 256 << 20;

fn user_image_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(USER_IMAGE_MAX_SIDE);
    limits.max_image_height = Some(USER_IMAGE_MAX_SIDE);
    limits.max_alloc = Some(USER_IMAGE_MAX_BYTES);
    limits
}

/// Write an egui image as a PNG.
///
/// # Errors
/// If the file cannot be written.
pub fn save_png(image: &ColorImage, path: &Path) -> AppResult<()> {
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|p| p.to_array()).collect();
    image::save_buffer(
        path,
        &rgba,
        w as u32,
        h as u32,
        image::ExtendedColorType::Rgba8,
    )
    .map_err(|e| AppError::Image {
        name: path.display().to_string(),
        reason: format!("cannot be written: {e}"),
    })
}

/// Why the user's image cannot be attacked.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a PNG or JPEG that decodes.
    #[error("not a PNG or JPEG image that can be read: {0}")]
    Unreadable(image::ImageError),
    /// No pixels.
    #[error("the image is empty")]
    Empty,
}
