//! Every request body, as the JSON extractor and the domain checks see it.
#![no_main]

use ghostkey::domain::assertion::VerifiedAssertion;
use ghostkey_proto::api::*;
use ghostkey_proto::assertion::Purpose;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<EnrollRequest>(data) {
        let assertion = VerifiedAssertion {
            app_id: "app".into(),
            user_id: "user".into(),
            jti: "j".repeat(16),
            remember_jti_until: 0,
            purpose: Purpose::Enroll,
        };
        let _ = ghostkey::domain::enrollment::new_enrollment(&assertion, &body, 0);
    }
    if let Ok(body) = serde_json::from_slice::<AddMethodRequest>(data) {
        match body.kind {
            MethodKind::Sms => {
                let _ = body.destination.as_deref().map(ghostkey::domain::method::normalise_phone);
            }
            MethodKind::Email => {
                let _ = body.destination.as_deref().map(ghostkey::domain::method::normalise_email);
            }
            MethodKind::Totp => {}
        }
        if let Some(proof) = body.proof {
            let _ = ghostkey::service::parse_code(&proof.code);
        }
    }
    if let Ok(body) = serde_json::from_slice::<AnswerRequest>(data) {
        let _ = ghostkey::service::parse_code(&body.code);
    }
    let _ = serde_json::from_slice::<StartChallengeRequest>(data);
    let _ = serde_json::from_slice::<RemoveMethodRequest>(data);
    let _ = serde_json::from_slice::<StartRecoveryRequest>(data);
    let _ = serde_json::from_slice::<CancelRecoveryRequest>(data);
    if let Ok(body) = serde_json::from_slice::<CancelWithCodeRequest>(data) {
        let _ = ghostkey::domain::cancel_code::parse(&body.cancel_code);
    }
    if let Ok(UnlockRequest { proof: Some(proof) }) = serde_json::from_slice::<UnlockRequest>(data) {
        let _ = ghostkey::service::parse_code(&proof.code);
    }
    let _ = serde_json::from_slice::<ReplaceVirtualDeviceRequest>(data);
    if let Ok(body) = serde_json::from_slice::<AppendBlockRequest>(data) {
        if let Ok(bytes) = ghostkey_proto::b64::decode(&body.block) {
            let _ = ghostkey_proto::chain::Block::decode(&bytes);
        }
    }
});
