//! Timestep and class embeddings of the UNet.
//!
//! Reference: diffusers 0.42 `models/embeddings.py`: `get_timestep_embedding` / `Timesteps`
//! (sinusoidal features, no weights), `TimestepEmbedding` (`linear_1`, SiLU, `linear_2`), and the
//! class embedding choices of `UNet2DModel` (`nn.Embedding`, a `TimestepEmbedding` of the labels'
//! sinusoid, or the identity).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

/// `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)` with diffusers'
/// `scale = 1` and `max_period = 10000`: for `half = dim / 2` frequencies
/// `f_i = exp(-ln(10000) * i / (half - shift))`, the features `[sin(t f), cos(t f)]` (or
/// `[cos, sin]` when flipped), zero-padded to `dim` when `dim` is odd.
///
/// diffusers computes this in float32 whatever the model's dtype, and so does this: the
/// frequency table is built on the host with the same float32 operations in the same order
/// (product, quotient, exp), so only the last-bit rounding of `exp`, `sin` and `cos` can differ.
#[derive(Debug, Clone)]
pub(crate) struct SinusoidalEmbedding {
    /// `[1, half]` float32.
    freqs: Tensor,
    flip_sin_to_cos: bool,
    dim: usize,
}

impl SinusoidalEmbedding {
    pub fn new(dim: usize, flip_sin_to_cos: bool, freq_shift: f64, device: &Device) -> Result<Self> {
        let half = dim / 2;
        let neg_log_period = -(10000f64.ln()) as f32;
        let denom = (half as f64 - freq_shift) as f32;
        let freqs: Vec<f32> = (0..half).map(|i| (neg_log_period * i as f32 / denom).exp()).collect();
        Ok(Self { freqs: Tensor::from_vec(freqs, (1, half), device)?, flip_sin_to_cos, dim })
    }

    /// `[N, dim]` float32 features of `t` (`[N]`, any dtype; fractional values allowed).
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&self.freqs)?;
        let (sin, cos) = (args.sin()?, args.cos()?);
        let emb = if self.flip_sin_to_cos { Tensor::cat(&[cos, sin], D::Minus1)? } else { Tensor::cat(&[sin, cos], D::Minus1)? };
        if self.dim % 2 == 1 {
            emb.pad_with_zeros(D::Minus1, 0, 1)
        } else {
            Ok(emb)
        }
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Debug, Clone)]
pub(crate) struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// `UNet2DModel.class_embedding`, whose output is added to the time embedding.
#[derive(Debug, Clone)]
pub(crate) enum ClassEmbedding {
    /// `nn.Embedding(num_class_embeds, time_embed_dim)` (key `class_embedding.weight`).
    Table { table: Embedding, num_classes: usize },
    /// `TimestepEmbedding` of the labels' sinusoidal embedding (`class_embedding.linear_1/2`).
    Timestep(TimestepEmbedding),
    /// The labels are the embeddings.
    Identity,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sinusoid against the float32 one diffusers computed for each parity fixture
    /// (tests/fixtures/unet/*/parity.json, `time_proj`), for both orders and shifts.
    #[test]
    fn sinusoid_matches_diffusers_float32() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet");
        for case in ["class_attn", "deep_timestep_class", "scale_shift_resnet", "unconditional_no_mid"] {
            let read = |name: &str| -> serde_json::Value {
                serde_json::from_str(&std::fs::read_to_string(root.join(case).join(name)).unwrap()).unwrap()
            };
            let (cfg, fx) = (read("config.json"), read("parity.json"));
            let dim = cfg["block_out_channels"][0].as_u64().unwrap() as usize;
            let emb =
                SinusoidalEmbedding::new(dim, cfg["flip_sin_to_cos"].as_bool().unwrap(), cfg["freq_shift"].as_f64().unwrap(), &Device::Cpu)
                    .unwrap();
            let t: Vec<f32> = fx["timesteps"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let n = t.len();
            let got: Vec<f32> = emb.forward(&Tensor::new(t, &Device::Cpu).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let want: Vec<f64> = fx["time_proj"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(got.len(), n * dim);
            let err = got.iter().zip(&want).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0.0, f64::max);
            println!("{case}: time_proj max abs error vs diffusers (f32) {err:.3e}");
            // The frequency table is diffusers' to the bit; sin and cos may differ in the last
            // bit (6e-8 near 1), not more.
            assert!(err < 1e-6, "{case}: max abs error {err:e}");
        }
    }
}
