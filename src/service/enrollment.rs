//! Enrolment of a user's sealed virtual device.

use ghostkey_proto::api::{EnrollRequest, EnrollResponse};
use ghostkey_proto::assertion::Purpose;

use super::{authenticate, Caller, Ghostkey};
use crate::domain::app::KeyLookup;
use crate::domain::chain::check_root;
use crate::domain::enrollment::new_enrollment;
use crate::domain::limits::address_limit;
use crate::error::Error;

impl Ghostkey {
    /// Stores a new user's sealed virtual device, pending until a method is confirmed.
    pub async fn enroll(
        &self,
        token: String,
        caller: Caller,
        request: EnrollRequest,
    ) -> Result<EnrollResponse, Error> {
        let now = self.now();
        let mac = self.caller_mac(caller);
        self.blocking(move |store, rules| {
            let assertion = authenticate(store, rules, &token, &[Purpose::Enroll], now)?;
            if let Some(app) = store.app(&assertion.app_id)? {
                let limit =
                    address_limit(&app.id, &mac, app.policy.requests_per_address_per_minute);
                store.take_limits(&[limit], now)?;
            }
            let enrollment = new_enrollment(&assertion, &request, now)?;
            // The root must be endorsed by an active key of the app.
            let app_id = assertion.app_id.clone();
            // A failed lookup (the database out of reach) is that failure, answered as
            // such (503), never a root judged unsigned (a permanent 422).
            let lookup_failed = std::cell::RefCell::new(None);
            let active_key = |kid: &str| match store.lookup_assertion_key(&app_id, kid) {
                Ok(KeyLookup::Active(key)) => Some(key),
                Ok(_) => None,
                Err(e) => {
                    *lookup_failed.borrow_mut() = Some(e);
                    None
                }
            };
            let checked = check_root(&enrollment.root_block, &active_key);
            if let Some(e) = lookup_failed.into_inner() {
                return Err(e.into());
            }
            checked?;
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
