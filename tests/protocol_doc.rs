// TEMPORARY
#[test]
fn print_webhook() {
    let body = br#"{"id":42,"channel":"sms","to":"+41790000000","body":"12345678 is your Demo recovery verification code. It expires in 10 minutes. Never share it: nobody from Demo will ask you for it."}"#;
    println!(
        "short: {}",
        ghostkey::delivery::webhook::signature_header(
            b"whsec-3a1f9c0d5e7b2468",
            1_700_000_000,
            body
        )
    );
    let long = "whsec-".to_owned() + &"0123456789abcdef".repeat(5);
    println!(
        "long len {}: {}",
        long.len(),
        ghostkey::delivery::webhook::signature_header(long.as_bytes(), 1_700_000_000, body)
    );
}
