//! Passkey (WebAuthn) ceremonies, verified by Ghostkey itself with webauthn-rs. No I/O: the
//! caller keeps the ceremony state (server-side, single use, with the challenge it belongs
//! to) and the stored credential (inside the method's secret, encrypted at rest).
//!
//! What it fixes:
//! - A relying party is an app's: its RP id (a registrable domain, or `localhost`) and the
//!   app's allowed web origins, each of whose hosts must be the RP id or a subdomain of it
//!   ([`relying_party`]).
//! - User verification is required in both ceremonies (webauthn-rs's passkey ceremonies
//!   force it): a response without the UV flag is refused, so an assertion always means the
//!   user was there and unlocked the authenticator, not merely that a key was touched.
//! - The credential is Ghostkey's own: made by Ghostkey's registration ceremony with a
//!   fresh random user handle (not the app's user id, nor any handle of the app's login
//!   passkey), and a later assertion is accepted only for that credential id.
//! - The signature counter and the backup flags are kept; a counter that does not move
//!   forward (when either side is non-zero) is [`Refusal::Cloned`].

use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid,
    Webauthn, WebauthnBuilder, WebauthnError,
};

/// Longest name a user may give their passkey (shown masked in method lists).
pub const MAX_NAME_LEN: usize = 64;

/// Why a ceremony's response was refused. Every refusal changes nothing but the counted
/// failure; none names the stored credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The response does not verify: bad signature, wrong origin or RP id, user
    /// verification missing, another credential, a response for another challenge, or a
    /// malformed one. The reason is for logs, never for the caller.
    Rejected(&'static str),
    /// The signature counter did not move forward: two copies of the credential's private
    /// key may exist (a cloned authenticator).
    Cloned,
}

/// Checks an RP id: lowercase ASCII host name labels (letters, digits, hyphens), not an IP
/// address, at most 253 characters. Returns the normal (lowercase) form.
pub fn parse_rp_id(text: &str) -> Result<String, String> {
    let id = text.trim().to_ascii_lowercase();
    if id.is_empty() || id.len() > 253 {
        return Err("the RP id must be a host name of 1 to 253 characters".into());
    }
    if id.parse::<std::net::IpAddr>().is_ok() || id.starts_with('[') {
        return Err("the RP id must be a domain name, not an IP address".into());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !id.split('.').all(label_ok) {
        return Err(format!(
            "`{text}` is not a domain name (labels of letters, digits and hyphens, no scheme, port or path)"
        ));
    }
    if id.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("the RP id must be a domain name, not an IP address".into());
    }
    Ok(id)
}

/// Whether an allowed origin (normal form, `scheme://host[:port]`) may use `rp_id`: its
/// host is the RP id or a subdomain of it.
pub fn origin_fits(rp_id: &str, origin: &str) -> bool {
    let Ok(url) = Url::parse(origin) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    host == rp_id
        || host
            .strip_suffix(rp_id)
            .is_some_and(|prefix| prefix.ends_with('.'))
}

/// The WebAuthn relying party of an app: `rp_id` (checked with [`parse_rp_id`]), a name
/// shown by authenticators, and the app's allowed origins (at least one; each must fit the
/// RP id).
pub fn relying_party(rp_id: &str, rp_name: &str, origins: &[String]) -> Result<Webauthn, String> {
    let rp_id = parse_rp_id(rp_id)?;
    let Some(first) = origins.first() else {
        return Err("the app allows no web origin: a passkey is made and used from one".into());
    };
    let mut urls = Vec::with_capacity(origins.len());
    for origin in origins {
        if !origin_fits(&rp_id, origin) {
            return Err(format!(
                "the origin {origin} is neither {rp_id} nor a subdomain of it"
            ));
        }
        urls.push(Url::parse(origin).map_err(|e| format!("the origin {origin}: {e}"))?);
    }
    let first = Url::parse(first).map_err(|e| format!("the origin {first}: {e}"))?;
    let mut builder = WebauthnBuilder::new(&rp_id, &first)
        .map_err(|e| format!("relying party {rp_id}: {e}"))?
        .rp_name(rp_name);
    for url in &urls[1..] {
        builder = builder.append_allowed_origin(url);
    }
    builder
        .build()
        .map_err(|e| format!("relying party {rp_id}: {e}"))
}

/// A registration ceremony started: the creation options for the client (the JSON
/// webauthn-rs produces, `{"publicKey": …}`, passed on as it is) and the state to keep.
pub struct RegistrationStarted {
    /// `CreationChallengeResponse` as JSON.
    pub options: serde_json::Value,
    /// The ceremony state, serialised (keep server-side, use once).
    pub state: Vec<u8>,
}

/// Starts a registration. The user handle is fresh and random, so that the credential is
/// Ghostkey's own and links to nothing of the app's; `exclude` lists the credential ids the
/// user already has with Ghostkey (an authenticator refuses to make a second one).
pub fn start_registration(
    rp: &Webauthn,
    user_label: &str,
    exclude: Vec<Vec<u8>>,
) -> Result<RegistrationStarted, String> {
    let handle = Uuid::from_bytes(rand::random());
    let exclude = (!exclude.is_empty()).then_some(exclude);
    let (ccr, state): (CreationChallengeResponse, PasskeyRegistration) = rp
        .start_passkey_registration(handle, user_label, user_label, exclude)
        .map_err(|e| format!("start registration: {e}"))?;
    Ok(RegistrationStarted {
        options: serde_json::to_value(&ccr).map_err(|e| e.to_string())?,
        state: serde_json::to_vec(&state).map_err(|e| e.to_string())?,
    })
}

/// What a passkey method keeps (inside its encrypted secret): the credential (id, public
/// key, algorithm, and webauthn-rs's own copy of the counter and flags), the counter and
/// backup flags as last seen, the AAGUID and the name the user gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// The credential as webauthn-rs keeps it.
    pub passkey: Passkey,
    /// The signature counter last accepted.
    pub counter: u32,
    /// Whether the authenticator may back the credential up (sync it).
    pub backup_eligible: bool,
    /// Whether the credential is backed up (synced) now.
    pub backup_state: bool,
    /// The authenticator model's AAGUID (all zeros when it does not say).
    pub aaguid: [u8; 16],
    /// The name the user gave, if any.
    pub name: Option<String>,
}

/// The plaintext of a passkey method's secret (JSON, encrypted at rest): while the method
/// is pending, only the name the user gave; once its registration ceremony succeeded, the
/// credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum MethodSecret {
    /// Added, not registered yet.
    Pending {
        /// The name the user gave, if any.
        name: Option<String>,
    },
    /// Registered: the credential.
    Registered(Box<Stored>),
}

impl MethodSecret {
    /// The plaintext to encrypt.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| format!("a passkey method secret: {e}"))
    }

    /// Reads a plaintext written by [`MethodSecret::encode`].
    pub fn decode(plain: &[u8]) -> Result<MethodSecret, String> {
        serde_json::from_slice(plain)
            .map_err(|_| "a stored passkey method secret is malformed".into())
    }

    /// How the method is shown.
    pub fn masked(&self) -> String {
        match self {
            MethodSecret::Pending { name: Some(name) } => named(name),
            MethodSecret::Pending { name: None } => "passkey".to_owned(),
            MethodSecret::Registered(stored) => stored.masked(),
        }
    }

    /// The name the user gave, if any.
    pub fn name(&self) -> Option<String> {
        match self {
            MethodSecret::Pending { name } => name.clone(),
            MethodSecret::Registered(stored) => stored.name.clone(),
        }
    }
}

/// How a passkey the user named is shown: `passkey “name”`.
fn named(name: &str) -> String {
    format!("passkey \u{201c}{name}\u{201d}")
}

/// What the store keeps to find a credential id already registered (any user, any app): a
/// hash, since the id itself stays inside the encrypted secret.
pub fn credential_hash(credential_id: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"ghostkey passkey credential v1\0");
    hash.update(credential_id);
    hash.finalize().into()
}

impl Stored {
    /// The plaintext of the method secret (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a method secret written by [`Stored::encode`].
    pub fn decode(plain: &[u8]) -> Result<Stored, String> {
        serde_json::from_slice(plain)
            .map_err(|_| "a stored passkey method secret is malformed".into())
    }

    /// The credential id.
    pub fn credential_id(&self) -> &[u8] {
        self.passkey.cred_id().as_ref()
    }

    /// How the method is shown: the user's name for it, else the authenticator model
    /// (a few well-known ones by name, the others by AAGUID).
    pub fn masked(&self) -> String {
        match (&self.name, model_name(&self.aaguid)) {
            (Some(name), _) => named(name),
            (None, Some(model)) => format!("passkey ({model})"),
            (None, None) => format!("passkey (AAGUID {})", Uuid::from_bytes(self.aaguid)),
        }
    }
}

/// Well-known passkey providers by the AAGUID their authenticators report (from the
/// providers' published values; an authenticator that reports none, all zeros, is shown by
/// AAGUID). Display only: an AAGUID is not attested, so nothing is decided on it.
const MODELS: &[(&str, &str)] = &[
    (
        "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4",
        "Google Password Manager",
    ),
    ("adce0002-35bc-c60a-648b-0b25f1f05503", "Chrome on Mac"),
    ("fbfc3007-154e-4ecc-8c0b-6e020557d7bd", "iCloud Keychain"),
    ("08987058-cadc-4b81-b6e1-30de50dcbe96", "Windows Hello"),
    ("9ddd1817-af5a-4672-a2b9-3e3dd95000a9", "Windows Hello"),
    ("6028b017-b1d4-4c02-b4b3-afcdafc96bb2", "Windows Hello"),
    ("bada5566-a7aa-401f-bd96-45619a55120d", "1Password"),
    ("d548826e-79b4-db40-a3d8-11116f7e8349", "Bitwarden"),
    ("531126d6-e717-415c-9320-3d9aa6981239", "Dashlane"),
];

/// The name of a well-known authenticator model.
fn model_name(aaguid: &[u8; 16]) -> Option<&'static str> {
    let text = Uuid::from_bytes(*aaguid).to_string();
    MODELS
        .iter()
        .find(|(id, _)| *id == text)
        .map(|(_, name)| *name)
}

/// Checks a name the user gives their passkey: 1 to [`MAX_NAME_LEN`] characters, no
/// control characters.
pub fn parse_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "a passkey's name has 1 to {MAX_NAME_LEN} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a passkey's name has no control characters".into());
    }
    Ok(name.to_owned())
}

/// Finishes a registration: `response` is the client's `RegisterPublicKeyCredential` JSON,
/// `state` what [`start_registration`] returned. Whether the credential id is already
/// another method's is the caller's check (it needs the store).
pub fn finish_registration(
    rp: &Webauthn,
    response: &serde_json::Value,
    state: &[u8],
    name: Option<String>,
) -> Result<Stored, Refusal> {
    let state: PasskeyRegistration = serde_json::from_slice(state)
        .map_err(|_| Refusal::Rejected("the ceremony state is unreadable"))?;
    let reg: RegisterPublicKeyCredential = serde_json::from_value(response.clone())
        .map_err(|_| Refusal::Rejected("not a RegisterPublicKeyCredential"))?;
    let aaguid = aaguid_of(&reg.response.attestation_object).unwrap_or([0; 16]);
    let passkey = rp
        .finish_passkey_registration(&reg, &state)
        .map_err(|e| refusal(&e))?;
    let (backup_eligible, backup_state) = flags_of(&reg.response.attestation_object);
    Ok(Stored {
        counter: counter_of(&reg.response.attestation_object),
        backup_eligible,
        backup_state,
        aaguid,
        name,
        passkey,
    })
}

/// An authentication ceremony started: the request options for the client
/// (`RequestChallengeResponse` JSON, `{"publicKey": …}`, as it is) and the state to keep.
pub struct AuthenticationStarted {
    /// `RequestChallengeResponse` as JSON.
    pub options: serde_json::Value,
    /// The ceremony state, serialised (keep server-side, use once).
    pub state: Vec<u8>,
}

/// Starts an authentication with the method's one credential.
pub fn start_authentication(
    rp: &Webauthn,
    stored: &Stored,
) -> Result<AuthenticationStarted, String> {
    let (rcr, state): (RequestChallengeResponse, PasskeyAuthentication) = rp
        .start_passkey_authentication(std::slice::from_ref(&stored.passkey))
        .map_err(|e| format!("start authentication: {e}"))?;
    Ok(AuthenticationStarted {
        options: serde_json::to_value(&rcr).map_err(|e| e.to_string())?,
        state: serde_json::to_vec(&state).map_err(|e| e.to_string())?,
    })
}

/// Finishes an authentication: `response` is the client's `PublicKeyCredential` JSON.
/// On success `stored` holds the new counter and backup flags (persist it).
pub fn finish_authentication(
    rp: &Webauthn,
    response: &serde_json::Value,
    state: &[u8],
    stored: &mut Stored,
) -> Result<(), Refusal> {
    let state: PasskeyAuthentication = serde_json::from_slice(state)
        .map_err(|_| Refusal::Rejected("the ceremony state is unreadable"))?;
    let cred: PublicKeyCredential = serde_json::from_value(response.clone())
        .map_err(|_| Refusal::Rejected("not a PublicKeyCredential"))?;
    let result = rp
        .finish_passkey_authentication(&cred, &state)
        .map_err(|e| refusal(&e))?;
    // webauthn-rs compares the counter with the copy in the ceremony state, taken when the
    // ceremony started; the stored counter may have moved since (another ceremony finished
    // in between), so it is compared again with what is stored now.
    if (result.counter() > 0 || stored.counter > 0) && result.counter() <= stored.counter {
        return Err(Refusal::Cloned);
    }
    if stored.passkey.update_credential(&result).is_none() {
        return Err(Refusal::Rejected("another credential"));
    }
    stored.counter = stored.counter.max(result.counter());
    stored.backup_state = result.backup_state();
    stored.backup_eligible |= result.backup_eligible();
    Ok(())
}

fn refusal(e: &WebauthnError) -> Refusal {
    match e {
        WebauthnError::CredentialPossibleCompromise => Refusal::Cloned,
        WebauthnError::UserNotVerified => Refusal::Rejected("user verification missing"),
        WebauthnError::InvalidRPOrigin => Refusal::Rejected("wrong origin"),
        WebauthnError::InvalidRPIDHash => Refusal::Rejected("wrong RP id"),
        WebauthnError::MismatchedChallenge => Refusal::Rejected("another challenge's response"),
        WebauthnError::AuthenticationFailure => Refusal::Rejected("bad signature"),
        WebauthnError::CredentialNotFound => Refusal::Rejected("another credential"),
        _ => Refusal::Rejected("the response does not verify"),
    }
}

/// The `authData` byte string of a CBOR attestation object (`{"fmt", "attStmt",
/// "authData"}`), found by its key. Enough for display fields; the ceremony's own parse
/// is what decides.
fn auth_data(attestation_object: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\x68authData";
    let at = attestation_object
        .windows(KEY.len())
        .position(|w| w == KEY)?
        + KEY.len();
    let rest = attestation_object.get(at..)?;
    let (len, skip) = match *rest.first()? {
        b @ 0x40..=0x57 => (usize::from(b - 0x40), 1),
        0x58 => (usize::from(*rest.get(1)?), 2),
        0x59 => (
            usize::from(u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?])),
            3,
        ),
        _ => return None,
    };
    rest.get(skip..skip + len)
}

/// The AAGUID in an attestation object's authenticator data (bytes 37..53).
fn aaguid_of(attestation_object: &[u8]) -> Option<[u8; 16]> {
    auth_data(attestation_object)?.get(37..53)?.try_into().ok()
}

/// The signature counter of the registration (bytes 33..37, big-endian; 0 when absent).
fn counter_of(attestation_object: &[u8]) -> u32 {
    auth_data(attestation_object)
        .and_then(|d| d.get(33..37))
        .and_then(|c| c.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// The backup-eligible (BE, 0x08) and backup-state (BS, 0x10) flags of the registration.
fn flags_of(attestation_object: &[u8]) -> (bool, bool) {
    match auth_data(attestation_object).and_then(|d| d.get(32)) {
        Some(flags) => (flags & 0x08 != 0, flags & 0x10 != 0),
        None => (false, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webauthn_authenticator_rs::prelude::Url as AuthUrl;
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;
    use webauthn_authenticator_rs::softtoken::SoftToken;
    use webauthn_authenticator_rs::{AuthenticatorBackend, WebauthnAuthenticator};

    const ORIGIN: &str = "http://localhost:8443";

    fn rp() -> Webauthn {
        relying_party("localhost", "Test app recovery", &[ORIGIN.to_owned()]).unwrap()
    }

    fn url(origin: &str) -> AuthUrl {
        AuthUrl::parse(origin).unwrap()
    }

    fn register(rp: &Webauthn, auth: &mut impl WebauthnAuthenticator) -> Stored {
        let started = start_registration(rp, "Ghostkey recovery", vec![]).unwrap();
        let ccr = serde_json::from_value(started.options).unwrap();
        let reg = auth.do_registration(url(ORIGIN), ccr).unwrap();
        let response = serde_json::to_value(&reg).unwrap();
        finish_registration(rp, &response, &started.state, None).unwrap()
    }

    fn assertion(
        rp: &Webauthn,
        auth: &mut impl WebauthnAuthenticator,
        stored: &Stored,
        origin: &str,
    ) -> (serde_json::Value, Vec<u8>) {
        let started = start_authentication(rp, stored).unwrap();
        let rcr = serde_json::from_value(started.options).unwrap();
        let cred = auth.do_authentication(url(origin), rcr).unwrap();
        (serde_json::to_value(&cred).unwrap(), started.state)
    }

    #[test]
    fn rp_ids_and_origins() {
        assert_eq!(parse_rp_id("Example.ORG").unwrap(), "example.org");
        assert_eq!(parse_rp_id("localhost").unwrap(), "localhost");
        for bad in [
            "",
            "127.0.0.1",
            "[::1]",
            "https://example.org",
            "example.org:443",
            "example.org/x",
            "-a.org",
            "a..org",
        ] {
            assert!(parse_rp_id(bad).is_err(), "{bad}");
        }
        assert!(origin_fits("example.org", "https://example.org"));
        assert!(origin_fits("example.org", "https://app.example.org:8443"));
        assert!(!origin_fits("example.org", "https://badexample.org"));
        assert!(!origin_fits("example.org", "https://example.org.evil.net"));
        assert!(!origin_fits("app.example.org", "https://example.org"));
        assert!(relying_party("example.org", "A", &[]).is_err());
        assert!(relying_party(
            "example.org",
            "A",
            &["https://example.org".into(), "https://evil.net".into()]
        )
        .is_err());
        assert!(relying_party(
            "example.org",
            "A",
            &["https://example.org".into(), "https://m.example.org".into()]
        )
        .is_ok());
    }

    #[test]
    fn display_fields_are_read_from_the_attestation_objects_authenticator_data() {
        let mut data = vec![0xAA; 32]; // rpIdHash
        data.push(0x5D); // UP, UV, BE, BS, AT
        data.extend_from_slice(&7u32.to_be_bytes());
        data.extend(1..=16u8); // AAGUID
        data.extend_from_slice(&[0, 2, 9, 9]); // a credential id of 2 bytes, then more
        let mut object = vec![0xA3, 0x63];
        object.extend_from_slice(b"fmt");
        object.push(0x64);
        object.extend_from_slice(b"none");
        object.push(0x67);
        object.extend_from_slice(b"attStmt");
        object.push(0xA0);
        object.push(0x68);
        object.extend_from_slice(b"authData");
        object.push(0x58);
        object.push(u8::try_from(data.len()).unwrap());
        object.extend_from_slice(&data);
        let expected: Vec<u8> = (1..=16).collect();
        assert_eq!(aaguid_of(&object).unwrap().to_vec(), expected);
        assert_eq!(counter_of(&object), 7);
        assert_eq!(flags_of(&object), (true, true));
        // Truncated or foreign bytes give nothing, not a panic.
        assert_eq!(aaguid_of(&object[..object.len() - 30]), None);
        assert_eq!(counter_of(b"junk"), 0);
        assert_eq!(flags_of(b"\x68authData\x59"), (false, false));
    }

    #[test]
    fn a_registered_passkey_authenticates_and_its_stored_form_round_trips() {
        let rp = rp();
        let mut auth = SoftPasskey::new(true);
        let stored = register(&rp, &mut auth);
        assert_eq!(stored.masked(), format!("passkey (AAGUID {})", Uuid::nil()));
        let mut stored = Stored::decode(&stored.encode()).unwrap();
        let (response, state) = assertion(&rp, &mut auth, &stored, ORIGIN);
        finish_authentication(&rp, &response, &state, &mut stored).unwrap();
        assert!(stored.counter > 0, "SoftPasskey counts its signatures");
        // The same response again, with its ceremony state (the store's single-use
        // challenge is the first guard): its counter is not past the stored one.
        assert_eq!(
            finish_authentication(&rp, &response, &state, &mut stored),
            Err(Refusal::Cloned)
        );
        let mut named = stored.clone();
        named.name = Some(parse_name(" Laptop ").unwrap());
        assert_eq!(named.masked(), "passkey \u{201c}Laptop\u{201d}");
        let mut google = stored.clone();
        google.aaguid = *Uuid::parse_str("ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4")
            .unwrap()
            .as_bytes();
        assert_eq!(google.masked(), "passkey (Google Password Manager)");
        assert!(parse_name("").is_err());
        assert!(parse_name("a\u{7}").is_err());
        assert!(parse_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn a_response_for_another_challenge_a_wrong_origin_or_another_credential_is_refused() {
        let rp = rp();
        let mut auth = SoftPasskey::new(true);
        let mut stored = register(&rp, &mut auth);
        let before = stored.encode();
        // A response to one challenge does not answer another.
        let other = start_authentication(&rp, &stored).unwrap();
        let (response, _) = assertion(&rp, &mut auth, &stored, ORIGIN);
        assert_eq!(
            finish_authentication(&rp, &response, &other.state, &mut stored),
            Err(Refusal::Rejected("another challenge's response"))
        );
        // The same authenticator, answering for a page on an origin the app does not allow.
        let (response, state) = assertion(&rp, &mut auth, &stored, "http://localhost:9999");
        assert_eq!(
            finish_authentication(&rp, &response, &state, &mut stored),
            Err(Refusal::Rejected("wrong origin"))
        );
        // An authenticator that signed for another RP id (the request's rpId changed on the
        // way, answered from an allowed origin) is refused.
        let started = start_authentication(&rp, &stored).unwrap();
        let mut options = started.options;
        options["publicKey"]["rpId"] = "login.localhost".into();
        let rcr: RequestChallengeResponse = serde_json::from_value(options).unwrap();
        let cred = auth
            .perform_auth(url(ORIGIN), rcr.public_key, 60_000)
            .unwrap();
        assert_eq!(
            finish_authentication(
                &rp,
                &serde_json::to_value(&cred).unwrap(),
                &started.state,
                &mut stored
            ),
            Err(Refusal::Rejected("wrong RP id"))
        );
        // A signature that does not verify.
        let (mut response, state) = assertion(&rp, &mut auth, &stored, ORIGIN);
        let signature = response["response"]["signature"].as_str().unwrap();
        let mut bytes = ghostkey_proto::b64::decode(signature).unwrap();
        bytes[10] ^= 1;
        response["response"]["signature"] = ghostkey_proto::b64::encode(&bytes).into();
        assert_eq!(
            finish_authentication(&rp, &response, &state, &mut stored),
            Err(Refusal::Rejected("bad signature"))
        );
        // Another authenticator's passkey does not answer this method's challenge.
        let mut other_auth = SoftPasskey::new(true);
        let other_stored = register(&rp, &mut other_auth);
        let (response, _) = assertion(&rp, &mut other_auth, &other_stored, ORIGIN);
        let started = start_authentication(&rp, &stored).unwrap();
        assert!(matches!(
            finish_authentication(&rp, &response, &started.state, &mut stored),
            Err(Refusal::Rejected(_))
        ));
        assert_eq!(
            stored.encode(),
            before,
            "no refusal changed the stored credential"
        );
        // Junk is refused, not a panic.
        assert!(matches!(
            finish_authentication(
                &rp,
                &serde_json::json!({"id": 1}),
                &started.state,
                &mut stored
            ),
            Err(Refusal::Rejected(_))
        ));
        assert!(matches!(
            finish_registration(&rp, &serde_json::json!("x"), b"{}", None),
            Err(Refusal::Rejected(_))
        ));
    }

    #[test]
    fn without_user_verification_no_passkey_is_made() {
        // The server asks for user verification in both ceremonies; an authenticator that
        // cannot do it cannot answer (SoftPasskey refuses on the client side).
        let rp = rp();
        let started = start_registration(&rp, "Ghostkey recovery", vec![]).unwrap();
        assert_eq!(
            started.options["publicKey"]["authenticatorSelection"]["userVerification"],
            "required"
        );
        let ccr = serde_json::from_value(started.options).unwrap();
        assert!(SoftPasskey::new(false)
            .do_registration(url(ORIGIN), ccr)
            .is_err());
    }

    #[test]
    fn a_clone_answering_a_ceremony_started_before_the_last_use_is_still_caught() {
        let rp = rp();
        let (mut token, _) = SoftToken::new(true).unwrap();
        let mut stored = register(&rp, &mut token);
        let mut clone = SoftToken::from_cbor(&token.to_cbor().unwrap()).unwrap();
        // Two ceremonies started at the same counter; the original finishes one first.
        let early = start_authentication(&rp, &stored).unwrap();
        let (response, state) = assertion(&rp, &mut token, &stored, ORIGIN);
        finish_authentication(&rp, &response, &state, &mut stored).unwrap();
        let rcr = serde_json::from_value(early.options).unwrap();
        let cred = clone.do_authentication(url(ORIGIN), rcr).unwrap();
        assert_eq!(
            finish_authentication(
                &rp,
                &serde_json::to_value(&cred).unwrap(),
                &early.state,
                &mut stored
            ),
            Err(Refusal::Cloned)
        );
    }

    #[test]
    fn a_counter_that_goes_back_is_a_cloned_authenticator() {
        let rp = rp();
        let (mut token, _) = SoftToken::new(true).unwrap();
        let mut stored = register(&rp, &mut token);
        // A copy of the authenticator taken now, then the original used once.
        let mut clone = SoftToken::from_cbor(&token.to_cbor().unwrap()).unwrap();
        let (response, state) = assertion(&rp, &mut token, &stored, ORIGIN);
        finish_authentication(&rp, &response, &state, &mut stored).unwrap();
        let first = stored.counter;
        assert!(first > 0, "a SoftToken counts");
        let kept = stored.encode();
        let (response, state) = assertion(&rp, &mut clone, &stored, ORIGIN);
        assert_eq!(
            finish_authentication(&rp, &response, &state, &mut stored),
            Err(Refusal::Cloned)
        );
        assert_eq!(stored.encode(), kept, "nothing changed");
    }
}
