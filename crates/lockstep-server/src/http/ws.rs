//! `GET /ws`: one task per client. It subscribes to the hub before reading
//! history (so nothing committed in between is missed), sends `history`,
//! the current `compression_stats` and the recent `log` lines (the hub's
//! backlog), then forwards hub messages that pass the client's
//! VIN filter. A reader task handles client messages (`subscribe`,
//! `start_logger`, `stop_logger`). Every send races the shutdown token, so a
//! stuck client can neither stall shutdown nor anyone else; on shutdown the
//! client gets a Close frame (axum's graceful shutdown does not do that for
//! upgraded connections).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::actors::logger::{Started, Stopped};
use crate::http::extract::Operator;
use crate::protocol::{ClientMsg, Level, ReadingJson, ServerMsg};
use crate::state::AppState;

/// Largest client message, bytes.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// tungstenite's read buffer per client. Its default (128 KiB) is zero-filled
/// on the first read, so every idle client cost ~140 KiB of RSS. Clients only
/// send small control messages; a bigger one grows the buffer as needed.
const READ_BUFFER: usize = 2 * 1024;

/// Bytes buffered before tungstenite writes to the socket (default 128 KiB).
/// The client loop flushes after each burst anyway, so this only bounds how
/// much one client's write buffer holds (it keeps its capacity for the
/// connection's life): a burst bigger than this goes out in several writes.
const WRITE_BUFFER: usize = 16 * 1024;

/// A `log` message for this client only.
fn reply(level: Level, source: &str, message: &str) -> String {
    ServerMsg::log(level, source, message).to_text()
}

/// From the reader task to the writer loop.
enum Ctl {
    Filter(HashSet<String>),
    Send(String),
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
    State(app): State<AppState>,
) -> Response {
    let (admin, peer) = (operator.allowed, operator.peer);
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let cancel = app.shutdown.clone();
            let tracker = app.tasks.clone();
            tracker.track_future(client(socket, app, admin, peer, cancel))
        })
}

type Sink = SplitSink<WebSocket, Message>;

/// Messages a client sends in one write at most (taken from what is already
/// queued for it; the rest of its queue stays in the hub, bounded as before).
const BURST: usize = 128;

/// Sends the burst (feed each, flush once) unless shutdown comes first;
/// `false` = stop serving this client. Leaves `burst` empty.
async fn send_burst(
    sink: &mut Sink,
    burst: &mut Vec<Utf8Bytes>,
    cancel: &CancellationToken,
) -> bool {
    let write = async {
        for text in burst.drain(..) {
            sink.feed(Message::Text(text)).await?;
        }
        sink.flush().await
    };
    let ok = tokio::select! {
        r = write => r.is_ok(),
        () = cancel.cancelled() => false,
    };
    burst.clear();
    ok
}

/// What the client loop does next.
enum Step {
    Stop,
    /// The hub is gone: send what was taken, then stop.
    Closed,
    Filter(HashSet<String>),
    Text(String),
    Send,
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
    let (mut events, logs) = app.hub.subscribe_with_logs();
    let (mut sink, stream) = socket.split();
    tracing::debug!("WebSocket client connected.");

    let history = match app.store.recent(app.settings.history).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "History unavailable for a new WebSocket client.");
            Vec::new()
        }
    };
    let history = ServerMsg::History(
        history
            .into_iter()
            .map(|row| ReadingJson {
                row,
                signals: app.signals.clone(),
            })
            .collect(),
    );
    // The current statistics at once, rather than at the next change; then
    // the recent log lines, so a reloaded page shows what happened before.
    let mut first: Vec<Utf8Bytes> = vec![
        history.to_text().into(),
        app.stats.to_msg().to_text().into(),
    ];
    drop(history);
    first.extend(logs);
    app.metrics.ws_messages(first.len());
    if !send_burst(&mut sink, &mut first, &cancel).await {
        return close(sink).await;
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
    loop {
        // Whatever is already queued goes out with the first message: one
        // write (and one wake-up of the client) per burst, not per message.
        let step = tokio::select! {
            () = cancel.cancelled() => Step::Stop,
            ctl = ctl_rx.recv() => match ctl {
                None => Step::Stop, // the client went away
                Some(Ctl::Filter(f)) => Step::Filter(f),
                Some(Ctl::Send(text)) => Step::Text(text),
            },
            open = events.recv(&mut burst, BURST) => if open { Step::Send } else { Step::Closed },
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
        };
        app.metrics.ws_messages(burst.len());
        if !burst.is_empty() && !send_burst(&mut sink, &mut burst, &cancel).await || closed {
            break;
        }
    }
    reader.abort();
    close(sink).await;
    tracing::debug!("WebSocket client done.");
}

/// Sends a Close frame (best effort, bounded in time) and drops the socket.
async fn close(mut sink: Sink) {
    let frame = CloseFrame {
        code: close_code::AWAY,
        reason: Utf8Bytes::from_static("server shutting down"),
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
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
        };
        let reply = match serde_json::from_str::<ClientMsg>(&text) {
            Err(e) => Some(reply(
                Level::Warn,
                "server",
                &format!("unrecognised client message: {e}"),
            )),
            Ok(ClientMsg::Subscribe { vins }) => {
                let set: HashSet<String> = vins.unwrap_or_default().into_iter().collect();
                if ctl.send(Ctl::Filter(set)).await.is_err() {
                    return;
                }
                None
            }
            Ok(ClientMsg::StartLogger(_) | ClientMsg::StopLogger) if !admin => Some(reply(
                Level::Error,
                "server",
                "logger control refused: connect from loopback or send Authorization: Bearer <LOCKSTEP_ADMIN_TOKEN>",
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
            && ctl.send(Ctl::Send(r)).await.is_err()
        {
            return;
        }
    }
}
