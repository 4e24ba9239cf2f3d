//! Single-pass hashing of image data: Glance's legacy `checksum` (MD5) and
//! the secure `os_hash_value` (`hashing_algorithm`) over the bytes written to
//! the store, computed while they stream.
//!
//! Hashing runs on dedicated threads so the async runtime keeps moving data.
//! In parallel mode the two digests run on two threads at once (they are
//! independent steps of the task); in serial mode one thread computes both.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;
use md5::Digest;

/// A secure hash algorithm Glance can record in `os_hash_algo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgo {
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512 (Glance's default).
    Sha512,
}

impl HashAlgo {
    /// Parses the `hashing_algorithm` option value.
    pub fn parse(name: &str) -> Option<HashAlgo> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "sha224" => HashAlgo::Sha224,
            "sha256" => HashAlgo::Sha256,
            "sha384" => HashAlgo::Sha384,
            "sha512" | "" => HashAlgo::Sha512,
            _ => return None,
        })
    }

    /// The name stored in `os_hash_algo`.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Sha224 => "sha224",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha384 => "sha384",
            HashAlgo::Sha512 => "sha512",
        }
    }
}

enum Secure {
    S224(sha2::Sha224),
    S256(sha2::Sha256),
    S384(sha2::Sha384),
    S512(sha2::Sha512),
}

impl Secure {
    fn new(a: HashAlgo) -> Self {
        match a {
            HashAlgo::Sha224 => Secure::S224(sha2::Sha224::new()),
            HashAlgo::Sha256 => Secure::S256(sha2::Sha256::new()),
            HashAlgo::Sha384 => Secure::S384(sha2::Sha384::new()),
            HashAlgo::Sha512 => Secure::S512(sha2::Sha512::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Secure::S224(h) => h.update(b),
            Secure::S256(h) => h.update(b),
            Secure::S384(h) => h.update(b),
            Secure::S512(h) => h.update(b),
        }
    }
    fn hex(self) -> String {
        match self {
            Secure::S224(h) => hex::encode(h.finalize()),
            Secure::S256(h) => hex::encode(h.finalize()),
            Secure::S384(h) => hex::encode(h.finalize()),
            Secure::S512(h) => hex::encode(h.finalize()),
        }
    }
}

/// The digests of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// MD5 hex (`images.checksum`).
    pub checksum: String,
    /// `images.os_hash_algo`.
    pub os_hash_algo: String,
    /// `images.os_hash_value`.
    pub os_hash_value: String,
}

/// Smallest known size hashed on two threads.
pub const PARALLEL_MIN: u64 = 8 << 20;

type Worker = (
    SyncSender<Bytes>,
    JoinHandle<(Option<String>, Option<String>)>,
);

/// Feeds chunks to hashing threads; [`MultiHasher::finish`] returns the
/// digests.
pub struct MultiHasher {
    algo: HashAlgo,
    workers: Vec<Worker>,
}

fn spawn(md5: bool, secure: Option<HashAlgo>) -> Worker {
    // A short queue bounds memory (a few chunks) while letting the
    // downloader run ahead of the hash for a moment.
    let (tx, rx) = sync_channel::<Bytes>(4);
    let handle = std::thread::Builder::new()
        .name("imaged-hash".into())
        .spawn(move || {
            let mut m = md5.then(md5::Md5::new);
            let mut s = secure.map(Secure::new);
            while let Ok(chunk) = rx.recv() {
                if let Some(m) = m.as_mut() {
                    m.update(&chunk);
                }
                if let Some(s) = s.as_mut() {
                    s.update(&chunk);
                }
            }
            (m.map(|m| hex::encode(m.finalize())), s.map(Secure::hex))
        })
        .expect("spawn hashing thread");
    (tx, handle)
}

impl MultiHasher {
    /// Hashers for `algo`; `parallel` puts MD5 and the secure hash on
    /// separate threads.
    pub fn new(algo: HashAlgo, parallel: bool) -> Self {
        Self::for_size(algo, parallel, None)
    }

    /// [`MultiHasher::new`] for data of `size` bytes when known: below
    /// [`PARALLEL_MIN`] both digests share one thread even when `parallel`
    /// asks for two, since a second thread costs more than it saves there
    /// (and many small imports run side by side in parallel mode anyway).
    pub fn for_size(algo: HashAlgo, parallel: bool, size: Option<u64>) -> Self {
        let parallel = parallel && size.is_none_or(|n| n >= PARALLEL_MIN);
        let workers = if parallel {
            vec![spawn(true, None), spawn(false, Some(algo))]
        } else {
            vec![spawn(true, Some(algo))]
        };
        MultiHasher { algo, workers }
    }

    /// Hands one chunk to every hashing thread (blocks only while their
    /// queues are full).
    pub fn update(&self, chunk: &Bytes) {
        for (tx, _) in &self.workers {
            // A closed channel means the thread panicked; `finish` reports it.
            let _ = tx.send(chunk.clone());
        }
    }

    /// Waits for the threads and returns the digests.
    pub fn finish(self) -> Digests {
        let mut checksum = String::new();
        let mut value = String::new();
        for (tx, handle) in self.workers {
            drop(tx);
            if let Ok((m, s)) = handle.join() {
                if let Some(m) = m {
                    checksum = m;
                }
                if let Some(s) = s {
                    value = s;
                }
            }
        }
        Digests {
            checksum,
            os_hash_algo: self.algo.name().to_string(),
            os_hash_value: value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_and_parallel_agree_with_known_digests() {
        for parallel in [false, true] {
            let h = MultiHasher::new(HashAlgo::Sha512, parallel);
            h.update(&Bytes::from_static(b"ab"));
            h.update(&Bytes::from_static(b"c"));
            let d = h.finish();
            assert_eq!(d.checksum, "900150983cd24fb0d6963f7d28e17f72");
            assert_eq!(d.os_hash_algo, "sha512");
            assert!(d.os_hash_value.starts_with("ddaf35a193617aba"), "{d:?}");
            assert_eq!(d.os_hash_value.len(), 128);
        }
        let h = MultiHasher::new(HashAlgo::Sha256, true);
        h.update(&Bytes::from_static(b"abc"));
        let d = h.finish();
        assert_eq!(
            d.os_hash_value,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn small_known_sizes_hash_on_one_thread() {
        let threads = |parallel, size| {
            let h = MultiHasher::for_size(HashAlgo::Sha512, parallel, size);
            let n = h.workers.len();
            h.update(&Bytes::from_static(b"abc"));
            assert_eq!(h.finish().checksum, "900150983cd24fb0d6963f7d28e17f72");
            n
        };
        assert_eq!(threads(true, None), 2, "unknown size");
        assert_eq!(threads(true, Some(PARALLEL_MIN)), 2);
        assert_eq!(threads(true, Some(256 << 10)), 1);
        assert_eq!(threads(false, Some(1 << 30)), 1, "serial mode");
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(HashAlgo::parse("SHA256"), Some(HashAlgo::Sha256));
        assert_eq!(HashAlgo::parse("md4"), None);
        assert_eq!(HashAlgo::parse("sha512").unwrap().name(), "sha512");
    }
}
