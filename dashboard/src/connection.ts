// The WebSocket connection with automatic reconnect and exponential backoff. The socket
// constructor, timers and randomness are injected so tests run it without a browser or network.

import { parseServerMessage, type ClientMessage, type ServerMessage } from './protocol';
import type { ConnectionPhase } from './store';

export interface BackoffOptions {
  /** First retry delay. */
  baseMs: number;
  /** Upper bound of any delay. */
  maxMs: number;
  factor: number;
  /** Fraction of random spread either side (0.2 = ±20 %), so many pages do not retry in step. */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 10_000, factor: 2, jitter: 0.2 };

/**
 * Delay before reconnect attempt number `attempt` (0 = first retry after a drop):
 * base·factor^attempt capped at max, then spread by ±jitter using `random()` in [0, 1).
 * With random() = 0.5 the schedule is exactly 500, 1000, 2000, 4000, 8000, 10000, 10000, ... ms.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const raw = Math.min(opts.maxMs, opts.baseMs * Math.pow(opts.factor, Math.max(0, attempt)));
  const spread = 1 - opts.jitter + 2 * opts.jitter * random();
  return Math.round(Math.min(opts.maxMs * (1 + opts.jitter), raw * spread));
}

/** The part of the browser WebSocket this module uses. */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface ConnectionOptions {
  createSocket: (url: string) => SocketLike;
  timers?: Timers;
  random?: () => number;
  backoff?: BackoffOptions;
}

export interface ConnectionHandlers {
  onMessage(msg: ServerMessage): void;
  onPhase(phase: ConnectionPhase, attempt: number, retryInMs: number | null): void;
  /** Called after each successful (re)connect, before queued work; e.g. to re-subscribe. */
  onOpen?(): void;
}

const OPEN = 1;

const defaultTimers: Timers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof globalThis.setTimeout>),
};

export class Connection {
  private socket: SocketLike | null = null;
  private timer: unknown = null;
  private attempt = 0;
  private stopped = true;
  private readonly timers: Timers;
  private readonly random: () => number;
  private readonly backoff: BackoffOptions;

  constructor(
    private readonly url: string,
    private readonly handlers: ConnectionHandlers,
    private readonly opts: ConnectionOptions,
  ) {
    this.timers = opts.timers ?? defaultTimers;
    this.random = opts.random ?? Math.random;
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    this.open('connecting');
  }

  stop(): void {
    this.stopped = true;
    if (this.timer !== null) this.timers.clearTimeout(this.timer);
    this.timer = null;
    const s = this.socket;
    this.socket = null;
    if (s) {
      s.onclose = s.onerror = s.onmessage = s.onopen = null;
      s.close();
    }
  }

  get connected(): boolean {
    return this.socket !== null && this.socket.readyState === OPEN;
  }

  /** Sends when connected; returns false (message not sent) otherwise. */
  send(msg: ClientMessage): boolean {
    if (!this.connected) return false;
    this.socket!.send(JSON.stringify(msg));
    return true;
  }

  private open(phase: ConnectionPhase): void {
    this.timer = null;
    this.handlers.onPhase(phase, this.attempt, null);
    let socket: SocketLike;
    try {
      socket = this.opts.createSocket(this.url);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.handlers.onPhase('connected', 0, null);
      this.handlers.onOpen?.();
    };
    socket.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      const msg = parseServerMessage(ev.data);
      if (msg) this.handlers.onMessage(msg);
    };
    // Browsers fire `error` then `close`; only `close` drives the retry.
    socket.onerror = () => {};
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.scheduleRetry();
    };
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.handlers.onPhase('reconnecting', this.attempt, delay);
    this.attempt += 1;
    this.timer = this.timers.setTimeout(() => this.open('reconnecting'), delay);
  }
}

/** `ws(s)://<host>/ws` for the page's own origin. */
export function wsUrl(location: { protocol: string; host: string }): string {
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
}
