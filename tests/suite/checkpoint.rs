//! Model checkpoints: exact reload, cross-device reload, and clear errors for wrong files.

use advmoe_core::{Arch, ModelSpec, Rng, RouterKind};
use advmoe_model::checkpoint::{load_model, model_bytes, model_from_bytes, save_model};
use advmoe_model::{Mode, MoeNet};
use burn::tensor::{Device, Tensor};

use crate::common::{cpu, gpu, max_abs_diff, read2, tensor4};

fn images(device: &Device) -> Tensor<4> {
    let mut rng = Rng::seed(9);
    tensor4(
        (0..4 * 3 * 32 * 32).map(|_| rng.uniform()).collect(),
        [4, 3, 32, 32],
        device,
    )
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("advmoe-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn specs() -> Vec<ModelSpec> {
    let mut vgg = ModelSpec::resnet(8, 1, 3, 0.5);
    vgg.arch = Arch::Vgg;
    vgg.router = RouterKind::PerLayer;
    let mut per_layer = ModelSpec::resnet(8, 1, 2, 0.5);
    per_layer.router = RouterKind::PerLayer;
    vec![
        ModelSpec::resnet(8, 1, 2, 0.5),
        per_layer,
        vgg,
        ModelSpec::resnet(8, 1, 1, 1.0),
    ]
}

#[test]
fn saved_models_reload_to_identical_logits() {
    let device = cpu();
    let dir = tempdir("reload");
    for (i, spec) in specs().iter().enumerate() {
        let model = MoeNet::new(spec, 3 + i as u64, &device).unwrap();
        let path = dir.join(format!("m{i}.safetensors"));
        save_model(&model, spec, &path).unwrap();
        let loaded = load_model(&path, spec, &device).unwrap();
        let a = read2(model.forward(images(&device), Mode::Eval).logits);
        let b = read2(loaded.forward(images(&device), Mode::Eval).logits);
        assert_eq!(a, b, "{spec:?}");
        // A different seed really gives different weights, so the equality above means something.
        let other = MoeNet::new(spec, 100, &device).unwrap();
        assert_ne!(a, read2(other.forward(images(&device), Mode::Eval).logits));
    }
}

#[test]
fn a_model_saved_on_cpu_runs_the_same_on_wgpu() {
    let spec = &specs()[0];
    let model = MoeNet::new(spec, 1, &cpu()).unwrap();
    let bytes = model_bytes(&model, spec).unwrap();
    let on_gpu = model_from_bytes(&bytes, spec, &gpu(), "mem".as_ref()).unwrap();
    let a = read2(model.forward(images(&cpu()), Mode::Eval).logits);
    let b = read2(on_gpu.forward(images(&gpu()), Mode::Eval).logits);
    assert!(max_abs_diff(&a, &b) < 1e-3, "{a:?} vs {b:?}");
}

#[test]
fn wrong_files_give_clear_errors() {
    let device = cpu();
    let dir = tempdir("wrong");
    let spec = ModelSpec::resnet(8, 1, 2, 0.5);
    let path = dir.join("model.safetensors");
    save_model(&MoeNet::new(&spec, 0, &device).unwrap(), &spec, &path).unwrap();

    let wider = ModelSpec::resnet(16, 1, 2, 0.5);
    let err = load_model(&path, &wider, &device).unwrap_err().to_string();
    assert!(
        err.contains("does not match")
            && err.contains("resnet.stem.weight")
            && err.contains("[8, 3, 3, 3]"),
        "{err}"
    );

    let mut per_layer = spec.clone();
    per_layer.router = RouterKind::PerLayer;
    let err = load_model(&path, &per_layer, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("router.fc.weight is missing") || err.contains("unexpected tensor router"),
        "{err}"
    );

    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model(&path, &spec, &device).unwrap_err().to_string();
    assert!(err.contains("not a valid safetensors file"), "{err}");

    let err = load_model(&dir.join("absent.safetensors"), &spec, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
}
