//! The packing benchmark: `nixery pack` against `tar | pigz` and other
//! baselines, side by side in one run, on the same large closure.
//!
//! The closure is made of host files, read in place (nothing is copied or
//! downloaded): by default every entry of /usr/lib/x86_64-linux-gnu,
//! /usr/bin and /usr/share is a "store path" (entries holding sockets,
//! fifos or devices are left out). The plan has a dominant layer (all of
//! /usr/lib/x86_64-linux-gnu, as a merged layer of libraries would be),
//! one for /usr/bin and eight for /usr/share, so both parallel layers and
//! one large layer are exercised.
//!
//! Each command reads from the page cache (a first `tar` warms it). The
//! baselines compress one tar stream of exactly the same entries, with hard
//! links written in full as nixery writes them (`tar --hard-dereference`). Peak
//! memory of `nixery pack` is the child's maximum RSS.
//!
//! Run: `cargo bench --bench packing` (or `bench/packing`); arguments
//! replace the default directories; `--rounds N` repeats each command and
//! keeps the fastest; `--with-gzip` adds single-threaded `gzip -6`.
//!
//! Then the deflate engines alone, on the same 1 MiB members of the first
//! 512 MiB of the stream, on both cores: libdeflate (nixery's) at levels
//! 4 to 6 against zlib-rs (zlib-ng's algorithms in Rust, flate2's
//! backend); ISA-L's igzip runs above as a pipeline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn entries_of(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => return Vec::new(),
    };
    v.sort();
    v.retain(|p| packable(p));
    v
}

/// Whether everything under `p` is a file, directory or symlink.
fn packable(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    walkdir::WalkDir::new(p).into_iter().all(|e| match e {
        Ok(e) => {
            let t = e.file_type();
            !(t.is_socket() || t.is_fifo() || t.is_block_device() || t.is_char_device())
        }
        Err(_) => false,
    })
}

struct Measured {
    time: Duration,
    bytes: Option<u64>,
}

/// Runs `bash -c script` (with pipefail) `rounds` times; keeps the fastest. When `count` is
/// set, the script's standard output is counted in bytes.
fn measure(script: &str, rounds: usize, count: bool) -> Measured {
    let mut best: Option<Measured> = None;
    for _ in 0..rounds {
        let script = if count { format!("{script} | wc -c") } else { script.to_string() };
        let start = Instant::now();
        let out = Command::new("bash").args(["-c", &format!("set -o pipefail; {script}")]).stderr(Stdio::inherit()).output().expect("sh");
        let time = start.elapsed();
        assert!(out.status.success(), "{script} failed");
        let bytes = count.then(|| String::from_utf8_lossy(&out.stdout).trim().parse().expect("wc -c output"));
        if best.as_ref().is_none_or(|b| time < b.time) {
            best = Some(Measured { time, bytes });
        }
    }
    best.expect("at least one round")
}

fn max_child_rss_kib() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss as u64
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let rounds = args.iter().position(|a| a == "--rounds").and_then(|i| args.get(i + 1)).and_then(|n| n.parse().ok()).unwrap_or(1);
    let with_gzip = args.iter().any(|a| a == "--with-gzip");
    let mut dirs: Vec<PathBuf> = args.iter().filter(|a| a.starts_with('/')).map(PathBuf::from).collect();
    if dirs.is_empty() {
        dirs = ["/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/share"].iter().map(PathBuf::from).collect();
    }

    // The plan: the first directory is one layer; the second one more; the
    // rest split into eight layers.
    let mut layers: Vec<Vec<PathBuf>> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let e = entries_of(d);
        if i < 2 {
            layers.push(e);
        } else {
            let k = 8;
            for c in 0..k {
                layers.push(e.iter().skip(c).step_by(k).cloned().collect());
            }
        }
    }
    layers.retain(|l| !l.is_empty());
    let all: Vec<&PathBuf> = layers.iter().flatten().collect();
    let work = std::env::temp_dir().join(format!("nixery-bench-packing-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let plan = serde_json::json!({
        "version": 1,
        "layers": layers.iter().map(|l| serde_json::json!({"paths": l, "size": 0})).collect::<Vec<_>>(),
    });
    let plan_file = work.join("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan).unwrap()).unwrap();
    let list = work.join("entries");
    let mut f = std::fs::File::create(&list).unwrap();
    for p in &all {
        writeln!(f, "{}", p.strip_prefix("/").unwrap().display()).unwrap();
    }
    drop(f);
    // --hard-dereference: like nixery, write a hard-linked file in full each
    // time (the bytes of a layer must not depend on whether the store was
    // optimised), so both sides pack the same content.
    let tar = format!("tar -c --hard-dereference -C / --files-from={}", list.display());

    // Warm the page cache and size the input.
    let input = measure(&tar, 1, true);
    let input_bytes = input.bytes.unwrap();
    let nixery = env!("CARGO_BIN_EXE_nixery");

    println!(
        "closure: {} entries of {} in {} layers; tar stream {:.2} GB",
        all.len(),
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        layers.len(),
        input_bytes as f64 / 1e9
    );
    println!("machine: {} cores; fastest of {rounds} round(s) each\n", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));

    // Ours first, so that the children's peak RSS is ours.
    let blobs = work.join("blobs");
    let ours = measure(&format!("rm -rf {b} && {nixery} pack --plan {p} --out {b} > {b}.json", b = blobs.display(), p = plan_file.display()), rounds, false);
    let rss = max_child_rss_kib();
    let ours_bytes: u64 = std::fs::read_dir(&blobs).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();

    let mut rows: Vec<(String, Measured)> = vec![
        ("tar > /dev/null".into(), measure(&format!("{tar} > /dev/null"), rounds, false)),
        ("tar | sha256sum".into(), measure(&format!("{tar} | sha256sum > /dev/null"), rounds, false)),
    ];
    if with_gzip {
        rows.push(("tar | gzip -6".into(), measure(&format!("{tar} | gzip -6 -n"), rounds, true)));
    }
    rows.push(("tar | pigz -p2 -6".into(), measure(&format!("{tar} | pigz -p2 -6 -n"), rounds, true)));
    rows.push(("tar | pigz -p2 -1".into(), measure(&format!("{tar} | pigz -p2 -1 -n"), rounds, true)));
    rows.push(("tar | zstd -T2 -3".into(), measure(&format!("{tar} | zstd -q -T2 -3"), rounds, true)));
    // ISA-L's igzip: the fastest deflate there is, at its best level (3).
    rows.push(("tar | igzip -T2 -3".into(), measure(&format!("{tar} | igzip -c -n -T2 -3"), rounds, true)));
    rows.push(("tar | igzip -T2 -1".into(), measure(&format!("{tar} | igzip -c -n -T2 -1"), rounds, true)));
    let pigz6 = rows.iter().find(|r| r.0 == "tar | pigz -p2 -6").map(|r| (r.1.time, r.1.bytes.unwrap())).unwrap();
    let zstd3 = rows.iter().find(|r| r.0 == "tar | zstd -T2 -3").map(|r| (r.1.time, r.1.bytes.unwrap())).unwrap();
    rows.push((
        format!("nixery pack (gzip {}, default; all layers, both digests)", nixery::packing::DEFAULT_GZIP_LEVEL),
        Measured { time: ours.time, bytes: Some(ours_bytes) },
    ));
    // Level 6 too, as pigz's own level.
    let blobs6 = work.join("blobs6");
    let ours6 = measure(
        &format!("rm -rf {b} && {nixery} pack --level 6 --plan {p} --out {b} > {b}.json", b = blobs6.display(), p = plan_file.display()),
        rounds,
        false,
    );
    let ours6_bytes: u64 = std::fs::read_dir(&blobs6).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
    rows.push(("nixery pack --level 6".into(), Measured { time: ours6.time, bytes: Some(ours6_bytes) }));
    let zblobs = work.join("zblobs");
    let ours_zstd = measure(
        &format!("rm -rf {b} && {nixery} pack --compression zstd --plan {p} --out {b} > {b}.json", b = zblobs.display(), p = plan_file.display()),
        rounds,
        false,
    );
    let zstd_bytes: u64 = std::fs::read_dir(&zblobs).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
    rows.push(("nixery pack --compression zstd (level 3)".into(), Measured { time: ours_zstd.time, bytes: Some(zstd_bytes) }));

    // Everything but compression: tar, both digests, writing.
    let nblobs = work.join("nblobs");
    let ours_none = measure(
        &format!("rm -rf {b} && {nixery} pack --compression none --plan {p} --out {b} > {b}.json", b = nblobs.display(), p = plan_file.display()),
        rounds,
        false,
    );
    let _ = std::fs::remove_dir_all(&nblobs);
    rows.push(("nixery pack --compression none (all but deflate)".into(), Measured { time: ours_none.time, bytes: None }));

    println!("{:<50} {:>9} {:>10} {:>12} {:>14}", "what", "time", "input MB/s", "output MB", "vs pigz -6");
    for (what, m) in &rows {
        let rate = input_bytes as f64 / 1e6 / m.time.as_secs_f64();
        let out = m.bytes.map(|b| format!("{:.1}", b as f64 / 1e6)).unwrap_or_else(|| "-".into());
        let ratio = m.time.as_secs_f64() / pigz6.0.as_secs_f64();
        println!("{what:<50} {:>8.2}s {rate:>10.0} {out:>12} {ratio:>13.2}x", m.time.as_secs_f64());
    }
    println!(
        "\nnixery pack: {:.2}x the time of tar | pigz -p2 -6, output {:+.2}% against it, peak RSS {} MB",
        ours.time.as_secs_f64() / pigz6.0.as_secs_f64(),
        (ours_bytes as f64 / pigz6.1 as f64 - 1.0) * 100.0,
        rss / 1024
    );
    println!(
        "nixery pack --level 6: {:.2}x the time of tar | pigz -p2 -6, output {:+.2}% against it",
        ours6.time.as_secs_f64() / pigz6.0.as_secs_f64(),
        (ours6_bytes as f64 / pigz6.1 as f64 - 1.0) * 100.0
    );
    println!(
        "nixery pack --compression zstd: {:.2}x the time of tar | zstd -T2 -3, output {:+.2}% against it",
        ours_zstd.time.as_secs_f64() / zstd3.0.as_secs_f64(),
        (zstd_bytes as f64 / zstd3.1 as f64 - 1.0) * 100.0
    );
    engines(&tar, rounds);
    let _ = std::fs::remove_dir_all(&work);
}

/// The deflate engines side by side on the same members: the first
/// [`ENGINE_SAMPLE`] bytes of the tar stream, cut into nixery's 1 MiB
/// chunks, each compressed into a gzip member on rayon's pool (both
/// cores), as `nixery pack` does; nothing else is timed.
fn engines(tar: &str, rounds: usize) {
    use rayon::prelude::*;
    let out = Command::new("bash").args(["-c", &format!("set -o pipefail; {tar} | head -c {ENGINE_SAMPLE}")]).output().expect("tar");
    let sample = out.stdout;
    let chunks: Vec<&[u8]> = sample.chunks(nixery::packing::gzip::GZIP_CHUNK).collect();
    // An engine makes one compressor per worker; the compressor returns
    // the size of the member it made.
    type Compress = Box<dyn FnMut(&[u8]) -> usize>;
    type Engine = Box<dyn Fn() -> Compress + Sync>;
    let libdeflate = |level: i32| -> Engine {
        Box::new(move || {
            let mut z = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
            let mut out = Vec::new();
            Box::new(move |c: &[u8]| {
                out.resize(z.gzip_compress_bound(c.len()), 0);
                z.gzip_compress(c, &mut out).unwrap()
            })
        })
    };
    let zlib_rs = |level: u32| -> Engine {
        Box::new(move || {
            Box::new(move |c: &[u8]| {
                let mut z = flate2::write::GzEncoder::new(Vec::with_capacity(c.len()), flate2::Compression::new(level));
                z.write_all(c).unwrap();
                z.finish().unwrap().len()
            })
        })
    };
    let engines: Vec<(&str, Engine)> = vec![
        ("libdeflate 4", libdeflate(4)),
        ("libdeflate 5 (nixery's default)", libdeflate(5)),
        ("libdeflate 6", libdeflate(6)),
        ("zlib-rs 4 (zlib-ng's algorithms)", zlib_rs(4)),
        ("zlib-rs 5", zlib_rs(5)),
        ("zlib-rs 6", zlib_rs(6)),
    ];
    println!("\ndeflate engines, the same 1 MiB members of the first {:.0} MB, both cores:", sample.len() as f64 / 1e6);
    println!("{:<36} {:>9} {:>10} {:>12} {:>16}", "engine", "time", "MB/s", "output MB", "vs libdeflate 5");
    let mut results = Vec::new();
    for (name, engine) in &engines {
        let mut best = Duration::MAX;
        let mut bytes = 0;
        for _ in 0..rounds {
            let start = Instant::now();
            bytes = chunks.par_iter().map_init(engine, |z, c| z(c)).sum::<usize>();
            best = best.min(start.elapsed());
        }
        results.push((name, best, bytes));
    }
    let base = results[1];
    for (name, time, bytes) in &results {
        println!(
            "{name:<36} {:>8.2}s {:>10.0} {:>12.1} {:>8.2}x {:+.2}%",
            time.as_secs_f64(),
            sample.len() as f64 / 1e6 / time.as_secs_f64(),
            *bytes as f64 / 1e6,
            time.as_secs_f64() / base.1.as_secs_f64(),
            (*bytes as f64 / base.2 as f64 - 1.0) * 100.0
        );
    }
}

/// How much of the tar stream the engine comparison compresses.
const ENGINE_SAMPLE: usize = 512 << 20;
