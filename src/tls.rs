//! TLS termination in Ghostkey (rustls, TLS 1.2 and 1.3, ring). Certificates are read at
//! start-up; to take a renewed certificate, restart the service (systemd: `systemctl
//! restart ghostkey`; the stop drains in-flight requests first).
//!
//! Start-up refuses a key that is not the certificate's, and a certificate (leaf or any
//! certificate of the chain) that has expired or is not valid yet: every client would refuse
//! the handshake, so starting would only hide the cause.

use std::sync::Arc;
use std::time::Duration;

use der::asn1::{AnyRef, GeneralizedTime, UtcTime};
use der::{DateTime, Decode, Reader, SliceReader, Tag, TagNumber, Tagged};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::clock::UnixTime;
use crate::config::TlsConfig;

/// Builds the server's TLS configuration from the PEM files `config` names, checking the
/// certificates' validity at `now`; errors name the key and the file, never key material.
pub fn server_config(config: &TlsConfig, now: UnixTime) -> Result<rustls::ServerConfig, String> {
    let cert_file = config.cert_file.display();
    let key_file = config.key_file.display();
    let pem = std::fs::read(&config.cert_file)
        .map_err(|e| format!("`server.tls.cert_file` {cert_file}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`server.tls.cert_file` {cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "`server.tls.cert_file` {cert_file}: no certificate in it"
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        let which = if i == 0 {
            "the certificate".to_owned()
        } else {
            format!("certificate {} of the chain", i + 1)
        };
        let (not_before, not_after) = validity(cert.as_ref()).map_err(|e| {
            format!("`server.tls.cert_file` {cert_file}: {which} is unreadable: {e}")
        })?;
        if i > 0 && !(not_before..=not_after).contains(&now) {
            // Bundles often carry an expired cross-signed certificate that clients route
            // around; only the server's own certificate decides the handshake.
            tracing::warn!(
                cert_file = %cert_file,
                "{which} is outside its validity ({} to {}); clients that need it will refuse \
                 the handshake: check the bundle",
                date(not_before),
                date(not_after)
            );
            continue;
        }
        if now > not_after {
            return Err(format!(
                "`server.tls.cert_file` {cert_file}: {which} expired at {} (now {}): renew it, \
                 then start again",
                date(not_after),
                date(now)
            ));
        }
        if now < not_before {
            return Err(format!(
                "`server.tls.cert_file` {cert_file}: {which} is not valid before {} (now {}): \
                 is this host's clock right?",
                date(not_before),
                date(now)
            ));
        }
    }
    let pem = std::fs::read(&config.key_file)
        .map_err(|e| format!("`server.tls.key_file` {key_file}: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("`server.tls.key_file` {key_file}: {e}"))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                "`server.tls.key_file` {key_file} is not the private key of the certificate in \
                 `server.tls.cert_file` {cert_file}"
            ),
            e => format!("`server.tls.key_file` {key_file}: the key is unusable: {e}"),
        })
}

/// The `notBefore` and `notAfter` of a DER certificate, in Unix seconds.
fn validity(cert: &[u8]) -> der::Result<(UnixTime, UnixTime)> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let certificate = AnyRef::from_der(cert)?;
    certificate.tag().assert_eq(Tag::Sequence)?;
    let mut outer = SliceReader::new(certificate.value())?;
    let tbs = AnyRef::decode(&mut outer)?;
    tbs.tag().assert_eq(Tag::Sequence)?;
    // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
    //                               validity, ... }
    let mut fields = SliceReader::new(tbs.value())?;
    let explicit_version = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber::N0,
    };
    if fields.peek_tag()? == explicit_version {
        AnyRef::decode(&mut fields)?;
    }
    for _serial_signature_issuer in 0..3 {
        AnyRef::decode(&mut fields)?;
    }
    let validity = AnyRef::decode(&mut fields)?;
    validity.tag().assert_eq(Tag::Sequence)?;
    let mut times = SliceReader::new(validity.value())?;
    let not_before = time(AnyRef::decode(&mut times)?)?;
    let not_after = time(AnyRef::decode(&mut times)?)?;
    Ok((not_before, not_after))
}

/// A `Time` (UTCTime or GeneralizedTime) in Unix seconds.
fn time(any: AnyRef<'_>) -> der::Result<UnixTime> {
    let since_epoch = match any.tag() {
        Tag::UtcTime => any.decode_as::<UtcTime>()?.to_unix_duration(),
        _ => any.decode_as::<GeneralizedTime>()?.to_unix_duration(),
    };
    Ok(i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-11-30T01:00:00Z`, or the seconds when the date is out of range.
fn date(t: UnixTime) -> String {
    u64::try_from(t)
        .ok()
        .and_then(|secs| DateTime::from_unix_duration(Duration::from_secs(secs)).ok())
        .map_or_else(|| format!("{t} s after 1970"), |d| d.to_string())
}
