//! Rate limits and budgets as fixed-window counters kept in the store.

use ghostkey_proto::ErrorCode;

use crate::clock::UnixTime;

/// One limit to take a unit from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// What is counted (`dest-hour`, `dest-day`, `app-day`, `addr-minute`,
    /// `user-recovery-day`).
    pub scope: &'static str,
    /// Who is counted: an HMAC of a destination or address, or an app id.
    pub subject: Vec<u8>,
    /// Window length in seconds.
    pub window_secs: i64,
    /// Units allowed per window.
    pub max: u32,
    /// The error when the window is full.
    pub code: ErrorCode,
}

impl Limit {
    /// The start of the window containing `now`.
    pub fn window_start(&self, now: UnixTime) -> UnixTime {
        now - now.rem_euclid(self.window_secs.max(1))
    }

    /// Seconds until the window containing `now` ends.
    pub fn retry_after(&self, now: UnixTime) -> i64 {
        self.window_start(now) + self.window_secs - now
    }
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// The limits on sending one message to a destination for an app.
pub fn send_limits(
    app_id: &str,
    destination_mac: &[u8],
    per_hour: u32,
    per_day: u32,
    app_per_day: u32,
) -> Vec<Limit> {
    vec![
        Limit {
            scope: "dest-hour",
            subject: destination_mac.to_vec(),
            window_secs: HOUR,
            max: per_hour,
            code: ErrorCode::DestinationRateLimited,
        },
        Limit {
            scope: "dest-day",
            subject: destination_mac.to_vec(),
            window_secs: DAY,
            max: per_day,
            code: ErrorCode::DestinationRateLimited,
        },
        Limit {
            scope: "app-day",
            subject: app_id.as_bytes().to_vec(),
            window_secs: DAY,
            max: app_per_day,
            code: ErrorCode::AppSendBudgetExhausted,
        },
    ]
}

/// What the address limits count for a client: an IPv4 address, or the /64 network of an
/// IPv6 one. One subscriber usually holds a whole /64, so counting single IPv6 addresses
/// would hand each client 2^64 budgets. An IPv4-mapped IPv6 address counts as its IPv4.
pub fn address_key(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let network = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{network}/64")
            }
        },
    }
}

/// The ceiling on code checks without an assertion for a whole app (`app_id` empty: for
/// ids that name nothing), every address together.
pub fn app_check_limit(app_id: &str, per_minute: u32) -> Limit {
    Limit {
        scope: "app-checks-minute",
        subject: app_id.as_bytes().to_vec(),
        window_secs: 60,
        max: per_minute,
        code: ErrorCode::AppRateLimited,
    }
}

/// The limit on requests from one client address for an app.
pub fn address_limit(app_id: &str, address_mac: &[u8], per_minute: u32) -> Limit {
    let mut subject = app_id.as_bytes().to_vec();
    subject.push(0);
    subject.extend_from_slice(address_mac);
    Limit {
        scope: "addr-minute",
        subject,
        window_secs: 60,
        max: per_minute,
        code: ErrorCode::AddressRateLimited,
    }
}

/// The limit on recoveries one user may start per (UTC) day; `user_mac` is an HMAC of the
/// app and user ids (the counter outlives an erasure and must not name the user).
pub fn recovery_start_limit(user_mac: &[u8], per_day: u32) -> Limit {
    let subject = user_mac.to_vec();
    Limit {
        scope: "user-recovery-day",
        subject,
        window_secs: DAY,
        max: per_day,
        code: ErrorCode::RecoveryRateLimited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:198.51.100.7"), key("198.51.100.7"));
        assert_ne!(key("198.51.100.7"), key("198.51.100.8"));
    }

    #[test]
    fn windows_are_aligned_and_retry_after_points_to_the_next() {
        let l = address_limit("app", b"mac", 5);
        assert_eq!(l.window_start(125), 120);
        assert_eq!(l.retry_after(125), 55);
        let s = send_limits("app", b"mac", 5, 10, 100);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].window_start(90_000), 86_400);
    }
}
