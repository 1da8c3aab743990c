//! `ghostkey demo`: the story of the source article, end to end, against an in-process
//! Ghostkey with an in-memory SMS sink standing in for the phones.
//!
//! A patient and a doctor enrol with a health platform; the patient sends the doctor an
//! encrypted prescription; the doctor loses their only device, recovers with the
//! platform's login and Ghostkey's own SMS code, admits a new device, and reads the
//! prescription. Each step says who could read what.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ghostkey_client::chain::{add_device, user_keys};
use ghostkey_client::envelope::Envelope;
use ghostkey_client::kit::AssertionRequest;
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::chain::{verify_chain, ChainState};
use ghostkey_client::recovery::{Admission, RecoveryDriver};
use ghostkey_client::{AppSigningKey, Client, ClientError, DeviceKeys, UserKeys, UserSecret};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::delivery::dev_inbox::{DevInbox, Inbox};
use crate::delivery::setup::Senders;
use crate::keys::{DataKey, ServerKeys};
use crate::store::Store;

const SERVICE_ID: &str = "ghostkey-demo";
const PRESCRIPTION: &str = "Rx: amoxicillin 500 mg, 3 times a day for 7 days. Dr. Martin.";

/// What the demo ends with, for its test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The prescription as the doctor's new device read it.
    pub read_after_recovery: String,
    /// How long the story took.
    pub elapsed: Duration,
}

struct Platform {
    app_id: String,
    key: AppSigningKey,
}

impl Platform {
    /// The platform's backend mints an assertion for one of its logged-in users.
    fn assertion(&self, user: &str, purpose: Purpose) -> Result<String, ClientError> {
        let request = AssertionRequest {
            app_id: &self.app_id,
            user_id: user,
            audience: SERVICE_ID,
            purpose,
        };
        self.key
            .mint(&request, SystemClock.now(), 60)
            .map_err(|e| ClientError::Unexpected {
                status: 0,
                detail: e.to_string(),
            })
    }

    fn pinned(&self) -> impl Fn(&str) -> Option<[u8; 32]> + Send + Sync + '_ {
        move |kid| (kid == self.key.kid()).then(|| self.key.public_key())
    }
}

/// A user's first phone, after enrolment.
struct Member {
    id: &'static str,
    phone_number: &'static str,
    secret: UserSecret,
    device: DeviceKeys,
    user_keys: UserKeys,
}

fn step(out: &mut dyn Write, text: &str) -> Result<(), String> {
    writeln!(out, "{text}").map_err(|e| e.to_string())
}

async fn code_for(inbox: &Inbox, number: &str, seen: usize) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for m in inbox.messages().iter().skip(seen) {
            if m.to == number && m.body.contains("verification code") {
                if let Some(code) = m
                    .body
                    .split_whitespace()
                    .find(|w| w.len() == 8 && w.bytes().all(|b| b.is_ascii_digit()))
                {
                    return Ok(code.to_owned());
                }
            }
        }
        if Instant::now() > deadline {
            return Err("no SMS code arrived".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn enrol(
    client: &Client,
    platform: &Platform,
    inbox: &Inbox,
    id: &'static str,
    phone_number: &'static str,
) -> Result<Member, String> {
    let secret = UserSecret::generate();
    let enrolled = ghostkey_client::enroll(
        client,
        &platform.assertion(id, Purpose::Enroll).map_err(err)?,
        &secret,
        &platform.app_id,
        id,
        &platform.key,
    )
    .await
    .map_err(err)?;
    // The first physical device, admitted by the virtual device while it is at hand.
    let blocks = client
        .chain(&platform.assertion(id, Purpose::Manage).map_err(err)?, id)
        .await
        .map_err(err)?;
    let chain = verify_chain(&blocks, &platform.pinned()).map_err(err)?;
    let device = DeviceKeys::generate();
    let block = add_device(
        &chain,
        enrolled.virtual_device.keys(),
        &device,
        &enrolled.user_keys,
    )
    .map_err(err)?;
    client
        .append_block(
            &platform.assertion(id, Purpose::Manage).map_err(err)?,
            &block.encode(),
        )
        .await
        .map_err(err)?;
    let seen = inbox.messages().len();
    let added = client
        .add_method(
            &platform.assertion(id, Purpose::Enroll).map_err(err)?,
            MethodKind::Sms,
            Some(phone_number),
            None,
        )
        .await
        .map_err(err)?;
    let code = code_for(inbox, &normalise(phone_number), seen).await?;
    client
        .answer(&added.challenge.id, &code)
        .await
        .map_err(err)?;
    Ok(Member {
        id,
        phone_number,
        secret,
        device,
        user_keys: enrolled.user_keys,
    })
}

fn normalise(number: &str) -> String {
    number
        .chars()
        .filter(|c| *c == '+' || c.is_ascii_digit())
        .collect()
}

async fn verified_chain(
    client: &Client,
    platform: &Platform,
    reader: &str,
    whose: &str,
) -> Result<ChainState, String> {
    let blocks = client
        .chain(
            &platform.assertion(reader, Purpose::Manage).map_err(err)?,
            whose,
        )
        .await
        .map_err(err)?;
    verify_chain(&blocks, &platform.pinned()).map_err(err)
}

/// Plays the story, writing each step to `out`.
pub async fn run(out: &mut dyn Write) -> Result<Outcome, String> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "ghostkey-demo-{}",
        crate::domain::method::new_id("")
    ));
    std::fs::create_dir_all(&dir).map_err(err)?;
    let result = story(out, &dir, started).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn story(
    out: &mut dyn Write,
    dir: &std::path::Path,
    started: Instant,
) -> Result<Outcome, String> {
    // The operator's side: a Ghostkey run by a separate, independent operator.
    let mut config = Config {
        service_id: SERVICE_ID.into(),
        ..Config::default()
    };
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.server.workers = 1;
    config.database.path = dir.join("ghostkey.db");
    config.delivery.poll_interval_ms = 20;
    let store: Arc<dyn Store> = crate::server::open_store(&config)?;
    let (sms, inbox) = DevInbox::new();
    let (email, _) = DevInbox::new();
    let senders = Senders {
        sms: Arc::new(sms),
        email: Arc::new(email),
        dev_messages: None,
    };
    let keys = Arc::new(ServerKeys::derive(&DataKey::generate()));
    let (tx, rx) = std::sync::mpsc::channel();
    let server_config = config.clone();
    let server_store = Arc::clone(&store);
    std::thread::spawn(move || {
        let failed = tx.clone();
        let outcome = actix_web::rt::System::new().block_on(async move {
            let running = crate::server::start_with(
                &server_config,
                server_store,
                Arc::new(SystemClock),
                keys,
                senders,
            )?;
            let _ = tx.send(Ok((running.addr, running.server.handle())));
            running.server.await.map_err(|e| e.to_string())
        });
        if let Err(e) = outcome {
            let _ = failed.send(Err(e));
        }
    });
    let (addr, handle) = rx.recv_timeout(Duration::from_secs(10)).map_err(err)??;
    let client = Client::new(&format!("http://{addr}")).map_err(err)?;

    let key = AppSigningKey::generate("k1");
    let app_id = crate::admin::add_app(
        store.as_ref(),
        "MedConnect",
        "k1",
        &key.public_key_b64(),
        SystemClock.now(),
    )
    .map_err(err)?;
    let platform = Platform { app_id, key };
    step(
        out,
        &format!("1. The operator registers the health platform MedConnect at Ghostkey ({addr})."),
    )?;

    let patient = enrol(
        &client,
        &platform,
        &inbox,
        "patient-4821",
        "+33 6 12 34 56 78",
    )
    .await?;
    let mut doctor = enrol(
        &client,
        &platform,
        &inbox,
        "doctor-0917",
        "+33 6 98 76 54 32",
    )
    .await?;
    step(
        out,
        "2. A patient and a doctor enrol. Each phone makes a virtual device, seals it under a\n   \
         user secret that only MedConnect keeps, and stores the sealed copy at Ghostkey;\n   \
         each confirms their phone number with a code Ghostkey sends by SMS.\n   \
         Ghostkey holds: sealed blobs it cannot open. MedConnect holds: the user secrets, no blob.",
    )?;

    let doctor_chain = verified_chain(&client, &platform, patient.id, doctor.id).await?;
    let patient_chain = verified_chain(&client, &platform, patient.id, patient.id).await?;
    let envelope = Envelope::seal(
        patient.id,
        &patient.device,
        &[&doctor_chain, &patient_chain],
        PRESCRIPTION.as_bytes(),
    )
    .map_err(err)?
    .encode()
    .map_err(err)?;
    step(
        out,
        &format!(
            "3. The patient sends the doctor a prescription, encrypted for the doctor's user key\n   \
             (taken from the doctor's verified device chain) and signed by the patient's phone.\n   \
             {} bytes travel; only the patient and the doctor can read them.",
            envelope.len()
        ),
    )?;

    let doctor_id = doctor.id;
    let doctor_number = doctor.phone_number;
    let secret_bytes = *doctor.secret.expose();
    doctor.device = DeviceKeys::generate();
    doctor.user_keys = UserKeys::generate();
    step(
        out,
        "4. The doctor loses their only device: its keys are gone.",
    )?;

    // The new device: the doctor logs in to MedConnect, which hands over the user secret
    // and recover assertions; Ghostkey checks the doctor itself by SMS.
    let secret = UserSecret::from_bytes(secret_bytes);
    let driver = RecoveryDriver::new(&client, &secret, &platform.app_id, doctor_id);
    let methods = driver
        .methods(
            &platform
                .assertion(doctor_id, Purpose::Recover)
                .map_err(err)?,
        )
        .await
        .map_err(err)?;
    let method = methods.methods.first().ok_or("the doctor has no method")?;
    let seen = inbox.messages().len();
    let recovery = driver
        .start(
            &platform
                .assertion(doctor_id, Purpose::Recover)
                .map_err(err)?,
            &method.id,
        )
        .await
        .map_err(err)?;
    let code = code_for(&inbox, &normalise(doctor_number), seen).await?;
    step(
        out,
        &format!(
            "5. On a new device the doctor logs in to MedConnect (factor 1: the user secret and a\n   \
             signed assertion) and types the code Ghostkey sent to {} (factor 2).",
            recovery.masked.as_deref().unwrap_or("the phone")
        ),
    )?;
    let assertions = |purpose: Purpose| platform.assertion(doctor_id, purpose);
    let pinned = platform.pinned();
    let admitted = match driver
        .submit_code_and_admit(&recovery.id, &code, &assertions, &pinned)
        .await
        .map_err(err)?
    {
        Admission::Admitted(new) => new,
        Admission::Waiting { .. } => return Err("unexpected waiting period".into()),
    };
    step(
        out,
        &format!(
            "6. Ghostkey released the sealed virtual device; the new device opened it with the user\n   \
             secret, and the virtual device admitted the new device to the chain ({} blocks).",
            admitted.chain.len
        ),
    )?;

    let patient_chain = verified_chain(&client, &platform, doctor_id, patient.id).await?;
    let own_chain = verified_chain(&client, &platform, doctor_id, doctor_id).await?;
    let user = user_keys(&own_chain, &admitted.device).map_err(err)?;
    let opened = Envelope::decode(&envelope)
        .map_err(err)?
        .open(doctor_id, &user, &patient_chain)
        .map_err(err)?;
    let text = String::from_utf8(opened.to_vec()).map_err(err)?;
    step(
        out,
        &format!("7. The doctor's new device reads the prescription: \"{text}\""),
    )?;
    step(
        out,
        "   At no point could Ghostkey alone, or MedConnect alone, read a key or the prescription.",
    )?;
    handle.stop(true).await;
    Ok(Outcome {
        read_after_recovery: text,
        elapsed: started.elapsed(),
    })
}
