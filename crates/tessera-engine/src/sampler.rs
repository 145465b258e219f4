//! Turning logits into the next token: repetition penalty, temperature,
//! top-k, top-p, seeded sampling; temperature 0 is greedy.

use crate::{EngineError, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// How to pick tokens. Defaults are greedy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 1.0 disables the penalty (Hugging Face / CTRL definition).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Reject values that have no meaning.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, reason: String| Err(EngineError::Sampling { name, reason });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "temperature",
                format!("{} must be a finite number >= 0", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} must be in (0, 1]", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(
                "repetition_penalty",
                format!("{} must be a finite number > 0", self.repetition_penalty),
            );
        }
        Ok(())
    }
}

/// Stateful sampler for one sequence (owns its RNG so the same seed gives the same text).
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// Index of the largest value; ties go to the lowest index, like `torch.argmax`.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Choose the next token given the logits and the tokens seen so far
    /// (prompt and generated, for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut l = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x < 0.0 {
                        *x * p.repetition_penalty
                    } else {
                        *x / p.repetition_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(&l);
        }
        // Candidates sorted by logit, descending (stable: ties keep lower ids first).
        let mut idx: Vec<u32> = (0..l.len() as u32).collect();
        idx.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.truncate(p.top_k);
        }
        let max = l[idx[0] as usize];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| (((l[i as usize] - max) / p.temperature) as f64).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            // Keep the smallest prefix whose mass reaches top_p (at least one token).
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            idx.truncate(keep);
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= s);
        }
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for (i, pr) in probs.iter().enumerate() {
            acc += pr;
            if r < acc {
                return idx[i];
            }
        }
        idx[idx.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_largest_and_the_first_on_ties() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        // token 0 (logit 3) halves to 1.5 < 2.0
        assert_eq!(s.sample(&[3.0, 2.0], &[0]), 1);
        // negative logits are multiplied, so a seen negative gets more negative
        assert_eq!(s.sample(&[-1.0, -1.5], &[0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_even_when_hot() {
        let p = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: 7,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // probs ~ [0.84, 0.11, 0.04, ...]: top_p 0.8 keeps only token 0
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.8,
            seed: 3,
            ..Default::default()
        };
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..50 {
            assert_eq!(s.sample(&[4.0, 2.0, 1.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7) % 13) as f32 * 0.1).collect();
        let run = |seed| {
            let p = SamplingParams {
                temperature: 1.0,
                seed,
                ..Default::default()
            };
            let mut s = Sampler::new(p).unwrap();
            (0..30).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn invalid_values_are_rejected_by_name() {
        let e = Sampler::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("top_p"), "{e}");
        let e = Sampler::new(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("temperature"), "{e}");
    }
}
