//! The MoE conv against its definition, on the CPU and the wgpu device.

use advmoe_core::Rng;
use advmoe_model::layers::conv_options;
use advmoe_model::{MoeConv2d, RouteError, check_routes, gate_from_scores};
use burn::tensor::{Device, Tensor, TensorData, module::conv2d};

use crate::common::Wait as _;
use crate::common::{cpu, gpu, max_abs_diff, read, read2, tensor4};

fn random(shape: [usize; 4], rng: &mut Rng, device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    tensor4((0..n).map(|_| rng.normal()).collect(), shape, device)
}

fn scores_for(experts: &[usize], num_experts: usize, rng: &mut Rng, device: &Device) -> Tensor<2> {
    let mut values = Vec::new();
    for &e in experts {
        for k in 0..num_experts {
            values.push(if k == e {
                2.0 + rng.uniform()
            } else {
                rng.uniform()
            });
        }
    }
    Tensor::from_data(
        TensorData::new(values, [experts.len(), num_experts]),
        device,
    )
}

/// Each sample's output equals a dense conv with its expert's filters, for strides 1 and 2,
/// kernels 1 and 3, and an expert that gets no sample.
fn check_selection(device: &Device) {
    let mut rng = Rng::seed(11);
    for (kernel, stride, num_experts) in [(3, 1, 3), (3, 2, 4), (1, 1, 2), (1, 2, 8)] {
        let conv = MoeConv2d::new(5, 4, kernel, stride, num_experts, false, &mut rng, device);
        // Expert 1 gets no sample when num_experts > 2.
        let experts: Vec<usize> =
            [0, 2 % num_experts, 0, num_experts - 1, 2 % num_experts].to_vec();
        let x = random([5, 5, 7, 7], &mut rng, device);
        let route = gate_from_scores(scores_for(&experts, num_experts, &mut rng, device));
        let (y, _) = conv.forward(x.clone(), Some(route.clone()), false);
        let [_, c, h, w] = y.dims();
        assert_eq!([c, h, w], [4, (7 - 1) / stride + 1, (7 - 1) / stride + 1]);
        assert_eq!(check_routes(&[route]).wait().unwrap()[0], experts);
        let y = read(y);
        let per = c * h * w;
        for (b, &e) in experts.iter().enumerate() {
            let xb = x.clone().narrow(0, b, 1);
            let expected = read(conv2d(
                xb,
                conv.expert_weight(e),
                None,
                conv_options(stride, kernel),
            ));
            let diff = max_abs_diff(&y[b * per..(b + 1) * per], &expected);
            assert!(
                diff < 1e-4,
                "k={kernel} s={stride} N={num_experts} sample {b}: {diff}"
            );
        }
    }
}

#[test]
fn moe_conv_selects_the_routed_expert_on_cpu() {
    check_selection(&cpu());
}

#[test]
fn moe_conv_selects_the_routed_expert_on_wgpu() {
    check_selection(&gpu());
}

/// dL/ds[b, e_b] = sum(dL/dy_b * y_b); zero for unselected experts; and the gate leaves the
/// forward value unchanged.
fn check_straight_through(device: &Device) {
    let ad = device.clone().autodiff();
    let mut rng = Rng::seed(5);
    let num_experts = 3;
    let conv = MoeConv2d::new(4, 6, 3, 1, num_experts, false, &mut rng, &ad);
    let experts = [2, 0, 1, 2];
    let scores = scores_for(&experts, num_experts, &mut rng, &ad).require_grad();
    let x = random([4, 4, 5, 5], &mut rng, &ad);
    let upstream = random([4, 6, 5, 5], &mut rng, &ad);
    let (y, _) = conv.forward(x, Some(gate_from_scores(scores.clone())), false);
    let loss = (y.clone() * upstream.clone()).sum();
    let grads = loss.backward();
    let ds = read2(Tensor::from_inner(
        scores.grad(&grads).expect("router scores get a gradient"),
    ));
    let y = read(y.detach());
    let up = read(upstream);
    let per = 6 * 5 * 5;
    for (b, &e) in experts.iter().enumerate() {
        let expected: f32 = (b * per..(b + 1) * per).map(|i| y[i] * up[i]).sum();
        for k in 0..num_experts {
            let got = ds[b * num_experts + k];
            if k == e {
                assert!(
                    (got - expected).abs() < 1e-3 * (1.0 + expected.abs()),
                    "sample {b}: {got} vs {expected}"
                );
            } else {
                assert_eq!(got, 0.0, "unselected expert {k} of sample {b}");
            }
        }
    }
}

#[test]
fn straight_through_router_gradient_matches_its_definition_on_cpu() {
    check_straight_through(&cpu());
}

#[test]
fn straight_through_router_gradient_matches_its_definition_on_wgpu() {
    check_straight_through(&gpu());
}

#[test]
fn ties_go_to_the_lowest_index_and_nan_scores_are_errors() {
    let device = cpu();
    let scores = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, 1.0, 0.5, 0.2, 0.7, 0.7], [2, 3]),
        &device,
    );
    let route = gate_from_scores(scores);
    assert_eq!(
        check_routes(std::slice::from_ref(&route)).wait().unwrap(),
        vec![vec![0, 1]]
    );
    assert_eq!(read2(route.gate), vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);

    let nan = Tensor::<2>::from_data(
        TensorData::new(vec![0.1f32, 0.2, f32::NAN, 0.3], [2, 2]),
        &device,
    );
    let route = gate_from_scores(nan);
    let err = check_routes(std::slice::from_ref(&route))
        .wait()
        .unwrap_err();
    assert_eq!(
        err,
        RouteError::NonFinite {
            layer: 0,
            sample: 1
        }
    );
    // The NaN poisons the sample's output instead of silently choosing expert 0.
    let mut rng = Rng::seed(1);
    let conv = MoeConv2d::new(2, 2, 3, 1, 2, false, &mut rng, &device);
    let (y, _) = conv.forward(random([2, 2, 4, 4], &mut rng, &device), Some(route), false);
    let y = read(y);
    assert!(y[..32].iter().all(|v| v.is_finite()));
    assert!(y[32..].iter().all(|v| v.is_nan()));
}

#[test]
fn per_layer_router_routes_by_its_own_input() {
    let device = cpu();
    let mut rng = Rng::seed(2);
    let conv = MoeConv2d::new(3, 4, 3, 1, 4, true, &mut rng, &device);
    let x = random([16, 3, 6, 6], &mut rng, &device);
    let (_, route) = conv.forward(x.clone(), None, false);
    let route = route.expect("per-layer routers return their route");
    let experts = check_routes(std::slice::from_ref(&route))
        .wait()
        .unwrap()
        .remove(0);
    // The scores are linear(global average pool(x)).
    let router = conv.router.as_ref().unwrap();
    let expected = read2(router.forward(x));
    assert_eq!(read2(route.scores), expected);
    assert!(experts.iter().all(|&e| e < 4));
}
