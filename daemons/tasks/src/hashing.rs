//! Single-pass hashing of image data: Glance's legacy `checksum` (MD5) and
//! the secure `os_hash_value` (`hashing_algorithm`) over the bytes written to
//! the store, computed while they stream.
//!
//! Hashing runs on dedicated threads so the async runtime keeps moving data.
//! In parallel mode the two digests run on two threads at once (they are
//! independent steps of the task); in serial mode one thread computes both.
//! The digests come from the system libcrypto, with the portable RustCrypto
//! code as the fallback for an algorithm the library refuses.

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

/// One running digest. OpenSSL's assembly (the implementation behind Glance's own
/// `hashlib`) is 1.25-1.5x faster than the portable Rust code for MD5 and SHA-512 here, and
/// hashing is most of an import's CPU. When the system libcrypto refuses an algorithm (MD5
/// under a FIPS policy, say) the portable code computes it instead: Glance's `checksum` is
/// not a security use.
enum Running {
    Ossl(openssl::hash::Hasher),
    Md5(md5::Md5),
    S224(sha2::Sha224),
    S256(sha2::Sha256),
    S384(sha2::Sha384),
    S512(sha2::Sha512),
}

/// What [`Running`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Md5,
    Secure(HashAlgo),
}

impl Running {
    fn new(kind: Kind) -> Self {
        use openssl::hash::MessageDigest;
        let md = match kind {
            Kind::Md5 => MessageDigest::md5(),
            Kind::Secure(HashAlgo::Sha224) => MessageDigest::sha224(),
            Kind::Secure(HashAlgo::Sha256) => MessageDigest::sha256(),
            Kind::Secure(HashAlgo::Sha384) => MessageDigest::sha384(),
            Kind::Secure(HashAlgo::Sha512) => MessageDigest::sha512(),
        };
        match openssl::hash::Hasher::new(md) {
            Ok(h) => Running::Ossl(h),
            Err(_) => Self::portable(kind),
        }
    }

    fn portable(kind: Kind) -> Self {
        match kind {
            Kind::Md5 => Running::Md5(md5::Md5::new()),
            Kind::Secure(HashAlgo::Sha224) => Running::S224(sha2::Sha224::new()),
            Kind::Secure(HashAlgo::Sha256) => Running::S256(sha2::Sha256::new()),
            Kind::Secure(HashAlgo::Sha384) => Running::S384(sha2::Sha384::new()),
            Kind::Secure(HashAlgo::Sha512) => Running::S512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, b: &[u8]) -> Result<(), String> {
        match self {
            Running::Ossl(h) => h.update(b).map_err(|e| e.to_string())?,
            Running::Md5(h) => h.update(b),
            Running::S224(h) => h.update(b),
            Running::S256(h) => h.update(b),
            Running::S384(h) => h.update(b),
            Running::S512(h) => h.update(b),
        }
        Ok(())
    }

    fn hex(self) -> Result<String, String> {
        Ok(match self {
            Running::Ossl(mut h) => hex::encode(h.finish().map_err(|e| e.to_string())?),
            Running::Md5(h) => hex::encode(h.finalize()),
            Running::S224(h) => hex::encode(h.finalize()),
            Running::S256(h) => hex::encode(h.finalize()),
            Running::S384(h) => hex::encode(h.finalize()),
            Running::S512(h) => hex::encode(h.finalize()),
        })
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

/// What one hashing thread returns: its digests, or why hashing failed.
type Output = Result<(Option<String>, Option<String>), String>;

type Worker = (SyncSender<Bytes>, JoinHandle<Output>);

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
            let mut m = md5.then(|| Running::new(Kind::Md5));
            let mut s = secure.map(|a| Running::new(Kind::Secure(a)));
            while let Ok(chunk) = rx.recv() {
                for h in [m.as_mut(), s.as_mut()].into_iter().flatten() {
                    h.update(&chunk)?;
                }
            }
            Ok((
                m.map(Running::hex).transpose()?,
                s.map(Running::hex).transpose()?,
            ))
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

    /// Waits for the threads and returns the digests, or why they could not
    /// be computed (a thread that failed or panicked).
    pub fn finish(self) -> Result<Digests, String> {
        let mut checksum = None;
        let mut value = None;
        for (tx, handle) in self.workers {
            drop(tx);
            let (m, s) = handle
                .join()
                .map_err(|_| "a hashing thread panicked".to_string())??;
            checksum = checksum.or(m);
            value = value.or(s);
        }
        match (checksum, value) {
            (Some(checksum), Some(os_hash_value)) => Ok(Digests {
                checksum,
                os_hash_algo: self.algo.name().to_string(),
                os_hash_value,
            }),
            _ => Err("a digest was not computed".into()),
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
            let d = h.finish().unwrap();
            assert_eq!(d.checksum, "900150983cd24fb0d6963f7d28e17f72");
            assert_eq!(d.os_hash_algo, "sha512");
            assert!(d.os_hash_value.starts_with("ddaf35a193617aba"), "{d:?}");
            assert_eq!(d.os_hash_value.len(), 128);
        }
        let h = MultiHasher::new(HashAlgo::Sha256, true);
        h.update(&Bytes::from_static(b"abc"));
        let d = h.finish().unwrap();
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
            assert_eq!(
                h.finish().unwrap().checksum,
                "900150983cd24fb0d6963f7d28e17f72"
            );
            n
        };
        assert_eq!(threads(true, None), 2, "unknown size");
        assert_eq!(threads(true, Some(PARALLEL_MIN)), 2);
        assert_eq!(threads(true, Some(256 << 10)), 1);
        assert_eq!(threads(false, Some(1 << 30)), 1, "serial mode");
    }

    #[test]
    fn openssl_and_portable_digests_agree() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let kinds = [
            Kind::Md5,
            Kind::Secure(HashAlgo::Sha224),
            Kind::Secure(HashAlgo::Sha256),
            Kind::Secure(HashAlgo::Sha384),
            Kind::Secure(HashAlgo::Sha512),
        ];
        for kind in kinds {
            let mut fast = Running::new(kind);
            assert!(
                matches!(fast, Running::Ossl(_)),
                "{kind:?} not from libcrypto"
            );
            let mut portable = Running::portable(kind);
            fast.update(&data[..777]).unwrap();
            fast.update(&data[777..]).unwrap();
            portable.update(&data).unwrap();
            assert_eq!(fast.hex().unwrap(), portable.hex().unwrap(), "{kind:?}");
        }
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(HashAlgo::parse("SHA256"), Some(HashAlgo::Sha256));
        assert_eq!(HashAlgo::parse("md4"), None);
        assert_eq!(HashAlgo::parse("sha512").unwrap().name(), "sha512");
    }
}
