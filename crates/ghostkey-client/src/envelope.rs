//! Envelope encryption of documents: each document under its own fresh key
//! (XSalsa20-Poly1305), that key sealed to each recipient's user public key taken from a
//! verified chain, the whole signed by the author's device.
//!
//! Encoding, version 1 (`bytes` = u16 length then the bytes; `long` = u32 length):
//!
//! ```text
//! "GKEV" 0x01 author_user:bytes author_device:[32] count:u16 (recipient:bytes key:bytes)*
//! nonce:[24] ciphertext:long signature:[64]
//! ```
//!
//! The signature is Ed25519 by the author device over `"ghostkey/envelope/v1\0"` and every
//! byte before it.

use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use ghostkey_proto::chain::ChainState;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::chain::{open_sealed, seal_to};
use crate::device::{DeviceKeys, UserKeys};

const MAGIC: &[u8; 4] = b"GKEV";
const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"ghostkey/envelope/v1\0";

/// An encrypted, signed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The author's user id.
    pub author_user: String,
    /// The authoring device's Ed25519 key.
    pub author_device: [u8; 32],
    /// Each recipient's user id and the document key sealed to their user key.
    pub recipients: Vec<(String, Vec<u8>)>,
    /// The nonce of the document's encryption.
    pub nonce: [u8; 24],
    /// The document, encrypted.
    pub ciphertext: Vec<u8>,
    /// The author device's signature.
    pub signature: [u8; 64],
}

/// Why an envelope cannot be made or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not an envelope.
    #[error("malformed envelope")]
    Malformed,
    /// The reader is not among the recipients.
    #[error("this user is not a recipient")]
    NotARecipient,
    /// The author device is not a valid device of the author's verified chain.
    #[error("the author device is not a valid device of the author's chain")]
    UnknownAuthor,
    /// The signature does not verify (the envelope was altered, or forged).
    #[error("the envelope's signature does not verify")]
    BadSignature,
    /// The key or the document does not decrypt.
    #[error("the envelope does not decrypt")]
    Decrypt,
    /// Sealing failed, or too many recipients.
    #[error("cannot build the envelope")]
    Build,
}

fn put(out: &mut Vec<u8>, b: &[u8]) -> Result<(), EnvelopeError> {
    out.extend_from_slice(
        &u16::try_from(b.len())
            .map_err(|_| EnvelopeError::Build)?
            .to_be_bytes(),
    );
    out.extend_from_slice(b);
    Ok(())
}

impl Envelope {
    /// Encrypts `document` for `recipients` (user id and verified chain of each; include
    /// the author's own to read it back), signed by the author's device.
    pub fn seal(
        author_user: &str,
        author_device: &DeviceKeys,
        recipients: &[&ChainState],
        document: &[u8],
    ) -> Result<Envelope, EnvelopeError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = XSalsa20Poly1305::new(key.as_ref().into())
            .encrypt(Nonce::from_slice(&nonce), document)
            .map_err(|_| EnvelopeError::Build)?;
        let recipients = recipients
            .iter()
            .map(|chain| {
                seal_to(&chain.user_public, key.as_ref())
                    .map(|sealed| (chain.user_id.clone(), sealed))
                    .map_err(|_| EnvelopeError::Build)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut envelope = Envelope {
            author_user: author_user.to_owned(),
            author_device: author_device.signing_public(),
            recipients,
            nonce,
            ciphertext,
            signature: [0u8; 64],
        };
        let input = envelope.signing_input()?;
        envelope.signature = author_device.signing_key().sign(&input).to_bytes();
        Ok(envelope)
    }

    fn body(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        put(&mut out, self.author_user.as_bytes())?;
        out.extend_from_slice(&self.author_device);
        out.extend_from_slice(
            &u16::try_from(self.recipients.len())
                .map_err(|_| EnvelopeError::Build)?
                .to_be_bytes(),
        );
        for (user, key) in &self.recipients {
            put(&mut out, user.as_bytes())?;
            put(&mut out, key)?;
        }
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(
            &u32::try_from(self.ciphertext.len())
                .map_err(|_| EnvelopeError::Build)?
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.ciphertext);
        Ok(out)
    }

    fn signing_input(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut input = DOMAIN.to_vec();
        input.extend_from_slice(&self.body()?);
        Ok(input)
    }

    /// The encoding.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = self.body()?;
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Parses an encoding.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC || r.take(1)?[0] != VERSION {
            return Err(EnvelopeError::Malformed);
        }
        let author_user = r.string()?;
        let author_device = r.array()?;
        let count = u16::from_be_bytes(r.array()?);
        let mut recipients = Vec::with_capacity(usize::from(count).min(1024));
        for _ in 0..count {
            let user = r.string()?;
            recipients.push((user, r.bytes()?.to_vec()));
        }
        let nonce = r.array()?;
        let len = u32::from_be_bytes(r.array()?) as usize;
        let ciphertext = r.take(len)?.to_vec();
        let signature = r.array()?;
        if !r.0.is_empty() {
            return Err(EnvelopeError::Malformed);
        }
        Ok(Envelope {
            author_user,
            author_device,
            recipients,
            nonce,
            ciphertext,
            signature,
        })
    }

    /// Opens the envelope as `reader` (user id and user keys), after checking that its
    /// author device is a valid device of `author_chain` (verified by the caller) and that
    /// the signature holds.
    pub fn open(
        &self,
        reader: &str,
        reader_keys: &UserKeys,
        author_chain: &ChainState,
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        if author_chain.user_id != self.author_user
            || author_chain.valid_device(&self.author_device).is_none()
        {
            return Err(EnvelopeError::UnknownAuthor);
        }
        let key = VerifyingKey::from_bytes(&self.author_device)
            .map_err(|_| EnvelopeError::UnknownAuthor)?;
        key.verify_strict(
            &self.signing_input()?,
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| EnvelopeError::BadSignature)?;
        let (_, sealed) = self
            .recipients
            .iter()
            .find(|(user, _)| user == reader)
            .ok_or(EnvelopeError::NotARecipient)?;
        let doc_key =
            open_sealed(reader_keys.secret().as_bytes(), sealed).ok_or(EnvelopeError::Decrypt)?;
        let doc_key: [u8; 32] = doc_key
            .as_slice()
            .try_into()
            .map_err(|_| EnvelopeError::Decrypt)?;
        let doc_key = Zeroizing::new(doc_key);
        XSalsa20Poly1305::new(doc_key.as_ref().into())
            .decrypt(Nonce::from_slice(&self.nonce), self.ciphertext.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| EnvelopeError::Decrypt)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.0.len() < n {
            return Err(EnvelopeError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        self.take(N)?
            .try_into()
            .map_err(|_| EnvelopeError::Malformed)
    }
    fn bytes(&mut self) -> Result<&'a [u8], EnvelopeError> {
        let len = u16::from_be_bytes(self.array()?);
        self.take(usize::from(len))
    }
    fn string(&mut self) -> Result<String, EnvelopeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| EnvelopeError::Malformed)
    }
}
