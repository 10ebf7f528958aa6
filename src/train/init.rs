//! Seeded initialisation of a `VarMap`'s variables on the host.
//!
//! candle's CPU random generator cannot be seeded, so the trainers build their models with
//! zero-initialised variables and then overwrite each one here from a stream keyed by (seed,
//! variable name): the same `--seed` gives the same initial weights on every machine, in
//! whatever order the variables were created.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;

use crate::data::rng::Rng;
use crate::models::noise::standard_normal;

/// How one variable starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Const(f64),
    /// N(0, std^2).
    Normal(f64),
    /// U(-bound, bound).
    Uniform(f64),
}

/// A stable 64-bit key of a variable name (FNV-1a: fixed by its definition, unlike std's hasher).
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Sets every variable of `varmap` as `rule(name, shape)` says, from `seed`.
pub fn init_varmap(varmap: &VarMap, seed: u64, rule: impl Fn(&str, &[usize]) -> Init) -> Result<()> {
    let data = varmap.data().lock().map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let key = name_key(name);
        let values: Vec<f32> = match rule(name, var.dims()) {
            Init::Const(c) => vec![c as f32; n],
            Init::Normal(std) => standard_normal(seed, key, n).into_iter().map(|z| z * std as f32).collect(),
            Init::Uniform(b) => {
                let mut rng = Rng::keyed(&[seed, key]);
                (0..n).map(|_| rng.range(-b, b) as f32).collect()
            }
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// fan_in of a weight of shape `[out, in, k...]` (torch's `_calculate_fan_in_and_fan_out`).
pub fn fan_in(shape: &[usize]) -> usize {
    shape.iter().skip(1).product::<usize>().max(1)
}

/// fan_out of a weight of shape `[out, in, k...]`.
pub fn fan_out(shape: &[usize]) -> usize {
    (shape.first().copied().unwrap_or(1) * shape.iter().skip(2).product::<usize>()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Init as NnInit, VarBuilder};

    #[test]
    fn same_seed_same_values_and_rules_apply() {
        let make = |seed| {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            vb.get_with_hints((64, 32), "a.weight", NnInit::Const(0.)).unwrap();
            vb.get_with_hints(64, "a.bias", NnInit::Const(0.)).unwrap();
            init_varmap(&vm, seed, |name, shape| {
                if name.ends_with("bias") {
                    Init::Const(1.0)
                } else {
                    Init::Uniform(1.0 / (fan_in(shape) as f64).sqrt())
                }
            })
            .unwrap();
            let d = vm.data().lock().unwrap();
            (d["a.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap(), d["a.bias"].to_vec1::<f32>().unwrap())
        };
        let (w, b) = make(1);
        assert_eq!(make(1).0, w);
        assert_ne!(make(2).0, w);
        assert!(b.iter().all(|&x| x == 1.0));
        let bound = 1.0 / 32f32.sqrt();
        assert!(w.iter().all(|x| x.abs() <= bound) && w.iter().any(|x| x.abs() > bound * 0.9));
        assert_eq!((fan_in(&[8, 3, 3, 3]), fan_out(&[8, 3, 3, 3])), (27, 72));
    }
}
