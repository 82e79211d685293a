//! The MQTT sink: each reading to `<topic prefix>/<VIN>` at QoS 1; a batch
//! counts as delivered when every PUBACK came back. Each connection is fresh
//! (clean session): after any failure the client is dropped and the batch is
//! published again on a new one, so retransmission is ours alone.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Broker, Outgoing};

/// Longest wait for one batch's PUBACKs before it counts as failed.
const BATCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the broker's CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct MqttBroker {
    options: MqttOptions,
    topic: String,
    conn: Option<Conn>,
    connected: Arc<AtomicBool>,
}

/// One live connection: the client, and the events its event loop task forwards.
struct Conn {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Ack, String>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the event loop reports.
enum Ack {
    Connected,
    /// A QoS 1 publish went out with this packet id.
    Sent(u16),
    /// Its PUBACK came back.
    Acked(u16),
}

impl MqttBroker {
    /// Checks the settings (`mqtt://[USER:PASSWORD@]HOST[:PORT]`); connects on first publish.
    pub fn new(url: &str, topic: &str, client_id: &str) -> anyhow::Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "LOCKSTEP_MQTT_URL must look like mqtt://[USER:PASSWORD@]HOST[:PORT] (no TLS in this build)"
            )
        };
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (hostport, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        anyhow::ensure!(!host.is_empty(), bad());
        anyhow::ensure!(
            !topic.is_empty() && !topic.contains(['+', '#']) && !topic.ends_with('/'),
            "LOCKSTEP_MQTT_TOPIC={topic:?} is not a topic prefix (e.g. lockstep/telemetry)"
        );
        // MQTT 3.1.1 brokers must accept 23 characters of client id: a hash
        // of this server's instance name keeps it short and distinct.
        let id = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            client_id.hash(&mut h);
            format!("lockstep-{:014x}", h.finish() >> 8)
        };
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(15));
        options.set_clean_session(true);
        if let Some(c) = creds {
            let (user, pass) = c.split_once(':').unwrap_or((c, ""));
            options.set_credentials(user, pass);
        }
        Ok(Self {
            options,
            topic: topic.to_owned(),
            conn: None,
            connected: Arc::default(),
        })
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        let (client, eventloop) = AsyncClient::new(self.options.clone(), 1024);
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, tx, self.connected.clone()));
        let first = tokio::time::timeout(CONNECT_TIMEOUT, events.recv())
            .await
            .context("no CONNACK in time")?;
        match first {
            Some(Ok(Ack::Connected)) => {
                self.conn = Some(Conn {
                    client,
                    events,
                    task,
                });
                Ok(())
            }
            Some(Err(e)) => {
                task.abort();
                Err(anyhow::anyhow!("cannot connect to the MQTT broker: {e}"))
            }
            _ => {
                task.abort();
                Err(anyhow::anyhow!("the MQTT connection ended before CONNACK"))
            }
        }
    }

    async fn publish_all(&mut self, batch: &[Outgoing]) -> anyhow::Result<()> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let conn = self.conn.as_mut().context("not connected")?;
        let mut in_flight = HashSet::new();
        let (mut sent, mut acked) = (0usize, 0usize);
        for m in batch {
            conn.client
                .publish_bytes(
                    format!("{}/{}", self.topic, m.vin),
                    QoS::AtLeastOnce,
                    false,
                    m.payload.clone(),
                )
                .await
                .context("MQTT publish")?;
            // Take what the event loop reported so far, so its queue stays short.
            while let Ok(ev) = conn.events.try_recv() {
                note(
                    ev.map_err(anyhow::Error::msg)?,
                    &mut in_flight,
                    &mut sent,
                    &mut acked,
                );
            }
        }
        while acked < batch.len() {
            let ev = conn
                .events
                .recv()
                .await
                .context("the MQTT connection ended")?;
            note(
                ev.map_err(anyhow::Error::msg)?,
                &mut in_flight,
                &mut sent,
                &mut acked,
            );
        }
        Ok(())
    }
}

fn note(ev: Ack, in_flight: &mut HashSet<u16>, sent: &mut usize, acked: &mut usize) {
    match ev {
        Ack::Sent(pkid) => {
            in_flight.insert(pkid);
            *sent += 1;
        }
        Ack::Acked(pkid) => {
            if in_flight.remove(&pkid) {
                *acked += 1;
            }
        }
        Ack::Connected => {}
    }
}

/// Polls the event loop, forwarding connection, publish and PUBACK events;
/// stops at the first error (the connection is then replaced).
async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Result<Ack, String>>,
    connected: Arc<AtomicBool>,
) {
    loop {
        let ack = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected.store(true, Ordering::Relaxed);
                Ack::Connected
            }
            Ok(Event::Incoming(Packet::PubAck(p))) => Ack::Acked(p.pkid),
            Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Ack::Sent(pkid),
            Ok(_) => continue,
            Err(e) => {
                connected.store(false, Ordering::Relaxed);
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        if tx.send(Ok(ack)).is_err() {
            return;
        }
    }
}

impl Broker for MqttBroker {
    const NAME: &'static str = "mqtt";

    async fn publish(&mut self, batch: &[Outgoing]) -> anyhow::Result<()> {
        let r = tokio::time::timeout(BATCH_TIMEOUT, self.publish_all(batch))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no PUBACK within {BATCH_TIMEOUT:?}")));
        if r.is_err() {
            self.conn = None;
            self.connected.store(false, Ordering::Relaxed);
        }
        r
    }

    fn connected(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }
}
