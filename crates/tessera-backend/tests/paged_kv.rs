//! The CPU backend's paged KV cache: attention over block tables is
//! bit-identical to attention over one contiguous cache, sequences share the
//! backend's block pool, dropped caches give their blocks back, and a full
//! pool or a full cache is a clear error.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_backend::cpu::features::CpuFeatures;
use tessera_backend::cpu::kernels::{attend_blocks, attend_one};
use tessera_backend::cpu::{CpuBackend, CpuKvCache, CpuTensor, KvPoolStats, KV_BLOCK_TOKENS};
use tessera_backend::{reference, AttentionShape, Backend, BackendError};
use tessera_model::HostTensor;

fn random(r: &mut StdRng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| r.random_range(-scale..scale)).collect()
}

fn paths() -> Vec<CpuFeatures> {
    CpuFeatures::all_supported()
}

fn upload(b: &CpuBackend, rows: usize, cols: usize, data: Vec<f32>) -> CpuTensor {
    b.upload(&HostTensor::new(vec![rows, cols], data)).unwrap()
}

const SHAPE: AttentionShape = AttentionShape {
    num_heads: 6,
    num_kv_heads: 2,
    head_dim: 20,
};
const LAYERS: usize = 2;

/// Attention the way the CPU backend computed it before paging: `attend_one`
/// per (token, head) over one contiguous `[position][head_dim]` run per KV head.
fn contiguous_attention(
    f: CpuFeatures,
    q: &[f32],
    all_k: &[f32],
    all_v: &[f32],
    start_pos: usize,
    s: AttentionShape,
) -> Vec<f32> {
    let (hd, kvh) = (s.head_dim, s.num_kv_heads);
    let len = all_k.len() / (kvh * hd);
    let per_head = |src: &[f32], h: usize| -> Vec<f32> {
        (0..len)
            .flat_map(|p| src[(p * kvh + h) * hd..][..hd].to_vec())
            .collect()
    };
    let ks: Vec<_> = (0..kvh).map(|h| per_head(all_k, h)).collect();
    let vs: Vec<_> = (0..kvh).map(|h| per_head(all_v, h)).collect();
    let mut out = vec![0f32; q.len()];
    for (idx, o) in out.chunks_exact_mut(hd).enumerate() {
        let (i, h) = (idx / s.num_heads, idx % s.num_heads);
        let kh = h / (s.num_heads / kvh);
        let qv = &q[idx * hd..][..hd];
        attend_one(f, qv, &ks[kh], &vs[kh], start_pos + i + 1, hd, o);
    }
    out
}

/// One sequence driven through the backend, remembering what it stored.
struct Seq {
    cache: CpuKvCache,
    all_k: Vec<f32>,
    all_v: Vec<f32>,
}

impl Seq {
    fn new(b: &CpuBackend, capacity: usize) -> Seq {
        let cache = b
            .kv_cache(LAYERS, SHAPE.num_kv_heads, SHAPE.head_dim, capacity)
            .unwrap();
        Seq {
            cache,
            all_k: Vec::new(),
            all_v: Vec::new(),
        }
    }

    fn pos(&self) -> usize {
        self.all_k.len() / (SHAPE.num_kv_heads * SHAPE.head_dim)
    }

    /// Store `n` new positions in every layer, attend at `layer`, and check
    /// the output bit for bit against the contiguous computation and loosely
    /// against the reference.
    fn step(&mut self, b: &CpuBackend, r: &mut StdRng, n: usize, layer: usize) {
        let (qw, kvw) = (
            SHAPE.num_heads * SHAPE.head_dim,
            SHAPE.num_kv_heads * SHAPE.head_dim,
        );
        let pos = self.pos();
        let (q, k, v) = (
            random(r, n * qw, 1.5),
            random(r, n * kvw, 1.5),
            random(r, n * kvw, 1.0),
        );
        for l in 0..LAYERS {
            let (kt, vt) = (upload(b, n, kvw, k.clone()), upload(b, n, kvw, v.clone()));
            b.kv_store(&mut self.cache, l, pos, &kt, &vt).unwrap();
        }
        self.all_k.extend_from_slice(&k);
        self.all_v.extend_from_slice(&v);
        let got = b
            .attention(&upload(b, n, qw, q.clone()), &self.cache, layer, pos, SHAPE)
            .unwrap();
        let got = b.download(&got).unwrap().data;
        let f = b.features();
        let want = contiguous_attention(f, &q, &self.all_k, &self.all_v, pos, SHAPE);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "paged attention at {pos}+{n} differs from the contiguous cache"
        );
        let reference = reference::attention(
            &q,
            &self.all_k,
            &self.all_v,
            pos,
            SHAPE.num_heads,
            SHAPE.num_kv_heads,
            SHAPE.head_dim,
        );
        for (a, b) in got.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-4 * b.abs() + 1e-5, "{a} vs {b}");
        }
    }
}

fn blocks_for(positions: usize) -> usize {
    positions.div_ceil(KV_BLOCK_TOKENS)
}

#[test]
fn attend_blocks_is_bit_identical_to_attend_one() {
    let mut r = StdRng::seed_from_u64(1);
    for f in paths() {
        for &hd in &[1usize, 7, 16, 17, 64, 80, 128] {
            for &len in &[1usize, 3, 15, 16, 17, 33, 100, 333] {
                for block_rows in [4usize, 16] {
                    let q = random(&mut r, hd, 4.0);
                    let (k, v) = (random(&mut r, len * hd, 4.0), random(&mut r, len * hd, 1.0));
                    let mut want = vec![f32::NAN; hd];
                    attend_one(f, &q, &k, &v, len, hd, &mut want);
                    // Full-size blocks, the unused tail of the last one holds junk.
                    let paged = |src: &[f32]| -> Vec<Vec<f32>> {
                        src.chunks(block_rows * hd)
                            .map(|c| {
                                let mut b = c.to_vec();
                                b.resize(block_rows * hd, f32::NAN);
                                b
                            })
                            .collect()
                    };
                    let (kb, vb) = (paged(&k), paged(&v));
                    let kr: Vec<&[f32]> = kb.iter().map(|b| b.as_slice()).collect();
                    let vr: Vec<&[f32]> = vb.iter().map(|b| b.as_slice()).collect();
                    let mut got = vec![f32::NAN; hd];
                    attend_blocks(f, &q, &kr, &vr, block_rows, len, hd, &mut got);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{:?} hd {hd} len {len} blocks of {block_rows}: {got:?} vs {want:?}",
                        f.f32_kernel()
                    );
                }
            }
        }
    }
}

#[test]
fn a_cache_spanning_several_blocks_equals_the_contiguous_one() {
    let b = CpuBackend::new(2).unwrap();
    let mut r = StdRng::seed_from_u64(2);
    let mut s = Seq::new(&b, 200);
    // Prefill chunks that start and end inside blocks, cross several, then decode.
    for (i, n) in [5usize, 11, 1, 40, 3, 16, 1, 1, 1, 17]
        .into_iter()
        .enumerate()
    {
        s.step(&b, &mut r, n, i % LAYERS);
        assert_eq!(s.cache.blocks(), blocks_for(s.pos()));
    }
    assert_eq!(s.cache.len(), 96);
    assert_eq!(b.kv_pool_stats().blocks_used, 6);
}

#[test]
fn interleaved_sequences_share_one_pool_without_changing_answers() {
    let b = CpuBackend::new(2).unwrap();
    let mut r = StdRng::seed_from_u64(3);
    let mut seqs: Vec<Seq> = (0..3).map(|_| Seq::new(&b, 300)).collect();
    assert_eq!(b.kv_pool_stats().blocks_used, 0, "no blocks before a store");
    // Different prompt lengths, then decode steps round-robin, so the
    // sequences' blocks interleave in the pool.
    for (s, n) in seqs.iter_mut().zip([7usize, 33, 16]) {
        s.step(&b, &mut r, n, 1);
    }
    for round in 0..40 {
        for (i, s) in seqs.iter_mut().enumerate() {
            let n = if (round + i) % 9 == 0 { 5 } else { 1 };
            s.step(&b, &mut r, n, (round + i) % LAYERS);
        }
        let used: usize = seqs.iter().map(|s| blocks_for(s.pos())).sum();
        assert_eq!(b.kv_pool_stats().blocks_used, used);
    }
}

#[test]
fn dropping_a_cache_returns_its_blocks_zeroed_for_the_next() {
    let b = CpuBackend::new(1).unwrap();
    let mut r = StdRng::seed_from_u64(4);
    let mut a = Seq::new(&b, 100);
    a.step(&b, &mut r, 50, 0);
    let held = KvPoolStats {
        blocks_total: 4,
        blocks_used: 4,
        blocks_free: 0,
    };
    assert_eq!(b.kv_pool_stats(), held);
    drop(a);
    let idle = KvPoolStats {
        blocks_total: 4,
        blocks_used: 0,
        blocks_free: 4,
    };
    assert_eq!(b.kv_pool_stats(), idle);

    // The next sequence reuses those blocks (the pool does not grow) and
    // sees zeros, not the old keys and values, where it has not written:
    // layer 1 below is attended before anything is stored in it.
    let mut c = Seq::new(&b, 100);
    let kvw = SHAPE.num_kv_heads * SHAPE.head_dim;
    let k = upload(&b, 20, kvw, random(&mut r, 20 * kvw, 1.0));
    b.kv_store(&mut c.cache, 0, 0, &k, &k).unwrap();
    assert_eq!(b.kv_pool_stats().blocks_total, 4);
    assert_eq!(b.kv_pool_stats().blocks_used, 2);
    let qw = SHAPE.num_heads * SHAPE.head_dim;
    let q = upload(&b, 1, qw, random(&mut r, qw, 1.0));
    let out = b.attention(&q, &c.cache, 1, 19, SHAPE).unwrap();
    assert!(b.download(&out).unwrap().data.iter().all(|&x| x == 0.0));
}

#[test]
fn an_exhausted_pool_is_an_error_and_every_cache_stays_usable() {
    let b = CpuBackend::new(1).unwrap();
    b.set_kv_pool_blocks(Some(3));
    let mut r = StdRng::seed_from_u64(5);
    let kvw = SHAPE.num_kv_heads * SHAPE.head_dim;
    let rows = |r: &mut StdRng, n: usize| upload(&b, n, kvw, random(r, n * kvw, 1.0));

    // All or nothing: 50 positions need 4 blocks, the pool has 3.
    let mut big = Seq::new(&b, 100);
    let x = rows(&mut r, 50);
    match b.kv_store(&mut big.cache, 0, 0, &x, &x) {
        Err(e @ BackendError::KvPoolExhausted { .. }) => assert_eq!(
            e.to_string(),
            "KV block pool exhausted: 4 more blocks of 16 positions needed, 3 of 3 free"
        ),
        other => panic!("expected KvPoolExhausted, got {other:?}"),
    }
    assert_eq!(b.kv_pool_stats().blocks_used, 0);
    assert_eq!(big.cache.blocks(), 0);
    assert!(big.cache.is_empty());

    let mut a = Seq::new(&b, 100);
    a.step(&b, &mut r, 40, 0); // 3 blocks: the pool is full
    let mut other = Seq::new(&b, 100);
    let one = rows(&mut r, 1);
    let e = b.kv_store(&mut other.cache, 0, 0, &one, &one).unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::KvPoolExhausted {
                needed: 1,
                free: 0,
                total: 3
            }
        ),
        "{e}"
    );
    // Growing `a` into a 4th block fails the same way and leaves it intact:
    // it still attends over its 40 positions exactly as before.
    let more = rows(&mut r, 10);
    assert!(matches!(
        b.kv_store(&mut a.cache, 0, 40, &more, &more),
        Err(BackendError::KvPoolExhausted { needed: 1, .. })
    ));
    assert_eq!(a.cache.len(), 40);
    assert_eq!(a.cache.blocks(), 3);
    a.step(&b, &mut r, 8, 1); // positions 40..48 fit in block 3
                              // Freeing `a` makes room for the other sequence.
    drop(a);
    other.step(&b, &mut r, 1, 0);
    assert_eq!(b.kv_pool_stats().blocks_used, 1);
}

#[test]
fn cache_capacity_errors_are_unchanged() {
    let b = CpuBackend::new(1).unwrap();
    let kvw = SHAPE.num_kv_heads * SHAPE.head_dim;
    let mut c = b
        .kv_cache(LAYERS, SHAPE.num_kv_heads, SHAPE.head_dim, 20)
        .unwrap();
    let x = upload(&b, 6, kvw, vec![0.5; 6 * kvw]);
    let e = b.kv_store(&mut c, 0, 15, &x, &x).unwrap_err();
    assert!(matches!(
        e,
        BackendError::CacheFull {
            pos: 21,
            capacity: 20
        }
    ));
    assert_eq!(
        e.to_string(),
        "KV cache full: position 21 is beyond its capacity of 20 tokens"
    );
    assert_eq!(
        b.kv_pool_stats().blocks_used,
        0,
        "a refused store takes no blocks"
    );
    b.kv_store(&mut c, 0, 14, &x, &x).unwrap();
    let qw = SHAPE.num_heads * SHAPE.head_dim;
    let q = upload(&b, 2, qw, vec![0.1; 2 * qw]);
    assert!(matches!(
        b.attention(&q, &c, 0, 19, SHAPE),
        Err(BackendError::CacheFull {
            pos: 21,
            capacity: 20
        })
    ));
    // Attending past what was stored is refused, not read from stale memory.
    let q1 = upload(&b, 1, qw, vec![0.1; qw]);
    assert!(b.attention(&q1, &c, 0, 19, SHAPE).is_ok());
    let c2 = b
        .kv_cache(LAYERS, SHAPE.num_kv_heads, SHAPE.head_dim, 20)
        .unwrap();
    assert!(matches!(
        b.attention(&q1, &c2, 0, 0, SHAPE),
        Err(BackendError::Shape {
            op: "attention",
            ..
        })
    ));
}

// ---- timing: cargo test --profile test -p tessera-backend --test paged_kv -- --ignored --nocapture ----

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let s = std::time::Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// A copy of `src` starting on a 64-byte boundary: `(buffer, offset)`.
fn aligned(src: &[f32]) -> (Vec<f32>, usize) {
    let mut b = vec![0f32; src.len() + 15];
    let off = (b.as_ptr() as usize / 4).wrapping_neg() % 16;
    b[off..off + src.len()].copy_from_slice(src);
    (b, off)
}

#[test]
#[ignore = "timing, not a check"]
fn paged_attention_throughput() {
    let mut r = StdRng::seed_from_u64(6);
    for f in paths() {
        for hd in [64usize, 128] {
            for len in [512usize, 2048] {
                let q = random(&mut r, hd, 1.0);
                let (k, v) = (random(&mut r, len * hd, 1.0), random(&mut r, len * hd, 1.0));
                // Blocks in separate allocations on 64-byte boundaries, as the
                // pool hands them out; the contiguous run aligned alike.
                let kb: Vec<_> = k.chunks(16 * hd).map(aligned).collect();
                let vb: Vec<_> = v.chunks(16 * hd).map(aligned).collect();
                let kr: Vec<&[f32]> = kb.iter().map(|(b, o)| &b[*o..]).collect();
                let vr: Vec<&[f32]> = vb.iter().map(|(b, o)| &b[*o..]).collect();
                let (ka, va) = (aligned(&k), aligned(&v));
                let (k, v) = (&ka.0[ka.1..], &va.0[va.1..]);
                let mut out = vec![0f32; hd];
                let reps = 2000;
                let (mut c, mut p) = (f64::INFINITY, f64::INFINITY);
                // Alternate, best of each, to be fair on a busy machine.
                for _ in 0..5 {
                    c = c.min(best(reps / 5, || {
                        attend_one(f, &q, k, v, len, hd, &mut out)
                    }));
                    p = p.min(best(reps / 5, || {
                        attend_blocks(f, &q, &kr, &vr, 16, len, hd, &mut out)
                    }));
                }
                println!(
                    "{:>8?} hd {hd:>3} len {len:>4}: contiguous {:>7.2} us, paged {:>7.2} us ({:+.1}%)",
                    f.f32_kernel(),
                    c * 1e6,
                    p * 1e6,
                    (p / c - 1.0) * 100.0
                );
            }
        }
    }
}
