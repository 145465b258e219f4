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

impl SamplingParams {
    /// Whether every pick is the plain argmax of the logits (temperature 0,
    /// no repetition penalty), which a backend may then make itself.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }
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

/// The greedy choice; it lives with the backends, which may also make it on
/// the device (`Backend::argmax_rows`).
pub use tessera_backend::argmax;

/// Candidates this many or fewer are sorted at once; a nucleus search
/// starts with them and grows eightfold while their mass falls short.
const NUCLEUS_FIRST: usize = 256;

impl Sampler {
    /// The values it samples with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Choose the next token given the logits and the tokens seen so far
    /// (prompt and generated, for the repetition penalty).
    ///
    /// Candidates are ranked by logit, descending, ties to the lower id.
    /// Top-k keeps the first k, top-p the shortest ranked prefix whose
    /// probability reaches top_p (at least one token), and the draw walks
    /// the kept candidates in rank order; without either, it walks the whole
    /// vocabulary in id order (the same distribution). Costs O(vocab) plus a
    /// sort of the kept candidates, not of the vocabulary (docs/benchmarks.md,
    /// "Sampling": a full sort cost milliseconds per token at 49k and 128k ids).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let penalized;
        let l: &[f32] = if p.repetition_penalty != 1.0 {
            let mut v = logits.to_vec();
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(x) = v.get_mut(t as usize) {
                    *x = if *x < 0.0 {
                        *x * p.repetition_penalty
                    } else {
                        *x / p.repetition_penalty
                    };
                }
            }
            penalized = v;
            &penalized
        } else {
            logits
        };
        if p.temperature == 0.0 || l.len() <= 1 {
            return argmax(l);
        }
        let r: f64 = self.rng.random();
        pick(l, p, r)
    }
}

/// The token a uniform draw `r` in [0, 1) selects from `l` (penalized
/// logits, at least two) under temperature, top-k and top-p: see
/// `Sampler::sample`.
fn pick(l: &[f32], p: &SamplingParams, r: f64) -> u32 {
    let n = l.len();
    let weight = |max: f32, x: f32| (((x - max) / p.temperature) as f64).exp();
    if p.top_k > 0 && p.top_k < n {
        let idx = top_ranked(l, p.top_k);
        let max = l[idx[0] as usize];
        let probs: Vec<f64> = idx.iter().map(|&i| weight(max, l[i as usize])).collect();
        return draw(&idx, probs, p.top_p, r);
    }
    // The first value in rank order (the largest under total_cmp).
    let max = l[1..]
        .iter()
        .fold(l[0], |m, &x| if x.total_cmp(&m).is_gt() { x } else { m });
    let weights: Vec<f64> = l.iter().map(|&x| weight(max, x)).collect();
    let sum: f64 = weights.iter().sum();
    if p.top_p >= 1.0 {
        // The whole vocabulary, in id order.
        let mut acc = 0.0;
        for (i, w) in weights.iter().enumerate() {
            acc += w / sum;
            if r < acc {
                return i as u32;
            }
        }
        return (n - 1) as u32;
    }
    // The nucleus: rank a growing head of the vocabulary until its mass
    // reaches top_p (or the head is everything).
    let mut m = NUCLEUS_FIRST.min(n);
    loop {
        let idx = top_ranked(l, m);
        let mut acc = 0.0;
        let keep = idx.iter().position(|&i| {
            acc += weights[i as usize] / sum;
            acc >= p.top_p as f64
        });
        if keep.is_some() || m == n {
            let keep = keep.map_or(idx.len(), |k| k + 1);
            let probs: Vec<f64> = idx[..keep].iter().map(|&i| weights[i as usize]).collect();
            return draw(&idx[..keep], probs, 1.0, r);
        }
        m = (m * 8).min(n);
    }
}

/// A candidate in rank order: logit descending (`total_cmp`, so NaN and
/// -0.0 have a place), then id ascending. `Less` ranks first.
#[derive(Clone, Copy)]
struct Ranked(f32, u32);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Ranked {}

/// The ids of the first `k` candidates of `l` in rank order, sorted. Few
/// (k <= n/16): one pass keeping the best k in a heap whose top is the worst
/// of them, so most ids cost one comparison; else a selection and a sort.
fn top_ranked(l: &[f32], k: usize) -> Vec<u32> {
    let n = l.len();
    let k = k.clamp(1, n);
    let mut best: Vec<Ranked> = if k * 16 <= n {
        let mut heap = std::collections::BinaryHeap::with_capacity(k + 1);
        for (i, &x) in l.iter().enumerate() {
            let c = Ranked(x, i as u32);
            if heap.len() < k {
                heap.push(c);
            } else if let Some(mut worst) = heap.peek_mut() {
                if c < *worst {
                    *worst = c;
                }
            }
        }
        heap.into_vec()
    } else {
        let mut all: Vec<Ranked> = l
            .iter()
            .enumerate()
            .map(|(i, &x)| Ranked(x, i as u32))
            .collect();
        if k < n {
            all.select_nth_unstable(k - 1);
            all.truncate(k);
        }
        all
    };
    best.sort_unstable();
    best.into_iter().map(|c| c.1).collect()
}

/// Normalize `probs` (unnormalized weights of the ranked candidates `idx`),
/// keep the shortest prefix reaching `top_p` (at least one), renormalize,
/// and pick the candidate where the cumulative probability passes `r`.
fn draw(idx: &[u32], mut probs: Vec<f64>, top_p: f32, r: f64) -> u32 {
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= sum);
    let mut keep = probs.len();
    if top_p < 1.0 {
        let mut acc = 0.0;
        for (i, pr) in probs.iter().enumerate() {
            acc += pr;
            if acc >= top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        let s: f64 = probs[..keep].iter().sum();
        probs[..keep].iter_mut().for_each(|x| *x /= s);
    }
    let mut acc = 0.0;
    for (i, pr) in probs[..keep].iter().enumerate() {
        acc += pr;
        if r < acc {
            return idx[i];
        }
    }
    idx[keep - 1]
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

    /// The sampler as first written: the whole vocabulary stably sorted by
    /// logit, then top-k, softmax, top-p, renormalize, walk in rank order.
    fn reference_pick(l: &[f32], p: &SamplingParams, r: f64) -> u32 {
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
        let mut acc = 0.0;
        for (i, pr) in probs.iter().enumerate() {
            acc += pr;
            if r < acc {
                return idx[i];
            }
        }
        idx[idx.len() - 1]
    }

    /// Peaked logits (a few large, a long tail) with ties, for `n` ids.
    fn logits(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x % 10_000) as f32 / 10_000.0;
                // Rounded to 1/8 so that equal logits (ties) are common.
                ((12.0 * u.powi(6) - 4.0) * 8.0).round() / 8.0
            })
            .collect()
    }

    #[test]
    fn top_k_and_top_p_pick_what_a_full_sort_picks() {
        for (n, seed) in [(50usize, 1u64), (3000, 2), (49152, 3)] {
            let l = logits(n, seed);
            for (top_k, top_p) in [
                (1, 1.0),
                (5, 1.0),
                (40, 0.9),
                (n / 8, 1.0),
                (n - 1, 0.95),
                (0, 0.9),
                (0, 0.5),
                (0, 0.999),
            ] {
                let p = SamplingParams {
                    temperature: 0.8,
                    top_k,
                    top_p,
                    ..Default::default()
                };
                for j in 0..200 {
                    let r = (j as f64 + 0.5) / 200.0;
                    assert_eq!(
                        pick(&l, &p, r),
                        reference_pick(&l, &p, r),
                        "n {n}, top_k {top_k}, top_p {top_p}, r {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn plain_temperature_draws_each_token_with_its_softmax_probability() {
        let l = logits(300, 9);
        let p = SamplingParams {
            temperature: 1.3,
            ..Default::default()
        };
        let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = l.iter().map(|&x| ((x - max) as f64 / 1.3).exp()).collect();
        let sum: f64 = w.iter().sum();
        // Evenly spaced draws: token i gets about p_i of them, off by at
        // most one draw at each end of its interval.
        let draws = 20_000;
        let mut count = vec![0usize; l.len()];
        for j in 0..draws {
            count[pick(&l, &p, (j as f64 + 0.5) / draws as f64) as usize] += 1;
        }
        for (i, &c) in count.iter().enumerate() {
            let want = w[i] / sum;
            let got = c as f64 / draws as f64;
            assert!(
                (got - want).abs() <= 1.5 / draws as f64,
                "token {i}: drawn {got}, softmax {want}"
            );
        }
    }

    #[test]
    fn argmax_takes_the_first_largest_and_never_a_later_nan() {
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[-3.0]), 0);
        for n in [1usize, 7, 8, 9, 33, 1000] {
            let mut v: Vec<f32> = (0..n).map(|i| -((i * 37 % 11) as f32)).collect();
            let want = (0..n).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32;
            assert_eq!(argmax(&v), want, "n {n}");
            // A tie later on stays with the first; a NaN later never wins.
            v.push(v[want as usize]);
            v.push(f32::NAN);
            assert_eq!(argmax(&v), want, "n {n} with a tie and a NaN");
            v.push(f32::INFINITY);
            assert_eq!(argmax(&v) as usize, v.len() - 1);
        }
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
    }

    /// Microseconds per token of `Sampler::sample` beside the full-sort
    /// reference (`reference_pick`, the sampler as first written) on the same
    /// logits in the same run, at SmolLM2's and Llama 3's vocabulary sizes:
    /// `cargo test --release -p tessera-engine bench_sampler -- --ignored --nocapture`
    /// (docs/benchmarks.md).
    #[test]
    #[ignore]
    fn bench_sampler_against_the_full_sort() {
        use std::time::Instant;
        for vocab in [49_152usize, 128_256] {
            // Zipf-like logits in a shuffled order: a peaked distribution.
            let mut x = 12_345u64;
            let mut perm: Vec<usize> = (0..vocab).collect();
            for i in (1..vocab).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                perm.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let l: Vec<f32> = perm
                .iter()
                .map(|&r| 10.0 - 2.5 * ((1 + r) as f32).ln())
                .collect();
            for (name, temperature, top_k, top_p) in [
                ("greedy", 0.0, 0, 1.0),
                ("temperature 0.7", 0.7, 0, 1.0),
                ("temperature 0.7, top_p 0.9", 0.7, 0, 0.9),
                ("temperature 0.7, top_k 40", 0.7, 40, 1.0),
            ] {
                let p = SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    seed: 1,
                    ..Default::default()
                };
                let time = |f: &mut dyn FnMut(f64) -> u32| {
                    let n = 100;
                    let t = Instant::now();
                    let mut sink = 0u64;
                    for j in 0..n {
                        sink += f((j as f64 + 0.5) / n as f64) as u64;
                    }
                    (t.elapsed().as_secs_f64() * 1e6 / n as f64, sink)
                };
                let mut s = Sampler::new(p.clone()).unwrap();
                let (new, _) = time(&mut |_| s.sample(&l, &[]));
                let (old, _) = time(&mut |r| {
                    if temperature == 0.0 {
                        // As first written: a copy, then one compare per id
                        // against the best so far.
                        let v = l.to_vec();
                        let mut best = 0;
                        for (i, x) in v.iter().enumerate() {
                            if *x > v[best] {
                                best = i;
                            }
                        }
                        best as u32
                    } else {
                        reference_pick(&l, &p, r)
                    }
                });
                println!(
                    "BENCH sampler vocab {vocab} {name}: {new:.1} us per token, full sort {old:.1} us ({:.1}x)",
                    old / new
                );
            }
        }
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
