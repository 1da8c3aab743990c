//! Enrolment of a user's sealed virtual device.

use ghostkey_proto::api::{EnrollRequest, EnrollResponse};
use ghostkey_proto::assertion::Purpose;

use super::{authenticate, Ghostkey};
use crate::domain::enrollment::new_enrollment;
use crate::error::Error;

impl Ghostkey {
    /// Stores a new user's sealed virtual device, pending until a method is confirmed.
    pub async fn enroll(
        &self,
        token: String,
        request: EnrollRequest,
    ) -> Result<EnrollResponse, Error> {
        let now = self.now();
        self.blocking(move |store, rules| {
            let assertion = authenticate(store, rules, &token, &[Purpose::Enroll], now)?;
            let enrollment = new_enrollment(&assertion, &request, now)?;
            store.enroll(&assertion, &enrollment, now)?;
            Ok(EnrollResponse {
                app_id: enrollment.app_id,
                user_id: enrollment.user_id,
                state: enrollment.state,
                created_at: enrollment.created_at,
            })
        })
        .await
    }
}
