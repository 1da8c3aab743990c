//! The demo's story is a test, and `ghostkey demo` exits 0.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_of_the_article_ends_with_the_prescription_read_on_the_new_device() {
    let mut out = Vec::new();
    let outcome = ghostkey::demo::run(&mut out).await.unwrap();
    assert!(outcome.read_after_recovery.contains("amoxicillin 500 mg"));
    let text = String::from_utf8(out).unwrap();
    for step in ["1. ", "2. ", "3. ", "4. ", "5. ", "6. ", "7. "] {
        assert!(text.contains(step), "missing step {step}: {text}");
    }
    // No code or full phone number is printed.
    assert!(
        !text.contains("612345678") && !text.contains("698765432"),
        "{text}"
    );
}

#[test]
fn ghostkey_demo_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ghostkey"))
        .arg("demo")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reads the prescription"));
}
