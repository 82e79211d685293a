//! `GET /ws`: one task per client. It subscribes to the hub before taking
//! the history (so nothing committed in between is missed; the history is
//! read once per commit for every client, `services::live`), sends `history`,
//! the current `compression_stats` and the recent `log` lines (the hub's
//! backlog), then forwards hub messages that pass the client's
//! VIN filter, and a `compression_stats` on every statistics tick (the
//! fleet totals plus the client's own vehicles: see `actors::stats`). A reader task handles client messages (`subscribe`,
//! `start_logger`, `stop_logger`). Every send races the shutdown token, so a
//! stuck client can neither stall shutdown nor anyone else.
//!
//! Every close the server decides says why (axum's graceful shutdown sends
//! nothing for upgraded connections):
//! - 1001 "server shutting down";
//! - 1009 when a client message exceeds 64 KiB;
//! - 1013 ("try again later") for a client that does not read: a burst not
//!   written within `LOCKSTEP_WS_SEND_TIMEOUT_S` means its socket buffers
//!   are full, so it is disconnected instead of holding its backlog forever.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse as _, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::actors::logger::{Started, Stopped};
use crate::auth::Principal;
use crate::http::extract::Operator;
use crate::protocol::{ClientMsg, Level, ServerMsg};
use crate::services::limits::WsFull;
use crate::state::AppState;

/// Most VINs one client may subscribe to (each costs a route entry in the hub).
const MAX_SUBSCRIBED_VINS: usize = 1000;

/// Largest client message, bytes.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// tungstenite's read buffer per client. Its default (128 KiB) is zero-filled
/// on the first read, so every idle client cost ~140 KiB of RSS. Clients only
/// send small control messages; a bigger one grows the buffer as needed.
const READ_BUFFER: usize = 2 * 1024;

/// Bytes buffered before tungstenite writes to the socket (default 128 KiB).
/// The client loop flushes after each burst anyway, so this only bounds how
/// much one client's write buffer holds (it keeps its capacity, and the
/// pages it touched, for the connection's life): a burst bigger than this
/// goes out in several writes. The buffer peaks at this plus one message.
const WRITE_BUFFER: usize = 4 * 1024;

/// A `log` message for this client only.
fn reply(level: Level, source: &str, message: &str) -> String {
    ServerMsg::log(level, source, message).to_text()
}

/// From the reader task to the writer loop. Kept small: the channel
/// allocates a block of 32 of them per client (1,824 bytes per client under
/// massif with the filter's set inline).
enum Ctl {
    #[expect(
        clippy::box_collection,
        reason = "the set is rare; its 48 bytes would size every slot"
    )]
    Filter(Box<HashSet<String>>),
    Send(Box<str>),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// Why the server ends a connection.
const SHUTTING_DOWN: (u16, &str) = (close_code::AWAY, "server shutting down");
const TOO_SLOW: (u16, &str) = (
    close_code::AGAIN,
    "too slow: messages were not read in time; reconnect",
);
const TOO_BIG: (u16, &str) = (close_code::SIZE, "message too big: at most 64 KiB");

/// How a send ended.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Ok,
    /// The client is gone (or shutdown came first).
    Gone,
    /// Not written within the send timeout: the client does not read.
    Stuck,
}

/// `GET /ws`.
#[utoipa::path(get, path = "/ws", tag = "live",
    description = "WebSocket upgrade. The server sends `ServerMsg` JSON texts; clients send `ClientMsg`.",
    responses(
        (status = 101, description = "Switching protocols; messages: ServerMsg (server to client), ClientMsg (client to server)"),
        (status = 400, description = "Not a WebSocket upgrade request"),
    ))]
pub async fn upgrade(
    ws: WebSocketUpgrade,
    operator: Operator,
    Extension(principal): Extension<Principal>,
    State(app): State<AppState>,
) -> Response {
    let (admin, peer) = (operator.allowed, operator.peer);
    let credential = principal.limit_key();
    let slot = match app.limits.ws_slot(peer.ip(), credential.as_deref()) {
        Ok(slot) => slot,
        Err(full) => {
            let message = match full {
                WsFull::PerIp(max) => format!(
                    "this address has {max} WebSocket connections open already (LOCKSTEP_WS_PER_IP)"
                ),
                WsFull::PerCredential(max) => format!(
                    "this credential has {max} WebSocket connections open already (LOCKSTEP_WS_PER_CREDENTIAL)"
                ),
            };
            return crate::http::error::ApiError::TooManyRequests {
                message,
                retry_after_s: 5,
            }
            .into_response();
        }
    };
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let cancel = app.shutdown.clone();
            let tracker = app.tasks.clone();
            tracker.track_future(async move {
                client(socket, app, admin, peer, cancel).await;
                drop(slot);
            })
        })
}

type Sink = SplitSink<WebSocket, Message>;

/// Messages a client sends in one write at most (taken from what is already
/// queued for it; the rest of its queue stays in the hub, bounded as before).
const BURST: usize = 128;

/// When [`send_burst`] writes to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// After the last message: one write per burst of small messages.
    Once,
    /// After each of the first `n` messages (the history chunks of up to
    /// [`crate::services::live::HISTORY_CHUNK`]), then once: a chunk added
    /// to a write buffer still holding most of the previous one would double
    /// the buffer's capacity, which it keeps for the connection's life (about
    /// 8 KiB per client instead of 3). Small messages after them share one
    /// write.
    EachOf(usize),
}

/// Sends the burst (feed each, flush as `flush` says) unless shutdown comes first or
/// it takes longer than `limit`. Leaves `burst` empty.
async fn send_burst(
    sink: &mut Sink,
    burst: &mut Vec<Utf8Bytes>,
    cancel: &CancellationToken,
    limit: Duration,
    flush: Flush,
) -> Sent {
    let write = async {
        for (i, text) in burst.drain(..).enumerate() {
            sink.feed(Message::Text(text)).await?;
            if matches!(flush, Flush::EachOf(n) if i < n) {
                sink.flush().await?;
            }
        }
        sink.flush().await
    };
    let sent = tokio::select! {
        r = tokio::time::timeout(limit, write) => match r {
            Ok(Ok(())) => Sent::Ok,
            Ok(Err(_)) => Sent::Gone,
            Err(_) => Sent::Stuck,
        },
        () = cancel.cancelled() => Sent::Gone,
    };
    burst.clear();
    sent
}

/// What the client loop does next.
enum Step {
    Stop,
    /// The hub is gone: send what was taken, then stop.
    Closed,
    Filter(HashSet<String>),
    Text(String),
    Send,
    /// A `compression_stats` tick.
    Stats,
    Close(u16, &'static str),
}

#[tracing::instrument(name = "ws_client", skip_all, fields(%peer))]
async fn client(
    socket: WebSocket,
    app: AppState,
    admin: bool,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    let _guard = app.hub.client();
    let (mut events, logs) = app.hub.subscribe_with_logs(admin);
    let (mut sink, stream) = socket.split();
    tracing::debug!("WebSocket client connected.");

    // Subscribed first, so that every reading is in the history or comes live.
    let history = app.live_history.chunks(app.hub.generation()).await;
    // The current statistics at once, rather than at the next change; then
    // the recent log lines, so a reloaded page shows what happened before.
    // Ticks from here on: the statistics sent now count as seen.
    let mut ticks = app.stats.ticks();
    let mut first: Vec<Utf8Bytes> = history.iter().cloned().collect();
    let chunks = first.len();
    drop(history);
    first.push(app.stats.to_msg(events.vins()).to_text().into());
    first.extend(logs);
    app.metrics.ws_messages(first.len());
    let limit = app.settings.ws_send_timeout();
    let sent = send_burst(&mut sink, &mut first, &cancel, limit, Flush::EachOf(chunks)).await;
    drop(first); // not kept for the connection's life
    match sent {
        Sent::Ok => {}
        Sent::Gone => return close(sink, SHUTTING_DOWN).await,
        Sent::Stuck => return close(sink, TOO_SLOW).await,
    }

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Ctl>(16);
    let reader = tokio::spawn(read_loop(
        stream,
        app.clone(),
        admin,
        ctl_tx,
        cancel.clone(),
    ));

    let mut burst: Vec<Utf8Bytes> = Vec::new();
    let mut why = SHUTTING_DOWN;
    let mut ticks_open = true;
    let linger = app.settings.ws_linger();
    let mut next_write = Instant::now();
    loop {
        // Whatever is already queued goes out with the first message: one
        // write (and one wake-up of the client) per burst, not per message.
        // While readings stream in, the bursts are kept `linger` apart, so
        // at a thousand readings a second a client gets a burst per 20 ms
        // rather than a write per reading (the socket writes were most of
        // the fan-out's CPU); after a quiet spell the first one goes at once.
        let paced = Instant::now() >= next_write;
        let step = tokio::select! {
            () = cancel.cancelled() => Step::Stop,
            ctl = ctl_rx.recv() => match ctl {
                None => Step::Stop, // the client went away
                Some(Ctl::Filter(f)) => Step::Filter(*f),
                Some(Ctl::Send(text)) => Step::Text(text.into()),
                Some(Ctl::Close(code, reason)) => Step::Close(code, reason),
            },
            open = events.recv(&mut burst, BURST), if paced => if open { Step::Send } else { Step::Closed },
            () = tokio::time::sleep_until(next_write), if !paced => Step::Send,
            tick = ticks.changed(), if ticks_open => match tick {
                Ok(()) => Step::Stats,
                Err(_) => {
                    ticks_open = false;
                    Step::Send
                }
            },
        };
        let closed = match step {
            Step::Stop => break,
            Step::Closed => true,
            Step::Filter(f) => {
                events.set_filter(f, &mut burst);
                false
            }
            Step::Text(t) => {
                burst.push(t.into());
                false
            }
            Step::Send => false,
            Step::Stats => {
                // Unfiltered: the text serialised once for everyone; else
                // the totals plus this client's vehicles.
                let vins = events.vins();
                burst.push(if vins.is_empty() {
                    ticks.borrow_and_update().clone()
                } else {
                    app.stats.to_msg(vins).to_text().into()
                });
                false
            }
            Step::Close(code, reason) => {
                why = (code, reason);
                break;
            }
        };
        app.metrics.ws_messages(burst.len());
        if !burst.is_empty() {
            // A full burst means more is queued: no pause before the next.
            let pause = if burst.len() >= BURST {
                Duration::ZERO
            } else {
                linger
            };
            match send_burst(&mut sink, &mut burst, &cancel, limit, Flush::Once).await {
                Sent::Ok => next_write = Instant::now() + pause,
                Sent::Gone => break,
                Sent::Stuck => {
                    tracing::info!("Disconnecting a WebSocket client that does not read.");
                    app.hub.note_slow_disconnect();
                    why = TOO_SLOW;
                    break;
                }
            }
        }
        if closed {
            break;
        }
    }
    reader.abort();
    close(sink, why).await;
    tracing::debug!("WebSocket client done.");
}

/// Sends a Close frame (best effort, bounded in time) and drops the socket.
async fn close(mut sink: Sink, (code, reason): (u16, &'static str)) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.flush().await;
    })
    .await;
}

async fn read_loop(
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    app: AppState,
    admin: bool,
    ctl: mpsc::Sender<Ctl>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = cancel.cancelled() => return,
            m = stream.next() => m,
        };
        let text = match msg {
            Some(Err(e)) => {
                if is_too_big(e) {
                    let _ = ctl.send(Ctl::Close(TOO_BIG.0, TOO_BIG.1)).await;
                }
                return;
            }
            None | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
        };
        let reply = match serde_json::from_str::<ClientMsg>(&text) {
            Err(e) => Some(reply(
                Level::Warn,
                "server",
                &format!("unrecognised client message: {e}"),
            )),
            Ok(ClientMsg::Subscribe { vins }) => match subscription(vins.unwrap_or_default()) {
                Ok(set) => {
                    if ctl.send(Ctl::Filter(Box::new(set))).await.is_err() {
                        return;
                    }
                    None
                }
                // The filter stays as it was.
                Err(why) => Some(reply(Level::Error, "server", &why)),
            },
            Ok(ClientMsg::StartLogger(_) | ClientMsg::StopLogger) if !admin => Some(reply(
                Level::Error,
                "server",
                "logger control refused: it needs the operator role (log in, or send Authorization: Bearer <token>)",
            )),
            Ok(ClientMsg::StartLogger(req)) => Some(match app.logger.start(req).await {
                Ok(Started::Started { pid }) => reply(
                    Level::Info,
                    "server",
                    &format!("logger started (pid {pid})"),
                ),
                Ok(Started::AlreadyRunning { pid }) => reply(
                    Level::Warn,
                    "server",
                    &format!("logger already running (pid {pid})"),
                ),
                Err(e) => reply(Level::Error, "server", &format!("logger not started: {e}")),
            }),
            Ok(ClientMsg::StopLogger) => Some(match app.logger.stop().await {
                Stopped::Stopped { exit_code } => reply(
                    Level::Info,
                    "server",
                    &format!(
                        "logger stopped (exit code {})",
                        exit_code.map_or("none".into(), |c| c.to_string())
                    ),
                ),
                Stopped::NotRunning => reply(Level::Info, "server", "logger not running"),
            }),
        };
        if let Some(r) = reply
            && ctl.send(Ctl::Send(r.into())).await.is_err()
        {
            return;
        }
    }
}

/// Whether a read failed because the client's message exceeds the limit.
fn is_too_big(e: axum::Error) -> bool {
    use tungstenite::error::{CapacityError, Error};
    matches!(
        e.into_inner().downcast_ref::<Error>(),
        Some(Error::Capacity(CapacityError::MessageTooLong { .. }))
    )
}

/// A `subscribe` list as a filter: at most [`MAX_SUBSCRIBED_VINS`] entries,
/// each a valid VIN, so a client cannot make the hub route arbitrary keys.
fn subscription(vins: Vec<String>) -> Result<HashSet<String>, String> {
    if vins.len() > MAX_SUBSCRIBED_VINS {
        return Err(format!(
            "subscribe refused: {} VINs, at most {MAX_SUBSCRIBED_VINS}",
            vins.len()
        ));
    }
    if let Some((v, e)) = vins
        .iter()
        .find_map(|v| lockstep_codec::Vin::parse(v).err().map(|e| (v, e)))
    {
        let shown: String = v.chars().take(24).collect();
        return Err(format!("subscribe refused: {shown:?} is not a VIN ({e})"));
    }
    Ok(vins.into_iter().collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn subscriptions_are_real_vins_and_bounded() {
        let ok = super::subscription(vec!["1HGCM82633A004352".into()]).unwrap();
        assert!(ok.contains("1HGCM82633A004352"));
        let e = super::subscription(vec!["1HGCM82633A004352".into(), "nope".into()]).unwrap_err();
        assert!(e.contains("\"nope\" is not a VIN"), "{e}");
        let many = (0..=super::MAX_SUBSCRIBED_VINS)
            .map(|i| format!("1HGCM8263{i:08}"))
            .collect();
        assert!(
            super::subscription(many)
                .unwrap_err()
                .contains("at most 1000")
        );
    }
}
