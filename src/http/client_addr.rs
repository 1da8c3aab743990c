//! The client's address: the peer, or, when the peer is a trusted proxy, the nearest
//! address in `X-Forwarded-For` that is not itself a trusted proxy.

use std::net::IpAddr;

use actix_web::HttpRequest;
use ipnet::IpNet;

/// Resolves the client address of a request.
pub fn client_address(req: &HttpRequest, trusted: &[IpNet]) -> IpAddr {
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    resolve(peer, &forwarded, trusted)
}

/// The rule, without HTTP: walk `X-Forwarded-For` from the right while the hop is trusted.
pub fn resolve(peer: IpAddr, forwarded_for: &str, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A hop that is not an address ends what can be believed.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // Untrusted peer: its header is ignored.
        assert_eq!(
            resolve(ip("203.0.113.9"), "198.51.100.1", &trusted),
            ip("203.0.113.9")
        );
        // Trusted peer: the rightmost untrusted hop.
        assert_eq!(
            resolve(ip("10.0.0.2"), "198.51.100.1, 203.0.113.7", &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            resolve(ip("10.0.0.2"), "198.51.100.1, 10.1.1.1", &trusted),
            ip("198.51.100.1")
        );
        // A spoofed left part does not help the client.
        assert_eq!(
            resolve(ip("10.0.0.2"), "1.2.3.4, 203.0.113.7", &trusted),
            ip("203.0.113.7")
        );
        // No header, or junk: the peer.
        assert_eq!(resolve(ip("10.0.0.2"), "", &trusted), ip("10.0.0.2"));
        assert_eq!(resolve(ip("10.0.0.2"), "junk", &trusted), ip("10.0.0.2"));
        assert_eq!(
            resolve(ip("127.0.0.1"), "198.51.100.1", &[]),
            ip("127.0.0.1")
        );
    }
}
