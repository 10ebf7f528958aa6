//! Optimiser pieces shared by the trainers: AdamW, global-norm gradient clipping and an
//! exponential moving average of the weights.
//!
//! [`AdamW`] is `candle_nn::AdamW` (itself `torch.optim.AdamW` with `amsgrad=False`: decoupled
//! weight decay `theta *= 1 - lr * wd`, bias-corrected moments) with its state made visible, so
//! a checkpoint can save the moments and the step count and a resumed run continues exactly
//! (candle-nn keeps them private). A test checks it against `candle_nn::AdamW` step for step.
//! [`clip_grad_norm`] follows `torch.nn.utils.clip_grad_norm_` (one L2 norm over all gradients,
//! scaled by `max_norm / (norm + 1e-6)` when above `max_norm`). [`Ema`] follows diffusers'
//! `EMAModel` without warm-up power (`s = optimisation step - 1`; decay 0 at s = 0, then
//! `min(max_decay, (1 + s) / (10 + s))`), so early EMA weights are not stuck at the random init.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

pub use candle_nn::ParamsAdamW;

/// AdamW over named variables, with inspectable state.
#[derive(Debug)]
pub struct AdamW {
    params: ParamsAdamW,
    vars: Vec<(String, Var)>,
    first: Vec<Var>,
    second: Vec<Var>,
    step: usize,
}

impl AdamW {
    /// Optimises `vars` (name, variable), moments starting at zero.
    pub fn new(vars: Vec<(String, Var)>, params: ParamsAdamW) -> Result<Self> {
        let zeros = |v: &Var| Var::zeros(v.shape(), v.dtype(), v.device());
        let first = vars.iter().map(|(_, v)| zeros(v)).collect::<Result<Vec<_>>>()?;
        let second = vars.iter().map(|(_, v)| zeros(v)).collect::<Result<Vec<_>>>()?;
        Ok(Self { params, vars, first, second, step: 0 })
    }

    pub fn params(&self) -> &ParamsAdamW {
        &self.params
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The optimised variables, in the order given.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update from `grads` (variables without a gradient are left alone, moments included).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = &self.params;
        let (lr, b1, b2) = (p.lr, p.beta1, p.beta2);
        let scale_m = 1.0 / (1.0 - b1.powi(self.step as i32));
        let scale_v = 1.0 / (1.0 - b2.powi(self.step as i32));
        for (((_, theta), m), v) in self.vars.iter().zip(&self.first).zip(&self.second) {
            let Some(g) = grads.get(theta) else { continue };
            let next_m = ((m.as_tensor() * b1)? + (g * (1.0 - b1))?)?;
            let next_v = ((v.as_tensor() * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let decayed = (theta.as_tensor() * (1.0 - lr * p.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            m.set(&next_m)?;
            v.set(&next_v)?;
            theta.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`<name>.exp_avg`, `<name>.exp_avg_sq`, torch's names).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (((name, _), m), v) in self.vars.iter().zip(&self.first).zip(&self.second) {
            out.push((format!("{name}.exp_avg"), m.as_tensor().clone()));
            out.push((format!("{name}.exp_avg_sq"), v.as_tensor().clone()));
        }
        out
    }

    /// Restores moments and step count saved by [`AdamW::state_tensors`].
    pub fn load_state(&mut self, step: usize, lookup: impl Fn(&str) -> Option<Tensor>) -> std::result::Result<(), String> {
        for (((name, var), m), v) in self.vars.iter().zip(&self.first).zip(&self.second) {
            for (suffix, slot) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let key = format!("{name}.{suffix}");
                let t = lookup(&key).ok_or_else(|| format!("optimiser state: tensor \"{key}\" is missing"))?;
                if t.dims() != var.dims() {
                    return Err(format!("optimiser state: tensor \"{key}\" has shape {:?}, expected {:?}", t.dims(), var.dims()));
                }
                slot.set(&t).map_err(|e| format!("optimiser state: tensor \"{key}\": {e}"))?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Scales the gradients of `vars` in place so that their global L2 norm is at most `max_norm`;
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var) {
            total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (_, var) in vars {
            if let Some(g) = grads.get(var) {
                let scaled = (g * coef)?;
                grads.insert(var, scaled);
            }
        }
    }
    Ok(norm)
}

/// Exponential moving average of a set of variables (diffusers' `EMAModel`).
#[derive(Debug)]
pub struct Ema {
    max_decay: f64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts from the current values of `vars`.
    pub fn new(vars: &[(String, Var)], max_decay: f64) -> Result<Self> {
        // Detached: `copy` records the variable it came from, and every update would then chain
        // the new average to the old one (keeping each step's averages alive: memory grew by
        // three model sizes per step until the trainer was killed).
        let shadow = vars.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?.detach()))).collect::<Result<Vec<_>>>()?;
        Ok(Self { max_decay, shadow })
    }

    /// The decay used after optimisation step `step` (1-based): diffusers' `get_decay`.
    pub fn decay(&self, step: usize) -> f64 {
        let s = step.saturating_sub(1) as f64;
        if s == 0.0 {
            return 0.0;
        }
        ((1.0 + s) / (10.0 + s)).min(self.max_decay)
    }

    /// shadow = decay * shadow + (1 - decay) * current, after optimisation step `step`.
    pub fn update(&mut self, vars: &[(String, Var)], step: usize) -> Result<()> {
        let d = self.decay(step);
        for ((_, s), (_, v)) in self.shadow.iter_mut().zip(vars) {
            *s = ((&*s * d)? + (v.as_tensor().detach() * (1.0 - d))?)?.detach();
        }
        Ok(())
    }

    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    /// Replaces the averages (resume).
    pub fn set(&mut self, lookup: impl Fn(&str) -> Option<Tensor>) -> std::result::Result<(), String> {
        for (name, s) in self.shadow.iter_mut() {
            let t = lookup(name).ok_or_else(|| format!("ema weights: tensor \"{name}\" is missing"))?;
            if t.dims() != s.dims() {
                return Err(format!("ema weights: tensor \"{name}\" has shape {:?}, expected {:?}", t.dims(), s.dims()));
            }
            *s = t;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;

    fn loss(w: &Var, b: &Var) -> Result<Tensor> {
        let x = Tensor::new(&[[1f32, 2.], [3., -1.], [0.5, 0.5]], &Device::Cpu)?;
        let y = Tensor::new(&[[1f32], [-2.], [0.3]], &Device::Cpu)?;
        x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?.sub(&y)?.sqr()?.mean_all()
    }

    #[test]
    fn adamw_matches_candle_nn_step_for_step() {
        let params = ParamsAdamW { lr: 0.05, weight_decay: 0.1, ..Default::default() };
        let init_w = Tensor::new(&[[0.3f32], [-0.2]], &Device::Cpu).unwrap();
        let mk = || (Var::from_tensor(&init_w).unwrap(), Var::zeros(1, DType::F32, &Device::Cpu).unwrap());
        let (w1, b1) = mk();
        let (w2, b2) = mk();
        let mut ours = AdamW::new(vec![("w".into(), w1.clone()), ("b".into(), b1.clone())], params.clone()).unwrap();
        let mut theirs = candle_nn::AdamW::new(vec![w2.clone(), b2.clone()], params).unwrap();
        for _ in 0..5 {
            ours.step(&loss(&w1, &b1).unwrap().backward().unwrap()).unwrap();
            theirs.backward_step(&loss(&w2, &b2).unwrap()).unwrap();
        }
        let v = |t: &Var| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&w1), v(&w2));
        assert_eq!(v(&b1), v(&b2));
        assert_eq!(ours.step_count(), 5);
        assert_ne!(v(&w1), vec![0.3, -0.2], "the weights moved");
    }

    #[test]
    fn adamw_state_round_trips() {
        let params = ParamsAdamW { lr: 0.05, ..Default::default() };
        let w = Var::from_tensor(&Tensor::new(&[[0.3f32], [-0.2]], &Device::Cpu).unwrap()).unwrap();
        let b = Var::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let mut a = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], params.clone()).unwrap();
        a.step(&loss(&w, &b).unwrap().backward().unwrap()).unwrap();
        let saved: std::collections::HashMap<String, Tensor> = a.state_tensors().into_iter().map(|(k, t)| (k, t.copy().unwrap())).collect();
        let mut fresh = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], params).unwrap();
        fresh.load_state(1, |k| saved.get(k).cloned()).unwrap();
        let g = loss(&w, &b).unwrap().backward().unwrap();
        let before = w.as_tensor().copy().unwrap();
        // The same gradient applied by both from the same state gives the same update.
        fresh.step(&g).unwrap();
        let after_fresh = w.as_tensor().copy().unwrap();
        w.set(&before).unwrap();
        a.step(&g).unwrap();
        let diff = (w.as_tensor() - after_fresh).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
        let e = fresh.load_state(1, |_| None).unwrap_err();
        assert_eq!(e, "optimiser state: tensor \"w.exp_avg\" is missing");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let w = Var::from_tensor(&Tensor::new(&[[3f32], [4.]], &Device::Cpu).unwrap()).unwrap();
        let vars = vec![("w".to_string(), w.clone())];
        // d(sum w^2)/dw = 2w = (6, 8): norm 10.
        let mut g = w.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let norm = clip_grad_norm(&mut g, &vars, 1.0).unwrap();
        assert!((norm - 10.0).abs() < 1e-6);
        let v: Vec<f32> = g.get(&w).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6, "{v:?}");
        let mut g = w.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        clip_grad_norm(&mut g, &vars, 100.0).unwrap();
        assert_eq!(g.get(&w).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![6.0, 8.0]);
    }

    #[test]
    fn ema_follows_diffusers_decay() {
        let w = Var::from_tensor(&Tensor::new(&[0f32], &Device::Cpu).unwrap()).unwrap();
        let vars = vec![("w".to_string(), w.clone())];
        let mut ema = Ema::new(&vars, 0.9999).unwrap();
        assert_eq!(ema.decay(1), 0.0);
        assert!((ema.decay(2) - 2.0 / 11.0).abs() < 1e-12);
        assert!((ema.decay(11) - 11.0 / 20.0).abs() < 1e-12);
        assert_eq!(ema.decay(10_000_000), 0.9999);
        w.set(&Tensor::new(&[1f32], &Device::Cpu).unwrap()).unwrap();
        ema.update(&vars, 2).unwrap();
        let v = ema.tensors()[0].1.to_vec1::<f32>().unwrap()[0];
        assert!((v - 9.0 / 11.0).abs() < 1e-6, "{v}");
        ema.update(&vars, 1).unwrap();
        assert_eq!(ema.tensors()[0].1.to_vec1::<f32>().unwrap()[0], 1.0, "step 1 copies the weights");
    }

    #[test]
    fn ema_averages_keep_no_graph() {
        // An average tied to the graph keeps every earlier average alive (the trainer's memory
        // grew by three model sizes per step). Gradients through it would reach the variable.
        let w = Var::from_tensor(&Tensor::new(&[2f32, 3.0], &Device::Cpu).unwrap()).unwrap();
        let vars = vec![("w".to_string(), w.clone())];
        let mut ema = Ema::new(&vars, 0.999).unwrap();
        let untouched = ema.tensors()[0].1.sum_all().unwrap().backward().unwrap();
        assert!(untouched.get(w.as_tensor()).is_none(), "the starting average is detached");
        for step in 1..5 {
            ema.update(&vars, step).unwrap();
        }
        let grads = ema.tensors()[0].1.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(w.as_tensor()).is_none(), "the updated average is detached");
    }
}
