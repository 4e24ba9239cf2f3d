//! Location-URL encryption compatible with Glance's `metadata_encryption_key`:
//! AES-CBC keyed directly by the UTF-8 bytes of the key, a random IV, Glance's
//! own padding (`0x00` then non-zero random bytes) and URL-safe base64 that
//! keeps `=`. Only `image_locations.value` is ever encrypted.

use aes::{Aes128, Aes192, Aes256};
use base64::Engine as _;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};

use crate::error::{CatalogError, Result};

/// A validated `metadata_encryption_key`.
#[derive(Clone)]
pub struct LocationCipher {
    key: Vec<u8>,
}

impl std::fmt::Debug for LocationCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocationCipher(AES-{})", self.key.len() * 8)
    }
}

/// URI schemes a stored plaintext location may carry. Base64 output never
/// contains `:` or `/`, so a value starting with one of these is plaintext.
const PLAINTEXT_SCHEMES: &[&str] = &[
    "file",
    "rbd",
    "swift",
    "swift+http",
    "swift+https",
    "swift+config",
    "s3",
    "s3+http",
    "s3+https",
    "cinder",
    "http",
    "https",
    "vsphere",
    "pending",
    "sheepdog",
];

/// Whether a stored location value is a plaintext URI rather than ciphertext.
pub fn looks_like_plain_uri(value: &str) -> bool {
    match value.split_once("://") {
        Some((scheme, _)) => PLAINTEXT_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()),
        None => false,
    }
}

impl LocationCipher {
    /// Validates the key: its UTF-8 byte length must be 16, 24 or 32.
    pub fn new(key: &str) -> Result<Self> {
        let key = key.as_bytes().to_vec();
        match key.len() {
            16 | 24 | 32 => Ok(LocationCipher { key }),
            n => Err(CatalogError::InvalidKey(n)),
        }
    }

    /// Encrypts `plain` the way Glance does, with a fresh random IV and
    /// random padding.
    pub fn encrypt(&self, plain: &str) -> Result<String> {
        let mut iv = [0u8; 16];
        fill_random(&mut iv)?;
        let mut rnd = |buf: &mut [u8]| -> Result<()> {
            fill_random(buf)?;
            for b in buf.iter_mut() {
                // Glance draws pad bytes from 1..=255; mapping 0 to 1 keeps
                // the "last 0x00 marks the end" rule intact.
                if *b == 0 {
                    *b = 1;
                }
            }
            Ok(())
        };
        self.encrypt_with(plain, iv, &mut rnd)
    }

    /// Encryption with an injected IV and pad source (for test vectors).
    pub fn encrypt_with(
        &self,
        plain: &str,
        iv: [u8; 16],
        pad: &mut dyn FnMut(&mut [u8]) -> Result<()>,
    ) -> Result<String> {
        let mut buf = plain.as_bytes().to_vec();
        let n = 16 - (buf.len() % 16);
        buf.push(0);
        let mut tail = vec![0u8; n - 1];
        pad(&mut tail)?;
        if tail.contains(&0) {
            return Err(CatalogError::InvalidValue(
                "padding bytes must be non-zero".into(),
            ));
        }
        buf.extend_from_slice(&tail);
        let len = buf.len();
        let ct: &[u8] = match self.key.len() {
            16 => cbc::Encryptor::<Aes128>::new_from_slices(&self.key, &iv)
                .map_err(|e| CatalogError::InvalidValue(e.to_string()))?
                .encrypt_padded_mut::<NoPadding>(&mut buf, len)
                .map_err(|e| CatalogError::InvalidValue(e.to_string()))?,
            24 => cbc::Encryptor::<Aes192>::new_from_slices(&self.key, &iv)
                .map_err(|e| CatalogError::InvalidValue(e.to_string()))?
                .encrypt_padded_mut::<NoPadding>(&mut buf, len)
                .map_err(|e| CatalogError::InvalidValue(e.to_string()))?,
            _ => cbc::Encryptor::<Aes256>::new_from_slices(&self.key, &iv)
                .map_err(|e| CatalogError::InvalidValue(e.to_string()))?
                .encrypt_padded_mut::<NoPadding>(&mut buf, len)
                .map_err(|e| CatalogError::InvalidValue(e.to_string()))?,
        };
        let mut out = iv.to_vec();
        out.extend_from_slice(ct);
        Ok(base64::engine::general_purpose::URL_SAFE.encode(out))
    }

    /// Decrypts a stored value. Requires `=` padding like Python; accepts the
    /// standard alphabet too because Python does; keeps everything before the
    /// last `0x00` without checking the pad bytes.
    pub fn decrypt(&self, stored: &str) -> Result<String> {
        let normalized: String = stored
            .trim()
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        let raw = base64::engine::general_purpose::URL_SAFE
            .decode(normalized.as_bytes())
            .map_err(|e| CatalogError::Decrypt(format!("not base64: {e}")))?;
        if raw.len() < 32 || raw.len() % 16 != 0 {
            return Err(CatalogError::Decrypt(format!(
                "length {} is not an IV plus whole AES blocks",
                raw.len()
            )));
        }
        let (iv, body) = raw.split_at(16);
        let mut buf = body.to_vec();
        let plain: &[u8] = match self.key.len() {
            16 => cbc::Decryptor::<Aes128>::new_from_slices(&self.key, iv)
                .map_err(|e| CatalogError::Decrypt(e.to_string()))?
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map_err(|e| CatalogError::Decrypt(e.to_string()))?,
            24 => cbc::Decryptor::<Aes192>::new_from_slices(&self.key, iv)
                .map_err(|e| CatalogError::Decrypt(e.to_string()))?
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map_err(|e| CatalogError::Decrypt(e.to_string()))?,
            _ => cbc::Decryptor::<Aes256>::new_from_slices(&self.key, iv)
                .map_err(|e| CatalogError::Decrypt(e.to_string()))?
                .decrypt_padded_mut::<NoPadding>(&mut buf)
                .map_err(|e| CatalogError::Decrypt(e.to_string()))?,
        };
        let end = plain
            .iter()
            .rposition(|b| *b == 0)
            .ok_or_else(|| CatalogError::Decrypt("no padding marker".into()))?;
        String::from_utf8(plain[..end].to_vec()).map_err(|_| {
            CatalogError::Decrypt("wrong key or not ciphertext (invalid UTF-8)".into())
        })
    }

    /// Reads a stored value: plaintext URIs pass through, anything else is
    /// decrypted.
    pub fn read_value(&self, stored: &str) -> Result<String> {
        if looks_like_plain_uri(stored) {
            Ok(stored.to_string())
        } else {
            self.decrypt(stored)
        }
    }
}

fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| CatalogError::InvalidValue(format!("no randomness: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE_URL: &str = "file:///var/lib/glance/images/11111111-2222-3333-4444-555555555555";

    fn fixed(key: &str, plain: &str) -> String {
        let iv: [u8; 16] = core::array::from_fn(|i| i as u8);
        LocationCipher::new(key)
            .unwrap()
            .encrypt_with(plain, iv, &mut |b: &mut [u8]| {
                b.fill(0xab);
                Ok(())
            })
            .unwrap()
    }

    fn check(key: &str, vectors: &[(&str, &str)]) {
        let c = LocationCipher::new(key).unwrap();
        for (plain, ct) in vectors {
            assert_eq!(&fixed(key, plain), ct, "encrypt {plain} with {key}");
            assert_eq!(&c.decrypt(ct).unwrap(), plain, "decrypt {ct}");
        }
    }

    #[test]
    fn vectors_aes128() {
        check(
            "0123456789abcdef",
            &[
                ("rbd://abc", "AAECAwQFBgcICQoLDA0OD5NoSiCdF9tV9BVd8se_1rI="),
                (
                    "xxxxxxxxxxxxxxx",
                    "AAECAwQFBgcICQoLDA0ODxP-NplxLnszCt4et7ezEMo=",
                ),
                (
                    "yyyyyyyyyyyyyyyy",
                    "AAECAwQFBgcICQoLDA0OD3KyIqaTrK8NB5-X-GejMnRq_Gp1ubQthRwRrAbGfrPH",
                ),
                (
                    FILE_URL,
                    "AAECAwQFBgcICQoLDA0ODwj-hUg3YMk1PMMRhtwRMJOlQkLAA16NhtqkMMzv4gm0R943h3N0Evf8DLBiNDiAJ7gkVHScU8pSZWjtEcK5p7yuci4nMvnpS348tp8W_G9c",
                ),
            ],
        );
    }

    #[test]
    fn vectors_aes192() {
        check(
            "0123456789abcdef01234567",
            &[
                ("rbd://abc", "AAECAwQFBgcICQoLDA0OD1dRhTNAUNPAHQJxSwyZm4I="),
                (
                    "xxxxxxxxxxxxxxx",
                    "AAECAwQFBgcICQoLDA0OD1tC20KexWX4DuMNu-Gtm60=",
                ),
                (
                    "yyyyyyyyyyyyyyyy",
                    "AAECAwQFBgcICQoLDA0OD5Tq_BjHEEiarZZP50jBBDRlJGgcbEIW7mWRikR878x-",
                ),
                (
                    FILE_URL,
                    "AAECAwQFBgcICQoLDA0OD3V93o3rsXRW3Ok1q2Kp8nY2zpWdKZaGqmb_cNVOrUPxvvGr5CJrHrdFbezMgZDNtSPw7Aa53fXQvGAwANRPgqwmT8A4Yak_rRHXXoVVS4pC",
                ),
            ],
        );
    }

    #[test]
    fn vectors_aes256() {
        check(
            "0123456789abcdef0123456789abcdef",
            &[
                ("rbd://abc", "AAECAwQFBgcICQoLDA0OD56Fl2od7JA978VQ36Ap2-s="),
                (
                    "xxxxxxxxxxxxxxx",
                    "AAECAwQFBgcICQoLDA0OD2aGEgjWm8fVdDYHaUz4dZg=",
                ),
                (
                    "yyyyyyyyyyyyyyyy",
                    "AAECAwQFBgcICQoLDA0OD8rrY6X3sZe0fFtnaQLVHNGCWSjE5e8CUdDn_apHiiGd",
                ),
                (
                    FILE_URL,
                    "AAECAwQFBgcICQoLDA0OD0VV-MOucFd1_4HoNS5NT98y-5Ls9IZ3PByL86QaLIZIOkK3eIeQTKIEsl_hpnkQu7mT8PJHiosgS7CTjqIXV9wYMA8HnJsq9Is86g2WxB-j",
                ),
            ],
        );
    }

    #[test]
    fn real_value_from_glance() {
        let c = LocationCipher::new("0123456789abcdef").unwrap();
        assert_eq!(
            c.decrypt("fUWtbjqLu-jdF8duUrH2emZvzkfne_KxEm0wv0IBmMe3Kiw7jbte53k4zRIz6isF")
                .unwrap(),
            "http://example.com/img"
        );
    }

    #[test]
    fn random_roundtrip_and_length() {
        let c = LocationCipher::new("0123456789abcdef0123456789abcdef").unwrap();
        let a = c.encrypt(FILE_URL).unwrap();
        let b = c.encrypt(FILE_URL).unwrap();
        assert_ne!(a, b, "fresh IV each time");
        assert_eq!(a.len(), 128);
        assert_eq!(c.decrypt(&a).unwrap(), FILE_URL);
        assert_eq!(c.encrypt("rbd://abc").unwrap().len(), 44);
    }

    #[test]
    fn key_length_in_bytes() {
        assert!(LocationCipher::new("short").is_err());
        // 16 Cyrillic characters are 32 UTF-8 bytes: AES-256.
        let k = "абвгдежзийклмноп";
        assert_eq!(k.len(), 32);
        let c = LocationCipher::new(k).unwrap();
        assert_eq!(
            c.decrypt(&c.encrypt("s3://b/k").unwrap()).unwrap(),
            "s3://b/k"
        );
    }

    #[test]
    fn failures_are_errors_and_plaintext_passes() {
        let c = LocationCipher::new("0123456789abcdef").unwrap();
        assert!(c.decrypt(FILE_URL).is_err());
        assert!(
            c.decrypt("AAECAwQFBgcICQoLDA0OD5NoSiCdF9tV9BVd8se_1rI")
                .is_err(),
            "missing = padding is refused like Python"
        );
        let other = LocationCipher::new("fedcba9876543210").unwrap();
        let ct = c.encrypt("rbd://pool/image/snap").unwrap();
        assert_ne!(
            other.decrypt(&ct).ok().as_deref(),
            Some("rbd://pool/image/snap")
        );
        assert_eq!(c.read_value(FILE_URL).unwrap(), FILE_URL);
        assert_eq!(c.read_value(&ct).unwrap(), "rbd://pool/image/snap");
        // Standard alphabet accepted, as Python does.
        let std_alpha = "AAECAwQFBgcICQoLDA0OD5NoSiCdF9tV9BVd8se/1rI=";
        assert_eq!(c.decrypt(std_alpha).unwrap(), "rbd://abc");
    }
}
