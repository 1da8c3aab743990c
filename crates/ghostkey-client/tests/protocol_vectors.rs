// TEMPORARY: prints the vector values once; replaced by the real test.
use ghostkey_client::proto::assertion::{AssertionClaims, Purpose};
use ghostkey_client::proto::b64;
use ghostkey_client::{AppSigningKey, DeviceKeys, UserSecret, VirtualDevice};

fn seq<const N: usize>(start: u8) -> [u8; N] {
    let mut a = [0u8; N];
    for (i, b) in a.iter_mut().enumerate() {
        *b = start.wrapping_add(i as u8);
    }
    a
}
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn print_vectors() {
    let secret: [u8; 32] = seq(0x00);
    let nonce: [u8; 24] = seq(0x40);
    let seed: [u8; 32] = seq(0x80);
    let xs: [u8; 32] = seq(0xa0);
    let keys = DeviceKeys::from_bytes(&seed, &xs);
    let dev = VirtualDevice::from_keys("app_8c2f1e9a4b7d3c6e0f5a1b2d", "u-7f3a9c", 258, keys);
    let pt = dev.to_plaintext().unwrap();
    let sealed = dev
        .seal_with_nonce(&UserSecret::from_bytes(secret), &nonce)
        .unwrap();
    println!("user_secret: {}", hex(&secret));
    println!("nonce: {}", hex(&nonce));
    println!("seed: {}", hex(&seed));
    println!("xsecret: {}", hex(&xs));
    println!("plaintext ({}): {}", pt.len(), hex(&pt));
    println!("sealed ({}): {}", sealed.len(), hex(&sealed));
    println!("sealed_b64: {}", b64::encode(&sealed));
    let p = dev.keys().public();
    println!("signing_key: {}", p.signing_key);
    println!("encryption_key: {}", p.encryption_key);

    let app_seed: [u8; 32] = seq(0x20);
    let key = AppSigningKey::from_seed("k1", &app_seed);
    let claims = AssertionClaims {
        iss: "app_8c2f1e9a4b7d3c6e0f5a1b2d".into(),
        sub: "u-7f3a9c".into(),
        aud: "gk.example.org".into(),
        iat: 1_700_000_000,
        exp: 1_700_000_120,
        jti: b64::encode(seq::<16>(0)),
        purpose: Purpose::Recover,
    };
    let tok = key.mint_claims(&claims).unwrap();
    println!("app_seed: {}", hex(&app_seed));
    println!("app_public: {}", key.public_key_b64());
    println!("jti: {}", claims.jti);
    println!("token: {tok}");
    for part in tok.split('.').take(2) {
        println!(
            "part: {}",
            String::from_utf8(b64::decode(part).unwrap()).unwrap()
        );
    }
    println!("sig: {}", tok.split('.').nth(2).unwrap());
}
