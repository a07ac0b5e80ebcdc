//! The gzip writer: pigz-style parallel compression with output that
//! never depends on the number of threads.
//!
//! The stream is cut into chunks of [`GZIP_CHUNK`] bytes; each is
//! compressed on rayon's pool as raw deflate primed with the previous
//! chunk's last 32 KiB (so the ratio stays close to one stream's) and ended
//! with a sync flush; the chunks are written in order behind one gzip
//! header (no file name, no time), with the CRC-32 and length of the whole.
//! Chunk boundaries are fixed, so the bytes are the same on one thread or
//! many, and a large layer keeps every core busy.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;

use flate2::{Compress, FlushCompress, Status};

/// The input size of one independently compressed gzip chunk. Part of the
/// output format: changing it changes every layer digest.
pub const GZIP_CHUNK: usize = 1 << 20;
/// The deflate window: how much of the previous chunk primes the next.
const DICTIONARY: usize = 32 * 1024;

/// A gzip writer that compresses fixed-size chunks on rayon's thread pool
/// (see the module documentation). Output is identical whatever the number
/// of threads, including none: on a rayon worker thread, chunks are
/// compressed inline, so nested use cannot deadlock.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    level: u32,
    chunk: Vec<u8>,
    dictionary: Vec<u8>,
    crc: crc32fast::Hasher,
    length: u64,
    pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
    max_pending: usize,
}

impl<W: Write> std::fmt::Debug for ParallelGzWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelGzWriter").field("level", &self.level).field("length", &self.length).field("pending", &self.pending.len()).finish()
    }
}

impl<W: Write> ParallelGzWriter<W> {
    /// Starts a gzip stream (no file name, no time) at `level` (0 to 9).
    pub fn new(mut inner: W, level: u32) -> io::Result<Self> {
        // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown).
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        Ok(ParallelGzWriter {
            inner,
            level: level.min(9),
            chunk: Vec::with_capacity(GZIP_CHUNK),
            dictionary: Vec::new(),
            crc: crc32fast::Hasher::new(),
            length: 0,
            pending: VecDeque::new(),
            max_pending: 2 * rayon::current_num_threads() + 1,
        })
    }

    /// The writer the compressed stream goes to.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let input = std::mem::replace(&mut self.chunk, if last { Vec::new() } else { Vec::with_capacity(GZIP_CHUNK) });
        let tail = input.len().saturating_sub(DICTIONARY);
        let dictionary = std::mem::replace(&mut self.dictionary, input[tail..].to_vec());
        let level = self.level;
        let (tx, rx) = mpsc::sync_channel(1);
        if rayon::current_thread_index().is_some() {
            let _ = tx.send(compress_chunk(&input, &dictionary, level, last));
        } else {
            rayon::spawn(move || {
                let _ = tx.send(compress_chunk(&input, &dictionary, level, last));
            });
        }
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let rx = self.pending.pop_front().expect("a pending chunk");
        let bytes = rx.recv().map_err(|_| io::Error::other("a compression task failed"))??;
        self.inner.write_all(&bytes)
    }

    /// Compresses what is left, writes the trailer and returns the inner
    /// writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let crc = std::mem::take(&mut self.crc).finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&(self.length as u32).to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(GZIP_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.length += n as u64;
        if self.chunk.len() == GZIP_CHUNK {
            self.submit(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raw deflate of one chunk, primed with `dictionary`, ending with a sync
/// flush (byte-aligned, not final) or, for the last chunk, the final block.
fn compress_chunk(input: &[u8], dictionary: &[u8], level: u32, last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(flate2::Compression::new(level), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(io::Error::other)?;
    }
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&input[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        let room_left = out.len() < out.capacity();
        match status {
            Status::StreamEnd => return Ok(out),
            _ if !last && all_in && room_left => return Ok(out),
            _ => out.reserve(out.capacity().max(64 * 1024)),
        }
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
                if (i / 4096) % 3 == 0 { (i % 7) as u8 } else { (x >> 16) as u8 }
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
            flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{len} bytes round-trip");
            // A single-stream gzip of the same data is not much smaller.
            let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            single.write_all(&data).unwrap();
            let single = single.finish().unwrap();
            assert!(one.len() as f64 <= single.len() as f64 * 1.03 + 64.0, "{} vs {}", one.len(), single.len());
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
    fn the_header_has_no_name_and_no_time() {
        let blob = ParallelGzWriter::new(Vec::new(), 5).unwrap().finish().unwrap();
        assert_eq!(&blob[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    }
}
