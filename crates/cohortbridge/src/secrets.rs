//! Secrets at rest: encryption of the secrets an owner must be able to read back (API secret,
//! Currents token, Data Import Keys) and hashing of those only ever compared (the admin key).
//!
//! The encryption key is 32 random bytes in `<data dir>/secret.key` (mode 0600), created on
//! first start, or the `COHORTBRIDGE_SECRET_KEY` setting (64 hex digits). Losing it makes the
//! stored secrets unreadable.

use std::fs;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const KEY_FILE: &str = "secret.key";
const FORMAT_PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create the encryption key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the encryption key must be 32 bytes (64 hex digits), found {found} bytes")]
    KeyLength { found: usize },
    #[error("the encryption key (--secret-key or COHORTBRIDGE_SECRET_KEY) is not valid hex")]
    KeyHex(#[from] hex::FromHexError),
    #[error("a stored secret cannot be decrypted; was the encryption key replaced?")]
    Decrypt,
}

/// Encrypts and decrypts stored secrets with XChaCha20-Poly1305 and a random nonce per value.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl SecretBox {
    pub fn from_key(key: &[u8]) -> Result<Self, SecretError> {
        if key.len() != 32 {
            return Err(SecretError::KeyLength { found: key.len() });
        }
        Ok(Self {
            cipher: XChaCha20Poly1305::new_from_slice(key).expect("key length checked"),
        })
    }

    /// Uses `hex_key` when given, else the key file in `data_dir`, created when missing.
    pub fn load_or_create(data_dir: &Path, hex_key: Option<&str>) -> Result<Self, SecretError> {
        if let Some(hex_key) = hex_key {
            return Self::from_key(&hex::decode(hex_key.trim())?);
        }
        let path = data_dir.join(KEY_FILE);
        let io_error = |source| SecretError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match fs::read(&path) {
            Ok(bytes) => Self::from_key(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let mut options = fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&path).map_err(io_error)?;
                file.write_all(&key).map_err(io_error)?;
                file.sync_all().map_err(io_error)?;
                Self::from_key(&key)
            }
            Err(e) => Err(io_error(e)),
        }
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("encryption with a valid key does not fail");
        let mut out = nonce.to_vec();
        out.extend(ciphertext);
        format!(
            "{FORMAT_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    pub fn decrypt(&self, stored: &str) -> Result<String, SecretError> {
        let encoded = stored
            .strip_prefix(FORMAT_PREFIX)
            .ok_or(SecretError::Decrypt)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Decrypt)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Decrypt);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(plaintext).map_err(|_| SecretError::Decrypt)
    }
}

/// Generates a random token of `bytes` bytes, as lowercase hex.
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

/// SHA-256 of a secret as lowercase hex. The secrets hashed here are random 128-bit or longer
/// tokens, so a fast hash is enough; looking a hash up reveals nothing about the secret.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_round_trips_with_fresh_nonce() {
        let secret_box = SecretBox::from_key(&[7u8; 32]).unwrap();
        let first = secret_box.encrypt("dik-123");
        let second = secret_box.encrypt("dik-123");
        assert_ne!(first, second);
        assert!(!first.contains("dik-123"));
        assert_eq!(secret_box.decrypt(&first).unwrap(), "dik-123");
    }

    #[test]
    fn wrong_key_fails_to_decrypt() {
        let stored = SecretBox::from_key(&[7u8; 32]).unwrap().encrypt("x");
        let other = SecretBox::from_key(&[8u8; 32]).unwrap();
        assert!(matches!(other.decrypt(&stored), Err(SecretError::Decrypt)));
    }

    #[test]
    fn key_file_is_created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let stored = SecretBox::load_or_create(dir.path(), None)
            .unwrap()
            .encrypt("x");
        let again = SecretBox::load_or_create(dir.path(), None).unwrap();
        assert_eq!(again.decrypt(&stored).unwrap(), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn short_hex_key_is_rejected() {
        assert!(matches!(
            SecretBox::load_or_create(Path::new("."), Some("abcd")),
            Err(SecretError::KeyLength { found: 2 })
        ));
    }
}
