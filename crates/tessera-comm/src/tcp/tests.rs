//! TCP ring tests: every rank is a thread on loopback.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::{chunk, PendingRing, TcpRing};
use crate::{Collective, CommError, Result};

const LOOPBACK: &str = "127.0.0.1:0";
const TOKEN: u64 = 0x7e55_e7a0_0000_0001;

fn bind_all(world: usize) -> (Vec<PendingRing>, Vec<SocketAddr>) {
    let pending: Vec<_> = (0..world)
        .map(|r| TcpRing::bind(r, world, LOOPBACK.parse().unwrap()).unwrap())
        .collect();
    let addrs = pending.iter().map(|p| p.local_addr()).collect();
    (pending, addrs)
}

/// Connects every pending rank concurrently, each with its own token and peer list.
fn connect_all(
    pending: Vec<PendingRing>,
    peers: &[Vec<SocketAddr>],
    tokens: &[u64],
    timeout: Duration,
) -> Vec<Result<TcpRing>> {
    thread::scope(|s| {
        let handles: Vec<_> = pending
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let (peers, token) = (&peers[i], tokens[i]);
                s.spawn(move || p.connect(peers, token, timeout))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn ring(world: usize, timeout: Duration) -> Vec<TcpRing> {
    let (pending, addrs) = bind_all(world);
    let peers = vec![addrs; world];
    connect_all(pending, &peers, &vec![TOKEN; world], timeout)
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// Runs `f(rank, ring)` on one thread per rank and returns the results in rank order.
fn on_each<T: Send>(rings: &mut [TcpRing], f: impl Fn(usize, &mut TcpRing) -> T + Sync) -> Vec<T> {
    thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = rings
            .iter_mut()
            .enumerate()
            .map(|(r, ring)| s.spawn(move || f(r, ring)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

const LENGTHS: fn(usize) -> Vec<usize> = |w| vec![0, 1, w - 1, w, w + 1, 1000, 1_000_003];

#[test]
fn chunks_cover_the_buffer_in_order() {
    for world in 1..6 {
        for n in [0, 1, 2, 3, 4, 5, 17, 1000] {
            let mut next = 0;
            for c in 0..world {
                let r = chunk(n, world, c);
                assert_eq!(r.start, next);
                assert!(r.len() <= n.div_ceil(world));
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }
}

#[test]
fn world_of_one_is_the_identity_and_checks_arguments() {
    let mut rings = ring(1, Duration::from_secs(5));
    let c = &mut rings[0];
    assert_eq!((c.rank(), c.world(), c.transport()), (0, 1, "tcp"));
    let mut v = vec![1.5, -2.0];
    c.all_reduce_sum(&mut v).unwrap();
    assert_eq!(v, [1.5, -2.0]);
    let mut out = [0.0; 2];
    c.all_gather(&v, &mut out).unwrap();
    assert_eq!(out, [1.5, -2.0]);
    assert!(matches!(
        c.all_gather(&v, &mut [0.0; 3]),
        Err(CommError::Length { .. })
    ));
    assert!(matches!(
        c.broadcast(&mut [1], 1),
        Err(CommError::Rank { rank: 1, world: 1 })
    ));
    c.broadcast(&mut [1, 2], 0).unwrap();
    c.barrier().unwrap();
}

#[test]
fn bind_and_connect_reject_bad_arguments() {
    assert!(matches!(
        TcpRing::bind(2, 2, LOOPBACK.parse().unwrap()),
        Err(CommError::Rank { rank: 2, world: 2 })
    ));
    assert!(matches!(
        TcpRing::bind(0, 0, LOOPBACK.parse().unwrap()),
        Err(CommError::Rank { .. })
    ));
    let p = TcpRing::bind(0, 2, LOOPBACK.parse().unwrap()).unwrap();
    let addr = p.local_addr();
    let e = p
        .connect(&[addr], TOKEN, Duration::from_secs(1))
        .unwrap_err();
    assert!(
        e.to_string().contains("1 peer addresses for world size 2"),
        "{e}"
    );
}

/// Integer-valued floats: every partial sum is exact, so any order gives the serial sum.
#[test]
fn all_reduce_matches_the_serial_sum() {
    for world in 2..=4 {
        let mut rings = ring(world, Duration::from_secs(20));
        for n in LENGTHS(world) {
            let input = |r: usize, i: usize| ((i * 7 + r * 13) % 1001) as f32 - 500.0;
            let out = on_each(&mut rings, |r, c| {
                let mut v: Vec<f32> = (0..n).map(|i| input(r, i)).collect();
                c.all_reduce_sum(&mut v).map(|_| v)
            });
            let want: Vec<f32> = (0..n)
                .map(|i| (0..world).map(|r| input(r, i)).sum())
                .collect();
            for (r, got) in out.into_iter().enumerate() {
                assert!(
                    got.as_ref().unwrap() == &want,
                    "world {world} len {n} rank {r}"
                );
            }
        }
    }
}

/// Random floats: every rank gets the same bits, equal to summing chunk `c`
/// in ring order starting at rank `c`.
#[test]
fn all_reduce_is_bitwise_identical_and_in_ring_order() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for world in 2..=4 {
        let mut rings = ring(world, Duration::from_secs(20));
        for n in LENGTHS(world) {
            let inputs: Vec<Vec<f32>> = (0..world)
                .map(|_| {
                    (0..n)
                        .map(|_| rng.random_range(-1e3f32..1e3) * rng.random::<f32>())
                        .collect()
                })
                .collect();
            let out = on_each(&mut rings, |r, c| {
                let mut v = inputs[r].clone();
                c.all_reduce_sum(&mut v).map(|_| v)
            });
            let mut want = vec![0.0f32; n];
            for c in 0..world {
                for i in chunk(n, world, c) {
                    let mut acc = inputs[c][i];
                    for k in 1..world {
                        acc += inputs[(c + k) % world][i];
                    }
                    want[i] = acc;
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for (r, got) in out.iter().enumerate() {
                assert!(
                    bits(got.as_ref().unwrap()) == bits(&want),
                    "world {world} len {n} rank {r}"
                );
            }
        }
    }
}

#[test]
fn all_gather_concatenates_in_rank_order() {
    for world in 2..=4 {
        let mut rings = ring(world, Duration::from_secs(20));
        for n in [0, 1, 3, 100_003] {
            let input = |r: usize, i: usize| (r * 1_000_000 + i) as f32;
            let out = on_each(&mut rings, |r, c| {
                let send: Vec<f32> = (0..n).map(|i| input(r, i)).collect();
                let mut recv = vec![f32::NAN; n * world];
                c.all_gather(&send, &mut recv).map(|_| recv)
            });
            let want: Vec<f32> = (0..world)
                .flat_map(|r| (0..n).map(move |i| input(r, i)))
                .collect();
            for got in out {
                assert!(got.unwrap() == want, "world {world} len {n}");
            }
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for world in 2..=4 {
        let mut rings = ring(world, Duration::from_secs(20));
        for root in 0..world {
            for n in [0, 5, (1 << 20) + 7] {
                let out = on_each(&mut rings, |r, c| {
                    let mut buf: Vec<u8> = if r == root {
                        (0..n).map(|i| (i * 31 + root) as u8).collect()
                    } else {
                        vec![0xAA; n]
                    };
                    c.broadcast(&mut buf, root).map(|_| buf)
                });
                let want: Vec<u8> = (0..n).map(|i| (i * 31 + root) as u8).collect();
                for got in out {
                    assert!(got.unwrap() == want, "world {world} root {root} len {n}");
                }
            }
        }
    }
}

#[test]
fn barrier_releases_no_rank_before_the_last_enters() {
    for world in 2..=4 {
        let mut rings = ring(world, Duration::from_secs(20));
        let entered = Mutex::new(Vec::new());
        let left = on_each(&mut rings, |r, c| {
            thread::sleep(Duration::from_millis(40 * r as u64));
            entered.lock().unwrap().push(Instant::now());
            c.barrier().unwrap();
            Instant::now()
        });
        let last_in = *entered.lock().unwrap().iter().max().unwrap();
        assert!(left.iter().all(|t| *t >= last_in), "world {world}");
    }
}

#[test]
fn mixed_collectives_keep_the_ring_in_step() {
    let mut rings = ring(3, Duration::from_secs(20));
    let out = on_each(&mut rings, |r, c| -> Result<Vec<f32>> {
        let mut acc = Vec::new();
        for k in 0..20 {
            let mut v = vec![(r + k) as f32; 1 + k * 997];
            c.all_reduce_sum(&mut v)?;
            acc.push(v[0]);
            let mut g = vec![0.0; 3 * (k + 1)];
            c.all_gather(&vec![r as f32; k + 1], &mut g)?;
            acc.push(g.iter().sum());
            let mut b = [k as u8 + r as u8; 4];
            c.broadcast(&mut b, k % 3)?;
            acc.push(b[3] as f32);
            c.barrier()?;
        }
        Ok(acc)
    });
    let first = out[0].as_ref().unwrap();
    for o in &out {
        assert_eq!(o.as_ref().unwrap(), first);
    }
    assert_eq!(first[0], 3.0); // 0 + 1 + 2
}

fn assert_names_rank(e: &CommError, rank: usize) {
    let s = e.to_string();
    eprintln!("{s}");
    assert!(
        s.contains(&format!("rank {rank} ")),
        "error does not name rank {rank}: {s}"
    );
}

#[test]
fn a_peer_killed_mid_collective_fails_the_others_within_the_timeout() {
    let timeout = Duration::from_secs(3);
    let mut rings = ring(3, timeout);
    let kill = rings[2].kill_switch();
    let killed_at = Mutex::new(None);
    let kill = Mutex::new(Some(kill));
    let out = on_each(&mut rings, |r, c| {
        if r == 2 {
            let k = kill.lock().unwrap().take().unwrap();
            let killed_at = &killed_at;
            thread::scope(|s| {
                s.spawn(move || {
                    thread::sleep(Duration::from_millis(30));
                    *killed_at.lock().unwrap() = Some(Instant::now());
                    k();
                });
                let mut v = vec![1.0f32; 1 << 21];
                for _ in 0..10_000 {
                    if c.all_reduce_sum(&mut v).is_err() {
                        break;
                    }
                }
            });
            return None;
        }
        let mut v = vec![1.0f32; 1 << 21];
        for _ in 0..10_000 {
            if let Err(e) = c.all_reduce_sum(&mut v) {
                return Some((e, Instant::now()));
            }
        }
        panic!("rank {r} never noticed that rank 2 died");
    });
    let killed_at = killed_at.lock().unwrap().unwrap();
    for (r, o) in out.into_iter().enumerate().take(2) {
        let (e, at) = o.unwrap();
        let took = at.saturating_duration_since(killed_at);
        assert!(
            took < timeout + Duration::from_secs(1),
            "rank {r} took {took:?}: {e}"
        );
        assert_names_rank(&e, 2);
    }
    for ring in rings.iter_mut().take(2) {
        let e = ring.barrier().unwrap_err();
        assert!(matches!(e, CommError::Aborted(_)), "{e}");
    }
}

#[test]
fn a_dropped_peer_fails_the_others_naming_it() {
    let timeout = Duration::from_secs(3);
    let mut rings = ring(4, timeout);
    drop(rings.remove(1));
    let start = Instant::now();
    let out = on_each(&mut rings, |_, c| {
        let mut v = vec![2.0f32; 300_000];
        c.all_reduce_sum(&mut v).unwrap_err()
    });
    assert!(
        start.elapsed() < timeout + Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    for e in &out {
        assert_names_rank(e, 1);
    }
}

#[test]
fn a_silent_peer_times_out_naming_it() {
    let timeout = Duration::from_millis(800);
    let mut rings = ring(2, timeout);
    for n in [10, 1 << 22] {
        let mut rings = if n == 10 {
            std::mem::take(&mut rings)
        } else {
            ring(2, timeout)
        };
        let out = on_each(&mut rings, |r, c| {
            if r == 1 {
                thread::sleep(timeout * 2 + Duration::from_millis(500));
                return None;
            }
            let start = Instant::now();
            let mut v = vec![1.0f32; n];
            let e = c.all_reduce_sum(&mut v).unwrap_err();
            Some((e, start.elapsed()))
        });
        let (e, took) = out[0].as_ref().unwrap();
        assert!(e.is_timeout(), "len {n}: {e}");
        assert_names_rank(e, 1);
        assert!(
            *took >= timeout - Duration::from_millis(50),
            "len {n}: {took:?}"
        );
        assert!(
            *took < timeout + Duration::from_secs(1),
            "len {n}: {took:?}"
        );
    }
}

#[test]
fn a_stale_run_token_is_refused() {
    let (pending, addrs) = bind_all(2);
    let start = Instant::now();
    let out = connect_all(
        pending,
        &[addrs.clone(), addrs],
        &[1, 2],
        Duration::from_secs(3),
    );
    assert!(start.elapsed() < Duration::from_secs(4));
    for r in out {
        let e = r.unwrap_err();
        eprintln!("{e}");
        assert!(matches!(e, CommError::Rendezvous(_)), "{e}");
        assert!(e.to_string().contains("run token"), "{e}");
    }
}

#[test]
fn a_world_size_mismatch_is_refused() {
    let p0 = TcpRing::bind(0, 2, LOOPBACK.parse().unwrap()).unwrap();
    let p1 = TcpRing::bind(1, 3, LOOPBACK.parse().unwrap()).unwrap();
    let (a0, a1) = (p0.local_addr(), p1.local_addr());
    let peers = [vec![a0, a1], vec![a0, a1, a0]];
    let out = connect_all(
        vec![p0, p1],
        &peers,
        &[TOKEN, TOKEN],
        Duration::from_secs(3),
    );
    for r in out {
        let e = r.unwrap_err();
        eprintln!("{e}");
        assert!(e.to_string().contains("world size"), "{e}");
    }
}

#[test]
fn a_length_mismatch_is_an_error_not_a_hang() {
    let timeout = Duration::from_secs(10);
    for world in [2, 3] {
        let mut rings = ring(world, timeout);
        let start = Instant::now();
        let out = on_each(&mut rings, |r, c| {
            let mut v = vec![1.0f32; if r == world - 1 { 12 } else { 10 }];
            c.all_reduce_sum(&mut v).unwrap_err()
        });
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "world {world}: {:?}",
            start.elapsed()
        );
        for e in out {
            assert!(
                e.to_string().contains("length mismatch"),
                "world {world}: {e}"
            );
        }
    }
    let mut rings = ring(2, timeout);
    let out = on_each(&mut rings, |r, c| {
        let send = vec![0.0f32; 3 + r];
        let mut recv = vec![0.0f32; 2 * send.len()];
        c.all_gather(&send, &mut recv).unwrap_err()
    });
    for e in out {
        assert!(matches!(e, CommError::Length { .. }), "{e}");
    }
}

#[test]
fn different_collectives_on_different_ranks_are_an_error() {
    let mut rings = ring(2, Duration::from_secs(10));
    let out = on_each(&mut rings, |r, c| {
        if r == 0 {
            c.all_reduce_sum(&mut [1.0; 4]).unwrap_err()
        } else {
            c.barrier().unwrap_err()
        }
    });
    for e in out {
        eprintln!("{e}");
        assert!(matches!(e, CommError::Mismatch { .. }), "{e}");
    }
    // Ranks 0 and 1 say root 0, rank 2 says root 1. Rank 1 receives what it
    // expects from rank 0 and may return Ok; the ranks that see the
    // disagreement fail, and every rank fails by its next collective.
    let mut rings = ring(3, Duration::from_secs(10));
    let out = on_each(&mut rings, |r, c| {
        let b = c.broadcast(&mut [0u8; 8], usize::from(r == 2));
        (b.err(), c.barrier().unwrap_err())
    });
    for (r, (b, barrier)) in out.into_iter().enumerate() {
        if r != 1 {
            let e = b.unwrap();
            assert!(e.to_string().contains("root"), "{e}");
            assert!(matches!(barrier, CommError::Aborted(_)), "{barrier}");
        } else if b.is_none() {
            assert!(barrier.to_string().contains("root"), "{barrier}");
        }
    }
}

#[test]
#[ignore = "throughput figure, not a check"]
fn throughput() {
    for world in [2, 4] {
        let n = 16 << 20;
        let mut rings = ring(world, Duration::from_secs(60));
        let secs = on_each(&mut rings, |_, c| {
            let mut v = vec![1.0f32; n];
            c.all_reduce_sum(&mut v).unwrap();
            let start = Instant::now();
            for _ in 0..3 {
                c.all_reduce_sum(&mut v).unwrap();
            }
            start.elapsed().as_secs_f64() / 3.0
        });
        let t = secs.iter().cloned().fold(0.0, f64::max);
        let alg = (n * 4) as f64 / t / 1e9;
        let bus = alg * 2.0 * (world - 1) as f64 / world as f64;
        println!("tcp ring world {world}: 64 MiB all-reduce {:.1} ms, algbw {alg:.2} GB/s, busbw {bus:.2} GB/s", t * 1e3);
    }
}
