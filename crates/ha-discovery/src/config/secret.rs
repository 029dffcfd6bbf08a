//! Secret configs: AES-256-GCM with the application's key, applied by the
//! publisher before anything is proposed, so the plaintext never reaches
//! the raft log, the WAL or the state DB.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use crate::config::model::{ConfigId, from_hex, to_hex};

/// A 256-bit AES-GCM key for secret configs, provided by the application
/// (from its secret store; the config center never stores it).
/// `Debug` does not print it.
#[derive(Clone)]
pub struct SecretKey(Key<Aes256Gcm>);

impl SecretKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(bytes.into())
    }

    /// A fresh random key (tests, first setup).
    pub fn generate() -> SecretKey {
        SecretKey(Aes256Gcm::generate_key(OsRng))
    }

    /// Encrypts `plaintext` with a fresh random nonce; the config id is
    /// authenticated data, so a ciphertext copied to another config does
    /// not decrypt. Returns (nonce as hex, ciphertext).
    pub(crate) fn encrypt(&self, id: &ConfigId, plaintext: &[u8]) -> Option<(String, Vec<u8>)> {
        let cipher = Aes256Gcm::new(&self.0);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = id.to_string();
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .ok()?;
        Some((to_hex(&nonce), ciphertext))
    }

    /// Decrypts; `None` for a wrong key, a damaged ciphertext or nonce.
    pub(crate) fn decrypt(&self, id: &ConfigId, nonce: &str, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let nonce = from_hex(nonce)?;
        if nonce.len() != 12 {
            return None;
        }
        let cipher = Aes256Gcm::new(&self.0);
        let aad = id.to_string();
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .ok()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key_or_id_fails() {
        let id = ConfigId::new("ns", "g", "db").expect("id");
        let other = ConfigId::new("ns", "g", "db2").expect("id");
        let key = SecretKey::generate();
        let (nonce, ct) = key.encrypt(&id, b"password=hunter2").expect("encrypts");
        assert!(
            !ct.windows(7).any(|w| w == b"hunter2"),
            "ciphertext holds plaintext"
        );
        assert_eq!(
            key.decrypt(&id, &nonce, &ct).as_deref(),
            Some(&b"password=hunter2"[..])
        );
        assert_eq!(SecretKey::generate().decrypt(&id, &nonce, &ct), None);
        assert_eq!(key.decrypt(&other, &nonce, &ct), None);
        let (nonce2, _) = key.encrypt(&id, b"password=hunter2").expect("encrypts");
        assert_ne!(nonce, nonce2, "nonces repeat");
        assert!(!format!("{key:?}").contains(&to_hex(key.0.as_slice())));
    }
}
