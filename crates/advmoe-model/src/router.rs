//! The image router: a small CNN that reads the input image and picks one expert for every MoE
//! layer (as in the AdvMoE paper's released code).

use advmoe_core::Rng;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::BnUpdate;
use crate::layers::{Bn, Conv, Fc};

/// conv3×3(c_in→16)+BN+ReLU, conv3×3(16→32, s2)+BN+ReLU, conv3×3(32→64, s2)+BN+ReLU, global
/// average pool, linear(64→N).
#[derive(Module, Debug)]
pub struct ImageRouter {
    /// Convs.
    pub convs: Vec<Conv>,
    /// Their batch norms.
    pub bns: Vec<Bn>,
    /// Scorer.
    pub fc: Fc,
}

impl ImageRouter {
    /// Create for `channels_in` input channels and `num_experts` experts, at module `path`.
    pub fn new(
        channels_in: usize,
        num_experts: usize,
        path: &str,
        rng: &mut Rng,
        device: &Device,
    ) -> Self {
        let widths = [(channels_in, 16, 1), (16, 32, 2), (32, 64, 2)];
        let convs = widths
            .iter()
            .map(|&(i, o, s)| Conv::new(i, o, 3, s, rng, device))
            .collect();
        let bns = widths
            .iter()
            .enumerate()
            .map(|(k, &(_, o, _))| Bn::new(o, format!("{path}.bns.{k}"), device))
            .collect();
        Self {
            convs,
            bns,
            fc: Fc::new(64, num_experts, rng, device),
        }
    }

    /// # Shapes
    /// - input `[batch, channels_in, h, w]` (normalised), output scores `[batch, num_experts]`
    pub fn forward(&self, x: Tensor<4>, train: bool, updates: &mut Vec<BnUpdate>) -> Tensor<2> {
        let mut x = x;
        for (conv, bn) in self.convs.iter().zip(&self.bns) {
            x = bn.forward_relu(conv.forward(x), train, updates);
        }
        let [b, c, _, _] = x.dims();
        self.fc.forward(x.mean_dims(&[2, 3]).reshape([b, c]))
    }
}
