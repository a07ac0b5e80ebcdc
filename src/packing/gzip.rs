//! The gzip writer: parallel compression with libdeflate, and output that
//! never depends on the number of threads.
//!
//! The stream is cut into chunks of [`GZIP_CHUNK`] bytes, and each chunk
//! is compressed on rayon's pool into a gzip member of its own (libdeflate
//! compresses whole buffers, about three times faster than zlib at equal
//! output; its headers carry no file name and no time). The members are
//! written in order: a multi-member gzip stream, which every gzip reader
//! takes as the concatenation of its members (Go's `compress/gzip` and
//! pgzip, which Docker, containerd, podman and skopeo use; zlib; pigz).
//! Chunk boundaries are fixed, so the bytes are the same on one thread or
//! many, and a large layer keeps every core busy.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;

/// The input size of one gzip member. Part of the output format: changing
/// it changes every layer digest.
pub const GZIP_CHUNK: usize = 1 << 20;

/// The highest gzip level (libdeflate's).
pub const MAX_LEVEL: u32 = 12;

thread_local! {
    /// One libdeflate compressor per thread and level: each holds a few
    /// hundred KiB of tables, made once.
    static COMPRESSORS: RefCell<Vec<(u32, libdeflater::Compressor)>> = const { RefCell::new(Vec::new()) };
}

/// A compressed member: `bytes[..len]`. The buffer keeps its full size so
/// that it can be reused without being cleared again.
struct Member {
    bytes: Vec<u8>,
    len: usize,
}

/// Compresses `input` into one gzip member at `level` (0 to
/// [`MAX_LEVEL`]), in `out` (grown to libdeflate's bound if it is smaller).
fn compress_member(input: &[u8], level: u32, mut out: Vec<u8>) -> io::Result<Member> {
    COMPRESSORS.with(|cell| {
        let mut compressors = cell.borrow_mut();
        let i = match compressors.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                let lvl = libdeflater::CompressionLvl::new(level as i32).map_err(|_| io::Error::other(format!("gzip level {level} is out of range")))?;
                compressors.push((level, libdeflater::Compressor::new(lvl)));
                compressors.len() - 1
            }
        };
        let c = &mut compressors[i].1;
        let bound = c.gzip_compress_bound(input.len());
        if out.len() < bound {
            out.resize(bound, 0);
        }
        let len = c.gzip_compress(input, &mut out).map_err(|e| io::Error::other(format!("libdeflate: {e:?}")))?;
        Ok(Member { bytes: out, len })
    })
}

/// What a compression task sends back: the member, and the input buffer
/// for the next chunk.
type Compressed = (io::Result<Member>, Vec<u8>);

/// A gzip writer that compresses fixed-size chunks on rayon's thread pool
/// into gzip members (see the module documentation). Output is identical
/// whatever the number of threads, including none: on a rayon worker
/// thread, chunks are compressed inline, so nested use cannot deadlock.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    level: u32,
    chunk: Vec<u8>,
    members: u64,
    pending: VecDeque<mpsc::Receiver<Compressed>>,
    max_pending: usize,
    /// Buffers back from compression tasks, reused: input chunks and
    /// output members (at most `max_pending + 1` of each, 1 MiB apiece).
    spare_inputs: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
}

impl<W: Write> std::fmt::Debug for ParallelGzWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelGzWriter").field("level", &self.level).field("members", &self.members).field("pending", &self.pending.len()).finish()
    }
}

impl<W: Write> ParallelGzWriter<W> {
    /// Starts a gzip stream at `level` (0 to [`MAX_LEVEL`]).
    pub fn new(inner: W, level: u32) -> io::Result<Self> {
        if level > MAX_LEVEL {
            return Err(io::Error::other(format!("gzip level {level} is out of range (0 to {MAX_LEVEL})")));
        }
        Ok(ParallelGzWriter {
            inner,
            level,
            chunk: Vec::with_capacity(GZIP_CHUNK),
            members: 0,
            pending: VecDeque::new(),
            max_pending: 2 * rayon::current_num_threads() + 1,
            spare_inputs: Vec::new(),
            spare_outputs: Vec::new(),
        })
    }

    /// The writer the compressed stream goes to.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    fn submit(&mut self) -> io::Result<()> {
        let next = self.spare_inputs.pop().unwrap_or_else(|| Vec::with_capacity(GZIP_CHUNK));
        let input = std::mem::replace(&mut self.chunk, next);
        let out = self.spare_outputs.pop().unwrap_or_default();
        let level = self.level;
        let (tx, rx) = mpsc::sync_channel(1);
        let task = move || {
            let member = compress_member(&input, level, out);
            let _ = tx.send((member, input));
        };
        if rayon::current_thread_index().is_some() {
            task();
        } else {
            rayon::spawn(task);
        }
        self.members += 1;
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let rx = self.pending.pop_front().expect("a pending member");
        let (member, mut input) = rx.recv().map_err(|_| io::Error::other("a compression task failed"))?;
        let member = member?;
        self.inner.write_all(&member.bytes[..member.len])?;
        input.clear();
        self.spare_inputs.push(input);
        self.spare_outputs.push(member.bytes);
        Ok(())
    }

    /// Compresses what is left and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        // An empty stream is still one (empty) member: valid gzip.
        if !self.chunk.is_empty() || self.members == 0 {
            self.submit()?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(GZIP_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == GZIP_CHUNK {
            self.submit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Bytes that compress somewhat, like binaries: a mix of runs and noise.
    pub(crate) fn sample_bytes(n: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if (i / 4096) % 3 == 0 {
                    (i % 7) as u8
                } else {
                    (x >> 16) as u8
                }
            })
            .collect()
    }

    fn gzip_with_threads(data: &[u8], threads: usize) -> Vec<u8> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        // A plain thread as the producer, as packing runs them.
        pool.install(|| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut w = ParallelGzWriter::new(Vec::new(), 6).unwrap();
                    for piece in data.chunks(70_000) {
                        w.write_all(piece).unwrap();
                    }
                    w.finish().unwrap()
                })
                .join()
                .unwrap()
            })
        })
    }

    #[test]
    fn parallel_gzip_is_valid_and_independent_of_threads() {
        for len in [0, 1000, GZIP_CHUNK, 3 * GZIP_CHUNK + 12345] {
            let data = sample_bytes(len);
            let one = gzip_with_threads(&data, 1);
            let four = gzip_with_threads(&data, 4);
            assert_eq!(one, four, "{len} bytes: same output whatever the threads");
            let mut back = Vec::new();
            flate2::read::MultiGzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{len} bytes round-trip");
            // A single-stream zlib gzip of the same data is not smaller.
            let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            single.write_all(&data).unwrap();
            let single = single.finish().unwrap();
            assert!(one.len() as f64 <= single.len() as f64 * 1.01 + 64.0, "{} vs {}", one.len(), single.len());
        }
        // Compressing inline on a rayon worker gives the same bytes.
        let data = sample_bytes(2 * GZIP_CHUNK + 7);
        let inline = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| {
            let mut w = ParallelGzWriter::new(Vec::new(), 6).unwrap();
            w.write_all(&data).unwrap();
            w.finish().unwrap()
        });
        assert_eq!(inline, gzip_with_threads(&data, 2));
    }

    #[test]
    fn members_have_no_name_and_no_time() {
        let blob = ParallelGzWriter::new(Vec::new(), 5).unwrap().finish().unwrap();
        assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        let two = gzip_with_threads(&sample_bytes(GZIP_CHUNK + 1), 2);
        // The second member starts right after the first: find its header.
        let second = two.windows(4).skip(10).position(|w| w == [0x1f, 0x8b, 8, 0]).expect("a second member");
        assert_eq!(&two[10 + second + 4..10 + second + 10], &[0, 0, 0, 0, 0, 0xff]);
        assert!(ParallelGzWriter::new(Vec::new(), MAX_LEVEL + 1).is_err());
    }
}
