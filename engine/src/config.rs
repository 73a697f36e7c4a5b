//! The repository `config` file: format version, repository id and the Rabin
//! chunker polynomial, encrypted with the master key (never compressed, since
//! the version is unknown until it is read).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::Id;

/// The decrypted `config` file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub version: u32,
    pub id: Id,
    #[serde(serialize_with = "ser_pol", deserialize_with = "de_pol")]
    pub chunker_polynomial: u64,
}

fn ser_pol<S: Serializer>(p: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{p:x}"))
}

fn de_pol<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
}

impl Config {
    /// A fresh version-2 config with a random id and polynomial.
    pub fn new_v2() -> Config {
        Config {
            version: 2,
            id: Id::random(),
            chunker_polynomial: random_polynomial(),
        }
    }
}

// Polynomials over GF(2), bit i = coefficient of x^i.

fn deg(p: u128) -> i32 {
    127 - p.leading_zeros() as i32
}

fn pmod(mut a: u128, m: u128) -> u128 {
    let dm = deg(m);
    while a != 0 && deg(a) >= dm {
        a ^= m << (deg(a) - dm);
    }
    a
}

fn mulmod(a: u128, b: u128, m: u128) -> u128 {
    let (mut a, mut b, mut r) = (pmod(a, m), b, 0u128);
    while b != 0 {
        if b & 1 == 1 {
            r ^= a;
        }
        b >>= 1;
        a = pmod(a << 1, m);
    }
    r
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        let t = pmod(a, b);
        a = b;
        b = t;
    }
    a
}

/// Ben-Or's irreducibility test: `f` is irreducible iff
/// gcd(x^(2^i) - x mod f, f) = 1 for all i in 1..=deg(f)/2.
pub fn is_irreducible(f: u64) -> bool {
    let f = f as u128;
    let d = deg(f);
    if d < 1 {
        return false;
    }
    let mut xp = 2u128; // x
    for _ in 1..=d / 2 {
        xp = mulmod(xp, xp, f); // x^(2^i)
        if gcd(f, xp ^ 2) != 1 {
            return false;
        }
    }
    true
}

/// A random irreducible polynomial of degree 53, chosen the way restic does
/// (random low bits, bit 53 and bit 0 set), so chunk boundaries match restic's
/// distribution.
pub fn random_polynomial() -> u64 {
    loop {
        let mut f = rand::random::<u64>();
        f &= (1 << 54) - 1;
        f |= (1 << 53) | 1;
        if is_irreducible(f) {
            return f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_default_polynomial_is_irreducible() {
        // restic's test polynomial and the one in design.rst.
        assert!(is_irreducible(0x3DA3358B4DC173));
        assert!(is_irreducible(0x25b468838dcb75));
        // x^2 + 1 = (x+1)^2, x^4+x^2 = x^2(x^2+1)
        assert!(!is_irreducible(0b101));
        assert!(!is_irreducible(0b10100));
        assert!(is_irreducible(0b111)); // x^2+x+1
    }

    #[test]
    fn random_polynomial_has_degree_53() {
        let p = random_polynomial();
        assert_eq!(63 - p.leading_zeros(), 53);
        assert!(is_irreducible(p));
    }

    #[test]
    fn json_matches_restic() {
        let c: Config = serde_json::from_str(
            r#"{"version":2,"id":"5956a3f67a6230d4a92cefb29529f10196c7d92582ec305fd71ff6d331d6271b","chunker_polynomial":"25b468838dcb75"}"#,
        )
        .unwrap();
        assert_eq!(c.chunker_polynomial, 0x25b468838dcb75);
        let j = serde_json::to_string(&c).unwrap();
        assert!(j.contains(r#""chunker_polynomial":"25b468838dcb75""#));
    }
}
