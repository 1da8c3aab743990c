//! Web origins an app allows to call the API from a browser (CORS), as the operator gives
//! them and as browsers send them in the `Origin` header.
//!
//! An origin is exactly `scheme://host[:port]` (RFC 6454 serialisation): no path (not even
//! `/`), query, fragment or user info. `https` always; `http` only for a loopback host
//! (`localhost`, `127.0.0.1`, `[::1]`), so that a developer can try a page served from
//! their machine. `null` (sandboxed frames, `file:` pages) and `*` are never origins.
//! The normal form is lowercase, without the scheme's default port, so that the operator's
//! `https://Health.Example.org:443` and the browser's `https://health.example.org` match.

/// Longest origin accepted (scheme, `://`, a 253-character host and a port).
pub const MAX_ORIGIN_LEN: usize = 270;

/// Hosts for which `http` is allowed.
const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

/// The normal form of `text` as an allowed origin, or why it is not one (a message for the
/// operator, naming what to change).
pub fn normalise_origin(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the origin is empty; give it as https://host[:port]".into());
    }
    if text.len() > MAX_ORIGIN_LEN {
        return Err(format!(
            "the origin is longer than {MAX_ORIGIN_LEN} characters"
        ));
    }
    if text == "*" {
        return Err("`*` is not an origin: list each web origin that may call Ghostkey".into());
    }
    if text.eq_ignore_ascii_case("null") {
        return Err(
            "`null` is not allowed: it is the origin of sandboxed frames and local files, \
             which any page can produce"
                .into(),
        );
    }
    if !text.is_ascii() {
        return Err(
            "the origin has non-ASCII characters; give an internationalised host name in its \
             ASCII (xn--) form"
                .into(),
        );
    }
    if text
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("the origin has spaces or control characters".into());
    }
    let lower = text.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err(format!(
            "`{text}` is not an origin: expected scheme://host[:port], such as https://app.example.org"
        ));
    };
    if rest.contains('@') {
        return Err("an origin has no user info (`user@`)".into());
    }
    if let Some(at) = rest.find(['/', '?', '#']) {
        let what = match rest.as_bytes()[at] {
            b'?' => "query",
            b'#' => "fragment",
            _ => "path (not even a trailing `/`)",
        };
        return Err(format!(
            "an origin has no {what}: give only scheme://host[:port], such as `{scheme}://{}`",
            &rest[..at]
        ));
    }
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        other => {
            return Err(format!(
                "scheme `{other}` is not allowed: use https (http only for localhost, 127.0.0.1 or [::1])"
            ))
        }
    };
    let (host, port) = split_host_port(rest)?;
    check_host(host)?;
    if scheme == "http" && !LOOPBACK.contains(&host) {
        return Err(format!(
            "http is allowed only for a loopback host (localhost, 127.0.0.1, [::1]); use https://{host}"
        ));
    }
    Ok(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// `host[:port]`, with a bracketed IPv6 host.
fn split_host_port(rest: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if rest.starts_with('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| "an IPv6 host needs its closing `]`".to_owned())?;
        let (host, after) = rest.split_at(end + 1);
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("unexpected characters after the IPv6 host".into()),
            },
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            let valid = !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && !p.starts_with('0');
            match p.parse::<u16>() {
                Ok(n) if valid && n > 0 => Some(n),
                _ => return Err(format!("`{p}` is not a port (1 to 65535)")),
            }
        }
    };
    Ok((host, port))
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the origin has no host".into());
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            // Only the canonical text, which is what a browser sends.
            Ok(ip) if ip.to_string() == inner => Ok(()),
            Ok(ip) => Err(format!("write the IPv6 host as [{ip}]")),
            Err(_) => Err(format!("`{host}` is not an IPv6 address")),
        };
    }
    if host.len() > 253 {
        return Err("the host name is longer than 253 characters".into());
    }
    for label in host.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "`{host}` is not a host name: labels of 1 to 63 letters, digits and inner \
                 hyphens, separated by single dots"
            ));
        }
    }
    // All-numeric hosts must be a dotted IPv4 address as a browser writes it.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) if ip.to_string() == host => {}
            _ => {
                return Err(format!(
                    "`{host}` is not an IPv4 address as a browser writes it"
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::normalise_origin;

    #[test]
    fn hostile_and_malformed_origins_are_refused_each_with_its_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("null", "`null`"),
            ("NULL", "`null`"),
            ("*", "`*`"),
            ("health.example.org", "expected scheme://host"),
            ("https://", "no host"),
            ("https://health.example.org/", "trailing `/`"),
            ("https://health.example.org/app", "no path"),
            ("https://health.example.org?x=1", "no query"),
            ("https://health.example.org#top", "no fragment"),
            ("https://user@health.example.org", "user info"),
            ("https://user:pw@health.example.org", "user info"),
            ("http://health.example.org", "loopback"),
            ("http://10.0.0.1", "loopback"),
            ("http://localhost.evil.org", "loopback"),
            ("ftp://health.example.org", "scheme `ftp`"),
            ("file://", "scheme `file`"),
            ("javascript://x", "scheme `javascript`"),
            ("https://health.example.org:0", "port"),
            ("https://health.example.org:65536", "port"),
            ("https://health.example.org:08443", "port"),
            ("https://health.example.org:", "port"),
            ("https://health.example.org:x", "port"),
            ("https://heälth.example.org", "non-ASCII"),
            ("https://health example.org", "spaces"),
            (" https://health.example.org", "spaces"),
            ("https://health.example.org\n", "control"),
            ("https://-health.example.org", "not a host name"),
            ("https://health..example.org", "not a host name"),
            ("https://health_app.example.org", "not a host name"),
            ("https://[::1", "closing"),
            ("https://[zz::1]", "IPv6"),
            ("https://[0:0:0:0:0:0:0:1]", "[::1]"),
            ("https://1.2.3", "IPv4"),
            ("https://127.000.0.1", "IPv4"),
        ];
        for (input, reason) in cases {
            let err = normalise_origin(input).expect_err(input);
            assert!(err.contains(reason), "{input:?}: {err:?} lacks {reason:?}");
        }
        let long = format!("https://{}.org", "a".repeat(300));
        assert!(normalise_origin(&long).is_err());
    }

    #[test]
    fn valid_origins_are_normalised_to_what_browsers_send() {
        let cases: &[(&str, &str)] = &[
            ("https://health.example.org", "https://health.example.org"),
            ("HTTPS://Health.Example.ORG", "https://health.example.org"),
            (
                "https://health.example.org:443",
                "https://health.example.org",
            ),
            (
                "https://health.example.org:8443",
                "https://health.example.org:8443",
            ),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://localhost:80", "http://localhost"),
            ("http://127.0.0.1:5173", "http://127.0.0.1:5173"),
            ("http://[::1]:8000", "http://[::1]:8000"),
            ("https://[2001:db8::1]", "https://[2001:db8::1]"),
            (
                "https://xn--hlth-qoa.example.org",
                "https://xn--hlth-qoa.example.org",
            ),
            ("https://10.1.2.3", "https://10.1.2.3"),
        ];
        for (input, want) in cases {
            assert_eq!(normalise_origin(input).as_deref(), Ok(*want), "{input}");
            // Normal forms are fixed points.
            assert_eq!(normalise_origin(want).as_deref(), Ok(*want), "{want}");
        }
    }
}
