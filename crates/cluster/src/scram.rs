//! The client side of SCRAM-SHA-256/512 (RFC 5802, RFC 7677), as Kafka speaks it: no
//! channel binding, the server's signature checked before the connection is used.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use crate::config::Mechanism;

/// More PBKDF2 iterations than any sane server asks for: a hostile one could otherwise make
/// the client spin (Kafka allows 4,096 to 16,384).
const MAX_ITERATIONS: u32 = 1_000_000;

/// Fewer iterations than Kafka's minimum: a man in the middle asking for fewer would make
/// the client's proof cheap to brute-force offline (Kafka's own client refuses them too).
const MIN_ITERATIONS: u32 = 4096;

/// One SCRAM exchange.
pub(crate) struct Client {
    mechanism: Mechanism,
    password: String,
    first_bare: String,
    nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("mechanism", &self.mechanism)
            .field("first_bare", &self.first_bare)
            .finish_non_exhaustive()
    }
}

fn mac(mechanism: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => {
            let mut m = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn hash(mechanism: Mechanism, data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => Sha512::digest(data).to_vec(),
        _ => Sha256::digest(data).to_vec(),
    }
}

/// PBKDF2 with the mechanism's HMAC and one block (`Hi` in RFC 5802).
fn salted_password(mechanism: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = mac(mechanism, password, &block);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = mac(mechanism, password, &u);
        for (o, x) in out.iter_mut().zip(&u) {
            *o ^= x;
        }
    }
    out
}

/// `=` and `,` escaped as a SCRAM `saslname`.
fn sasl_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

impl Client {
    /// A new exchange with a random nonce.
    pub(crate) fn new(mechanism: Mechanism, username: &str, password: &str) -> Client {
        let nonce: [u8; 24] = rand::random();
        Client::with_nonce(mechanism, username, password, &STANDARD.encode(nonce))
    }

    fn with_nonce(mechanism: Mechanism, username: &str, password: &str, nonce: &str) -> Client {
        Client {
            mechanism,
            password: password.to_owned(),
            first_bare: format!("n={},r={nonce}", sasl_name(username)),
            nonce: nonce.to_owned(),
            server_signature: None,
        }
    }

    /// The client-first message.
    pub(crate) fn first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// The client-final message answering `server_first`.
    pub(crate) fn last(&mut self, server_first: &[u8]) -> Result<String, String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "the server's SCRAM challenge is not UTF-8".to_owned())?;
        let field = |name: char| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(name).and_then(|f| f.strip_prefix('=')))
                .ok_or_else(|| format!("the server's SCRAM challenge has no `{name}`"))
        };
        let nonce = field('r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the server's SCRAM nonce does not extend ours".into());
        }
        let salt = STANDARD
            .decode(field('s')?)
            .map_err(|_| "the server's SCRAM salt is not base64".to_owned())?;
        let iterations: u32 = field('i')?
            .parse()
            .ok()
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .ok_or_else(|| "the server's SCRAM iteration count is out of bounds".to_owned())?;
        let m = self.mechanism;
        let salted = salted_password(m, self.password.as_bytes(), &salt, iterations);
        let client_key = mac(m, &salted, b"Client Key");
        let stored_key = hash(m, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = mac(m, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = mac(m, &salted, b"Server Key");
        self.server_signature = Some(mac(m, &server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server-final message: the server proves it knows the password too.
    pub(crate) fn verify(&self, server_last: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_last).unwrap_or("");
        if let Some(error) = text.strip_prefix("e=") {
            return Err(format!("the server refused the SCRAM proof: {error}"));
        }
        let given = text
            .split(',')
            .find_map(|f| f.strip_prefix("v="))
            .and_then(|v| STANDARD.decode(v).ok());
        match (&self.server_signature, given) {
            (Some(expected), Some(given)) if *expected == given => Ok(()),
            _ => Err("the server's SCRAM signature is wrong: it does not know the password".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3's SCRAM-SHA-256 example, byte for byte.
    #[test]
    fn the_rfc_7677_exchange() {
        let mut client = Client::with_nonce(
            Mechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(client.first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let last = client
            .last(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(client.verify(b"v=AAAA").is_err());
        assert!(client.verify(b"e=invalid-proof").is_err());
    }

    #[test]
    fn a_hostile_challenge_is_refused() {
        let mut client = Client::with_nonce(Mechanism::ScramSha512, "u=,x", "hunter2", "abc");
        assert_eq!(client.first(), "n,,n=u=3D=2Cx,r=abc");
        assert!(
            !format!("{client:?}").contains("hunter2"),
            "no password in Debug"
        );
        for challenge in [
            &b"r=zzz,s=AAAA,i=4096"[..],
            b"r=abc,s=AAAA,i=4096",
            b"r=abcd,s=!!,i=4096",
            b"r=abcd,s=AAAA,i=4000000000",
            b"r=abcd,s=AAAA,i=1",
            b"r=abcd,s=AAAA",
            b"\xff",
        ] {
            assert!(client.last(challenge).is_err(), "{challenge:?}");
        }
    }
}
