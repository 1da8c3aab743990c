//! A development sink that keeps messages in memory, where the process that runs the
//! server can read them (the demo's "phones"). Development only, like `dev-log`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use secrecy::ExposeSecret;

use super::{Outgoing, SendError, Sender};

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The destination.
    pub to: String,
    /// The text.
    pub body: String,
}

/// What the sink received, shared with its reader.
#[derive(Debug, Clone, Default)]
pub struct Inbox(Arc<Mutex<Vec<Delivered>>>);

impl Inbox {
    /// Every message so far, in order.
    pub fn messages(&self) -> Vec<Delivered> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The sender side.
pub struct DevInbox {
    inbox: Inbox,
}

impl DevInbox {
    /// A sink and the inbox it fills.
    pub fn new() -> (DevInbox, Inbox) {
        let inbox = Inbox::default();
        (
            DevInbox {
                inbox: inbox.clone(),
            },
            inbox,
        )
    }
}

#[async_trait]
impl Sender for DevInbox {
    fn name(&self) -> &'static str {
        "dev-inbox"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let mut messages = self
            .inbox
            .0
            .lock()
            .map_err(|_| SendError::transient("inbox lock poisoned"))?;
        messages.push(Delivered {
            to: message.to.expose_secret().to_owned(),
            body: message.body.expose_secret().to_owned(),
        });
        Ok(())
    }

    fn is_development(&self) -> bool {
        true
    }
}
