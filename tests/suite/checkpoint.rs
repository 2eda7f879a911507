//! Model checkpoints: exact reload, cross-device reload, and clear errors for wrong files.

use advmoe_core::{Arch, ModelSpec, Rng, RouterKind};
use advmoe_model::checkpoint::{load_model, model_bytes, model_from_bytes, save_model};
use advmoe_model::{Mode, MoeNet};
use burn::module::Module as _;
use burn::tensor::{Device, Tensor};

use crate::common::Wait as _;
use crate::common::{Scratch, cpu, gpu, max_abs_diff, read2, tensor4};

fn images(device: &Device) -> Tensor<4> {
    let mut rng = Rng::seed(9);
    tensor4(
        (0..4 * 3 * 32 * 32).map(|_| rng.uniform()).collect(),
        [4, 3, 32, 32],
        device,
    )
}

fn tempdir(tag: &str) -> Scratch {
    let dir = Scratch::new(&format!("ckpt-{tag}"));
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
        save_model(&model, spec, &path).wait().unwrap();
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
    let bytes = model_bytes(&model, spec).wait().unwrap();
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
    save_model(&MoeNet::new(&spec, 0, &device).unwrap(), &spec, &path)
        .wait()
        .unwrap();

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

/// Parameter gradients of a whole model on one batch, on the CPU and on the wgpu device (same
/// weights, same batch); returns the parameters whose gradients differ by more than 1% of their
/// largest CPU value.
fn gradient_mismatches(spec: &ModelSpec) -> Vec<String> {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Gradients;

    struct Grads<'a> {
        path: Vec<String>,
        grads: &'a Gradients,
        out: Vec<(String, Vec<f32>)>,
    }
    impl ModuleVisitor for Grads<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = param.val().grad(self.grads) {
                let n = g.shape().num_elements();
                let values = g.reshape([n]).into_data().try_into_vec_as::<f32>().unwrap();
                self.out.push((self.path.join("."), values));
            }
        }
    }

    let cpu_model = MoeNet::new(spec, 4, &cpu().autodiff()).unwrap();
    let bytes = model_bytes(&cpu_model, spec).wait().unwrap();
    let gpu_model = model_from_bytes(&bytes, spec, &gpu().autodiff(), "mem".as_ref()).unwrap();
    let grads_of = |model: &MoeNet, device: &Device| {
        let out = model.forward(images(device), Mode::Train);
        let target = Tensor::<2>::ones(out.logits.dims(), device);
        let loss = burn::tensor::activation::log_softmax(out.logits, 1)
            .mul(target)
            .sum()
            .neg();
        let grads = loss.backward();
        let mut v = Grads {
            path: Vec::new(),
            grads: &grads,
            out: Vec::new(),
        };
        model.visit(&mut v);
        v.out
    };
    let a = grads_of(&cpu_model, &cpu().autodiff());
    let b = grads_of(&gpu_model, &gpu().autodiff());
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 20, "only {} gradients", a.len());
    a.iter()
        .zip(&b)
        .filter_map(|((name, ga), (_, gb))| {
            let scale = ga.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let diff = max_abs_diff(ga, gb) / scale;
            (diff > 1e-2).then(|| format!("{name}: {diff}"))
        })
        .collect()
}

#[test]
fn dense_model_gradients_agree_between_cpu_and_wgpu() {
    let mismatches = gradient_mismatches(&ModelSpec::resnet(8, 1, 1, 1.0));
    assert!(mismatches.is_empty(), "gradients differ: {mismatches:?}");
}

/// Whole MoE models, both router kinds and both backbones. This caught a wrong input gradient on
/// wgpu when the MoE selection went through a 5-D reshape (see the
/// selection in `MoeConv2d::forward`), which had kept GPU training of MoE models at chance.
#[test]
fn moe_model_gradients_agree_between_cpu_and_wgpu() {
    for spec in specs().into_iter().filter(|s| s.num_experts > 1) {
        let mismatches = gradient_mismatches(&spec);
        assert!(
            mismatches.is_empty(),
            "{:?} {:?}: gradients differ: {mismatches:?}",
            spec.arch,
            spec.router
        );
    }
}

/// A batch norm's running variance may be +inf (vanilla MoE AT's collapsed image router on
/// CIFAR-10 saved one): such a file loads. An infinite weight, or a NaN anywhere, is refused
/// with the tensor named.
#[test]
fn an_infinite_running_variance_loads_and_other_non_finite_values_do_not() {
    use advmoe_model::checkpoint::{NamedTensor, parse_safetensors, safetensors_bytes};
    let file = |name: &str, value: f32| {
        let tensor = NamedTensor {
            name: name.into(),
            shape: vec![2],
            values: vec![1.0, value],
        };
        safetensors_bytes(&[tensor], Default::default()).unwrap()
    };
    let path = std::path::Path::new("model.safetensors");
    let var = "router.bns.2.running_var";
    let (tensors, _) = parse_safetensors(path, &file(var, f32::INFINITY)).unwrap();
    assert_eq!(tensors[var].values, [1.0, f32::INFINITY]);
    for (name, value) in [
        (var, f32::NAN),
        (var, f32::NEG_INFINITY),
        ("router.convs.0.weight", f32::INFINITY),
        ("resnet.stem_bn.running_mean", f32::INFINITY),
    ] {
        let err = parse_safetensors(path, &file(name, value))
            .err()
            .unwrap_or_else(|| panic!("{name} holding {value} was accepted"))
            .to_string();
        assert!(
            err.contains(name) && err.contains("must be finite"),
            "{err}"
        );
    }
}
