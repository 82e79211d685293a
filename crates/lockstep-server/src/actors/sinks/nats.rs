//! The NATS JetStream sink: each reading to `<subject prefix>.<VIN>` in one
//! stream (created if missing), with `Nats-Msg-Id: <vin>/<session>/<seq>` so
//! JetStream drops a republished reading within its duplicate window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, stream};

use super::{Broker, Outgoing};

/// Longest wait for one batch's acknowledgements before it counts as failed
/// (and is published again; JetStream drops the copies it already has).
const BATCH_TIMEOUT: Duration = Duration::from_secs(20);

pub struct NatsBroker {
    url: String,
    stream: String,
    subject: String,
    js: Option<jetstream::Context>,
    /// The stream exists (checked once per connection, and after a failure).
    stream_ready: bool,
    connected: Arc<AtomicBool>,
}

impl NatsBroker {
    /// Checks the settings; connects on first publish.
    pub fn new(url: &str, stream: &str, subject: &str) -> anyhow::Result<Self> {
        url.parse::<async_nats::ServerAddr>()
            .context("LOCKSTEP_NATS_URL is not a NATS URL (e.g. nats://127.0.0.1:4222)")?;
        anyhow::ensure!(
            !stream.is_empty() && !stream.contains(['.', ' ', '*', '>', '\t']),
            "LOCKSTEP_NATS_STREAM={stream:?} is not a JetStream stream name (no spaces, dots, * or >)"
        );
        anyhow::ensure!(
            !subject.is_empty()
                && !subject.contains([' ', '*', '>', '\t'])
                && !subject.ends_with('.'),
            "LOCKSTEP_NATS_SUBJECT={subject:?} is not a subject prefix (e.g. lockstep.telemetry)"
        );
        Ok(Self {
            url: url.to_owned(),
            stream: stream.to_owned(),
            subject: subject.to_owned(),
            js: None,
            stream_ready: false,
            connected: Arc::default(),
        })
    }

    async fn context(&mut self) -> anyhow::Result<jetstream::Context> {
        if self.js.is_none() {
            // Connected once, the client reconnects by itself (for ever, with back-off).
            let connected = self.connected.clone();
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(3))
                .event_callback(move |event| {
                    let connected = connected.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                connected.store(true, Ordering::Relaxed)
                            }
                            async_nats::Event::Disconnected | async_nats::Event::Closed => {
                                connected.store(false, Ordering::Relaxed)
                            }
                            _ => {}
                        }
                    }
                })
                .connect(self.url.as_str())
                .await
                .context("cannot connect to NATS")?;
            // The callback reports changes only: the first connection is up now.
            self.connected.store(true, Ordering::Relaxed);
            self.js = Some(jetstream::new(client));
            self.stream_ready = false;
        }
        let js = self.js.clone().context("no JetStream context")?;
        if !self.stream_ready {
            js.get_or_create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.subject)],
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create or find JetStream stream {}", self.stream))?;
            self.stream_ready = true;
        }
        Ok(js)
    }

    async fn publish_all(&mut self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let js = self.context().await?;
        let mut acks = Vec::with_capacity(batch.len());
        for m in batch {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, m.msg_id.as_str());
            let ack = js
                .publish_with_headers(
                    format!("{}.{}", self.subject, m.vin),
                    headers,
                    m.payload.clone(),
                )
                .await
                .context("JetStream publish")?;
            acks.push(ack.into_future());
        }
        futures_util::future::try_join_all(acks)
            .await
            .context("JetStream did not acknowledge")?;
        Ok(())
    }
}

impl Broker for NatsBroker {
    const NAME: &'static str = "nats";

    async fn publish(&mut self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let r = tokio::time::timeout(BATCH_TIMEOUT, self.publish_all(batch))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no acknowledgement within {BATCH_TIMEOUT:?}"
                ))
            });
        if r.is_err() {
            // The stream may have been deleted or the server replaced: check again.
            self.stream_ready = false;
        }
        r
    }

    fn connected(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }
}
