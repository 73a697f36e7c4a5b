//! restic's authenticated encryption: AES-256-CTR, then Poly1305-AES over the
//! ciphertext, laid out as `IV(16) || ciphertext || MAC(16)`.
//!
//! The 16-byte IV is both the CTR counter block (a 128-bit big-endian counter,
//! as Go's `cipher.NewCTR` increments it) and the Poly1305-AES nonce: the
//! Poly1305 `s` value is `AES-128_k(nonce)`, `r` is the clamped second half of
//! the MAC key.

use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

pub const IV_LEN: usize = 16;
pub const MAC_LEN: usize = 16;
/// Bytes that encryption adds to a plaintext.
pub const OVERHEAD: usize = IV_LEN + MAC_LEN;

/// The MAC failed: wrong key, or the data was modified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacError;

/// A master key (or a key derived from a password): 32 bytes AES-256 key,
/// 16 bytes AES-128 key `k` and 16 bytes Poly1305 `r` for the MAC.
#[derive(Clone)]
pub struct Key {
    encrypt: [u8; 32],
    mac_k: [u8; 16],
    mac_r: [u8; 16],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Poly1305's clamping of `r` as restic applies it before use (the paper's
/// requirement; the poly1305 crate clamps again, which is idempotent).
fn mask_r(r: &mut [u8; 16]) {
    r[3] &= 15;
    r[7] &= 15;
    r[11] &= 15;
    r[15] &= 15;
    r[4] &= 252;
    r[8] &= 252;
    r[12] &= 252;
}

impl Key {
    /// A fresh random master key.
    pub fn random() -> Key {
        let mut b = [0u8; 64];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        Key::from_bytes(&b)
    }

    /// Splits 64 key bytes as restic does for scrypt output: encryption key
    /// first, then MAC `k`, then MAC `r`.
    pub fn from_bytes(b: &[u8; 64]) -> Key {
        let mut encrypt = [0u8; 32];
        let mut mac_k = [0u8; 16];
        let mut mac_r = [0u8; 16];
        encrypt.copy_from_slice(&b[..32]);
        mac_k.copy_from_slice(&b[32..48]);
        mac_r.copy_from_slice(&b[48..]);
        mask_r(&mut mac_r);
        Key {
            encrypt,
            mac_k,
            mac_r,
        }
    }

    fn mac(&self, nonce: &[u8; 16], ciphertext: &[u8]) -> [u8; 16] {
        let aes = aes::Aes128::new(&self.mac_k.into());
        let mut s = aes::Block::from(*nonce);
        aes.encrypt_block(&mut s);
        let mut pkey = [0u8; 32];
        pkey[..16].copy_from_slice(&self.mac_r);
        pkey[16..].copy_from_slice(&s);
        let p = poly1305::Poly1305::new(&pkey.into());
        p.compute_unpadded(ciphertext).into()
    }

    /// Encrypts `plaintext`, appending `IV || ciphertext || MAC` to `out`.
    pub fn encrypt_into(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut iv = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut iv);
        let start = out.len();
        out.reserve(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plaintext);
        let ct = &mut out[start + IV_LEN..];
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(ct);
        let tag = self.mac(&iv, ct);
        out.extend_from_slice(&tag);
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        self.encrypt_into(plaintext, &mut out);
        out
    }

    /// Verifies the MAC (in constant time), then decrypts.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, MacError> {
        if data.len() < OVERHEAD {
            return Err(MacError);
        }
        let (iv, rest) = data.split_at(IV_LEN);
        let (ct, tag) = rest.split_at(rest.len() - MAC_LEN);
        let iv: [u8; 16] = iv.try_into().map_err(|_| MacError)?;
        let want = self.mac(&iv, ct);
        if !bool::from(want.ct_eq(tag)) {
            return Err(MacError);
        }
        let mut pt = ct.to_vec();
        Aes256Ctr::new(&self.encrypt.into(), &iv.into()).apply_keystream(&mut pt);
        Ok(pt)
    }

    pub fn to_json(&self) -> MasterKeyJson {
        MasterKeyJson {
            mac: MacJson {
                k: B64.encode(self.mac_k),
                r: B64.encode(self.mac_r),
            },
            encrypt: B64.encode(self.encrypt),
        }
    }

    pub fn from_json(j: &MasterKeyJson) -> Option<Key> {
        let enc = B64.decode(&j.encrypt).ok()?;
        let k = B64.decode(&j.mac.k).ok()?;
        let r = B64.decode(&j.mac.r).ok()?;
        if enc.len() != 32 || k.len() != 16 || r.len() != 16 {
            return None;
        }
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&enc);
        b[32..48].copy_from_slice(&k);
        b[48..].copy_from_slice(&r);
        Some(Key::from_bytes(&b))
    }
}

/// The master key as restic stores it inside a key file's `data`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MasterKeyJson {
    pub mac: MacJson,
    pub encrypt: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct MacJson {
    pub k: String,
    pub r: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_overhead() {
        let k = Key::random();
        for len in [0usize, 1, 15, 16, 17, 1000, 70_000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let ct = k.encrypt(&pt);
            assert_eq!(ct.len(), len + OVERHEAD);
            assert_eq!(k.decrypt(&ct).unwrap(), pt);
        }
    }

    #[test]
    fn tamper_and_wrong_key_detected() {
        let k = Key::random();
        let ct = k.encrypt(b"secret data here");
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                k.decrypt(&bad),
                Err(MacError),
                "flip at byte {i} undetected"
            );
        }
        assert_eq!(Key::random().decrypt(&ct), Err(MacError));
        assert_eq!(k.decrypt(&ct[..31]), Err(MacError));
    }

    /// Poly1305-AES test vector from Bernstein's paper (appendix B, 2nd
    /// example): k, r, nonce, message -> tag. restic's MAC is exactly this.
    #[test]
    fn poly1305_aes_paper_vector() {
        let hexd = |s: &str| hex::decode(s).unwrap();
        let mut b = [0u8; 64];
        b[32..48].copy_from_slice(&hexd("ec074c835580741701425b623235add6"));
        b[48..].copy_from_slice(&hexd("851fc40c3467ac0be05cc20404f3f700"));
        let key = Key::from_bytes(&b);
        let nonce: [u8; 16] = hexd("fb447350c4e868c52ac3275cf9d4327e").try_into().unwrap();
        let tag = key.mac(&nonce, &hexd("f3f6"));
        assert_eq!(hex::encode(tag), "f4c633c3044fc145f84f335cb81953de");
    }

    #[test]
    fn master_key_json_roundtrip() {
        let k = Key::random();
        let j = serde_json::to_string(&k.to_json()).unwrap();
        let back = Key::from_json(&serde_json::from_str(&j).unwrap()).unwrap();
        let ct = k.encrypt(b"x");
        assert_eq!(back.decrypt(&ct).unwrap(), b"x");
    }
}
