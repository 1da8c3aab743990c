//! The SMS gateway of the benchmark: answers Ghostkey's signed webhook the way a gateway
//! does (200 once it has the message) and keeps the last code sent to each number, so
//! the load generator can type it. It runs on its own thread with its own actix system.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Message {
    to: String,
    body: String,
}

/// Codes received, by phone number, oldest first.
#[derive(Clone, Default)]
pub struct Inbox(Arc<Mutex<HashMap<String, Vec<String>>>>);

impl Inbox {
    /// The `n`-th code (0-based) sent to `to`, waiting up to `timeout` for it.
    pub async fn code(&self, to: &str, n: usize, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self
                .0
                .lock()
                .map_err(|_| "inbox poisoned".to_owned())?
                .get(to)
                .and_then(|codes| codes.get(n).cloned())
            {
                return Ok(code);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no code #{n} for a bench number within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Messages received in all.
    pub fn total(&self) -> usize {
        self.0
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

/// The first run of `digits` digits in `text`.
fn find_code(text: &str, digits: usize) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == digits)
        .map(str::to_owned)
}

async fn receive(inbox: web::Data<Inbox>, message: web::Json<Message>) -> HttpResponse {
    // Notices carry no code; only code messages are kept.
    if let Some(code) = find_code(&message.body, 8) {
        if let Ok(mut map) = inbox.0.lock() {
            map.entry(message.to.clone()).or_default().push(code);
        }
    }
    HttpResponse::Ok().finish()
}

/// Starts the gateway on a loopback port; returns its address and inbox.
pub fn start() -> Result<(SocketAddr, Inbox), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let inbox = Inbox::default();
    let shared = inbox.clone();
    std::thread::spawn(move || {
        let served = actix_web::rt::System::new().block_on(async move {
            HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(shared.clone()))
                    .route("/sms", web::post().to(receive))
            })
            .workers(1)
            .listen(listener)?
            .run()
            .await
        });
        if let Err(e) = served {
            eprintln!("bench SMS gateway stopped: {e}");
        }
    });
    Ok((addr, inbox))
}

#[cfg(test)]
mod tests {
    use super::find_code;

    #[test]
    fn finds_the_eight_digit_code() {
        assert_eq!(
            find_code("Acme: your code is 12345678. It expires in 10 min", 8).as_deref(),
            Some("12345678")
        );
        assert_eq!(find_code("reference 42, no code", 8), None);
    }
}
