//! NCCL check for a GPU machine: build here, copy the binary, run it there.
//!
//! ```text
//! nccl_check                     world of one on device 0
//! nccl_check --pair              two processes of this binary, world 2 (one GPU: over sockets)
//! nccl_check --rank R --world W --id-file F [--device D]
//!                                one rank of a W-process check; rank 0 writes the unique id
//!                                to F (delete F before starting), the others wait for it
//! options: --timeout-s S (default 20), --size-mib M (bandwidth buffer, default 64),
//!          --watchdog (world 2: rank 1 skips a collective; rank 0 must time out)
//! ```
//!
//! Prints one `PASS`/`FAIL` line per check and `RESULT key=value` lines with
//! the figures; exits 1 when any check failed.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, DevicePtrMut};
use tessera_comm::nccl::{self, NcclCollective, UNIQUE_ID_BYTES};
use tessera_comm::{Collective, CommError};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Debug, Clone)]
struct Args {
    rank: usize,
    world: usize,
    device: Option<usize>,
    id_file: Option<PathBuf>,
    timeout: Duration,
    size_mib: usize,
    pair: bool,
    watchdog: bool,
}

fn parse() -> Res<Args> {
    let mut a = Args {
        rank: 0,
        world: 1,
        device: None,
        id_file: None,
        timeout: Duration::from_secs(20),
        size_mib: 64,
        pair: false,
        watchdog: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rank" => a.rank = value()?.parse()?,
            "--world" => a.world = value()?.parse()?,
            "--device" => a.device = Some(value()?.parse()?),
            "--id-file" => a.id_file = Some(value()?.into()),
            "--timeout-s" => a.timeout = Duration::from_secs_f64(value()?.parse()?),
            "--size-mib" => a.size_mib = value()?.parse()?,
            "--pair" => a.pair = true,
            "--watchdog" => a.watchdog = true,
            "-h" | "--help" => {
                println!("see the header of crates/tessera-comm/examples/nccl_check.rs");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if a.world > 1 && a.id_file.is_none() && !a.pair {
        return Err("--world > 1 needs --id-file".into());
    }
    Ok(a)
}

/// Collects PASS/FAIL lines.
struct Report {
    tag: String,
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        let verdict = if ok { "PASS" } else { "FAIL" };
        println!("{verdict} {}{name}: {detail}", self.tag);
        if !ok {
            self.failed += 1;
        }
    }
    fn result(&self, key: &str, value: impl std::fmt::Display) {
        println!("RESULT {}{key}={value}", self.tag);
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nccl_check: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = if args.pair {
        run_pair(&args)
    } else {
        run_rank(&args)
    };
    match outcome {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            println!("FAIL nccl_check: {e}");
            ExitCode::from(1)
        }
    }
}

/// Spawns two ranks of this binary. On a one-GPU machine both use device 0,
/// with distinct NCCL_HOSTIDs so NCCL accepts them (and talks over sockets).
fn run_pair(args: &Args) -> Res<usize> {
    nccl::probe()?;
    let gpus = CudaContext::device_count()?.max(0) as usize;
    let id_file = std::env::temp_dir().join(format!("tessera-nccl-id-{}", std::process::id()));
    let _ = std::fs::remove_file(&id_file);
    let exe = std::env::current_exe()?;
    let shared_gpu = gpus < 2;
    if shared_gpu {
        println!("NOTE one GPU: both ranks on device 0 with distinct NCCL_HOSTID, NCCL over sockets on lo (slow; the code path is real)");
    }
    let mut children = Vec::new();
    for rank in 0..2 {
        let mut cmd = Command::new(&exe);
        cmd.args(["--rank", &rank.to_string(), "--world", "2"])
            .arg("--id-file")
            .arg(&id_file)
            .args(["--timeout-s", &args.timeout.as_secs_f64().to_string()])
            .args(["--size-mib", &args.size_mib.to_string()])
            .args(["--device", &(if shared_gpu { 0 } else { rank }).to_string()]);
        if args.watchdog {
            cmd.arg("--watchdog");
        }
        if shared_gpu {
            cmd.env("NCCL_HOSTID", format!("tessera-check-{rank}"));
            if std::env::var_os("NCCL_SOCKET_IFNAME").is_none() {
                cmd.env("NCCL_SOCKET_IFNAME", "lo");
            }
        }
        children.push(cmd.spawn()?);
    }
    let deadline = Instant::now() + args.timeout * 6 + Duration::from_secs(60);
    let mut failed = 0;
    for (rank, child) in children.iter_mut().enumerate() {
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let ok = status.is_some_and(|s| s.success());
        println!(
            "{} pair: rank {rank} {}",
            if ok { "PASS" } else { "FAIL" },
            status.map_or("was killed after the deadline".into(), |s| format!(
                "exited with {s}"
            ))
        );
        failed += usize::from(!ok);
    }
    let _ = std::fs::remove_file(&id_file);
    Ok(failed)
}

fn read_id(path: &PathBuf, timeout: Duration) -> Res<[u8; UNIQUE_ID_BYTES]> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(b) = std::fs::read(path) {
            if b.len() == UNIQUE_ID_BYTES {
                let mut id = [0u8; UNIQUE_ID_BYTES];
                id.copy_from_slice(&b);
                return Ok(id);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no unique id in {} within {timeout:?}", path.display()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_rank(args: &Args) -> Res<usize> {
    let (rank, world) = (args.rank, args.world);
    let mut rep = Report {
        tag: if world > 1 {
            format!("[rank {rank}/{world}] ")
        } else {
            String::new()
        },
        failed: 0,
    };
    if let Err(e) = nccl::probe() {
        rep.check("libraries", false, e);
        return Ok(rep.failed);
    }
    let (maj, min, pat) = nccl::version()?;
    rep.result("nccl_version", format!("{maj}.{min}.{pat}"));
    let gpus = CudaContext::device_count()?;
    let device = args.device.unwrap_or(rank % gpus.max(1) as usize);

    let id = if rank == 0 {
        let id = NcclCollective::unique_id()?;
        if let Some(path) = &args.id_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, id)?;
            std::fs::rename(&tmp, path)?;
        }
        id
    } else {
        read_id(
            args.id_file.as_ref().ok_or("--id-file is required")?,
            args.timeout,
        )?
    };

    let t0 = Instant::now();
    let mut comm = match NcclCollective::new(device, rank, world, id, args.timeout) {
        Ok(c) => c,
        Err(e) => {
            rep.check("init", false, e);
            return Ok(rep.failed);
        }
    };
    let name = comm.context().name().unwrap_or_default();
    rep.check(
        "init",
        true,
        format!(
            "device {device} ({name}) in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        ),
    );
    rep.result("device", name.replace(' ', "_"));

    host_checks(&mut comm, &mut rep);
    if let Err(e) = device_bandwidth(&mut comm, &mut rep, args.size_mib) {
        rep.check("device all_reduce", false, e);
    }
    if args.watchdog && world == 2 {
        watchdog_check(comm, &mut rep, args.timeout);
    }
    Ok(rep.failed)
}

fn host_checks(comm: &mut NcclCollective, rep: &mut Report) {
    let (rank, world) = (comm.rank(), comm.world());
    let n = 1_000_003;
    let mut v: Vec<f32> = (0..n).map(|i| ((rank + 1) * (i % 1000)) as f32).collect();
    let r = comm.all_reduce_sum(&mut v);
    let scale = (world * (world + 1) / 2) as f32;
    let bad = v
        .iter()
        .enumerate()
        .filter(|(i, x)| **x != scale * (i % 1000) as f32)
        .count();
    rep.check(
        "host all_reduce_sum (1000003 f32)",
        r.is_ok() && bad == 0,
        format!("{r:?}, {bad} wrong values"),
    );

    let m = 1001;
    let send: Vec<f32> = (0..m).map(|i| (rank * 10_000 + i) as f32).collect();
    let mut recv = vec![-1.0f32; m * world];
    let r = comm.all_gather(&send, &mut recv);
    let bad = recv
        .iter()
        .enumerate()
        .filter(|(j, x)| **x != ((j / m) * 10_000 + j % m) as f32)
        .count();
    rep.check(
        "host all_gather",
        r.is_ok() && bad == 0,
        format!("{r:?}, {bad} wrong values"),
    );

    for root in 0..world {
        let want: Vec<u8> = (0..4099).map(|i| (i * 7 + root) as u8).collect();
        let mut buf = if rank == root {
            want.clone()
        } else {
            vec![0; want.len()]
        };
        let r = comm.broadcast(&mut buf, root);
        rep.check(
            &format!("host broadcast from root {root}"),
            r.is_ok() && buf == want,
            format!("{r:?}"),
        );
    }
    let r = comm.barrier();
    rep.check("barrier", r.is_ok(), format!("{r:?}"));

    // Decode-sized all-reduce latency through host memory (hidden size 4096).
    let mut small = vec![1.0f32; 4096];
    let iters = 200;
    let t = Instant::now();
    let mut r = Ok(());
    for _ in 0..iters {
        r = r.and(comm.all_reduce_sum(&mut small));
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
    rep.check(
        "host all_reduce latency (4096 f32)",
        r.is_ok(),
        format!("{us:.1} us per call"),
    );
    rep.result("host_allreduce_4096_us", format!("{us:.1}"));
}

fn device_bandwidth(comm: &mut NcclCollective, rep: &mut Report, size_mib: usize) -> Res<()> {
    let (rank, world) = (comm.rank(), comm.world());
    let stream = comm.context().new_stream()?;
    let n = size_mib * (1 << 20) / 4;
    let mut buf = stream.clone_htod(&vec![(rank + 1) as f32; n])?;
    let raw = stream.cu_stream();
    {
        let (ptr, _sync) = buf.device_ptr_mut(&stream);
        // SAFETY: `ptr` holds `n` floats in the communicator's context; `raw` is a stream of it.
        unsafe { comm.all_reduce_sum_device(ptr, n, raw) }?;
    }
    let host = stream.clone_dtoh(&buf)?;
    let want = (world * (world + 1) / 2) as f32;
    let bad = host.iter().filter(|x| **x != want).count();
    rep.check(
        &format!("device all_reduce_sum ({size_mib} MiB)"),
        bad == 0,
        format!("{bad} wrong values"),
    );

    let time = |comm: &mut NcclCollective,
                buf: &mut cudarc::driver::CudaSlice<f32>,
                len: usize,
                iters: usize|
     -> Res<f64> {
        let (ptr, _sync) = buf.device_ptr_mut(&stream);
        for _ in 0..3 {
            // SAFETY: as above.
            unsafe { comm.all_reduce_sum_device(ptr, len, raw) }?;
        }
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: as above.
            unsafe { comm.all_reduce_sum_device(ptr, len, raw) }?;
        }
        Ok(t.elapsed().as_secs_f64() / iters as f64)
    };
    let secs = time(comm, &mut buf, n, 10)?;
    let alg = (n * 4) as f64 / secs / 1e9;
    let bus = alg * 2.0 * (world - 1) as f64 / world as f64;
    rep.check(
        &format!("device all_reduce bandwidth ({size_mib} MiB)"),
        true,
        format!("{:.3} ms per call, algbw {alg:.2} GB/s, busbw {bus:.2} GB/s (busbw = algbw*2(W-1)/W; 0 for W=1)", secs * 1e3),
    );
    rep.result("device_allreduce_ms", format!("{:.3}", secs * 1e3));
    rep.result("device_allreduce_algbw_gbs", format!("{alg:.2}"));
    rep.result("device_allreduce_busbw_gbs", format!("{bus:.2}"));
    let us = time(comm, &mut buf, 4096, 200)? * 1e6;
    rep.check(
        "device all_reduce latency (4096 f32)",
        true,
        format!("{us:.1} us per call"),
    );
    rep.result("device_allreduce_4096_us", format!("{us:.1}"));
    Ok(())
}

/// Rank 1 stays away from a collective; rank 0 must get a watchdog error
/// within the timeout (plus slack), and then `Aborted`.
fn watchdog_check(mut comm: NcclCollective, rep: &mut Report, timeout: Duration) {
    if comm.rank() == 1 {
        println!(
            "[rank 1/2] skipping a collective for {:?}, then exiting without cleanup",
            timeout + Duration::from_secs(3)
        );
        std::thread::sleep(timeout + Duration::from_secs(3));
        std::process::exit(if rep.failed == 0 { 0 } else { 1 });
    }
    let t = Instant::now();
    let r = comm.all_reduce_sum(&mut [1.0f32; 16]);
    let took = t.elapsed();
    let in_time = took < timeout + Duration::from_secs(3);
    let is_watchdog = matches!(r, Err(CommError::Watchdog { .. }));
    rep.check(
        "watchdog fires on a missing peer",
        is_watchdog && in_time,
        format!("after {took:.1?}: {r:?}"),
    );
    let again = comm.barrier();
    rep.check(
        "aborted communicator refuses later calls",
        matches!(again, Err(CommError::Aborted(_))),
        format!("{again:?}"),
    );
}
