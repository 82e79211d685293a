// Glue between the connection, the HTTP endpoints and the store: what the page does on connect,
// when the user picks vehicles, and when the logger buttons are pressed. No DOM, no React.

import { Connection, type ConnectionOptions } from './connection';
import type { LoggerStartRequest, LoggerStatus, VehicleSummary } from './protocol';
import { Store } from './store';

export type FetchLike = (input: string, init?: { method?: string; headers?: Record<string, string>; body?: string }) => Promise<{
  ok: boolean;
  status: number;
  json(): Promise<unknown>;
}>;

export interface ClientOptions extends ConnectionOptions {
  wsUrl: string;
  /** Base for HTTP calls ('' = same origin). */
  httpBase?: string;
  fetch: FetchLike;
  now?: () => number;
  /** How often the vehicle list (last-seen of unsubscribed vehicles too) is refreshed. */
  vehiclesPollMs?: number;
  setInterval?: (fn: () => void, ms: number) => unknown;
  clearInterval?: (h: unknown) => void;
}

function errorText(body: unknown, status: number): string {
  if (body && typeof body === 'object') {
    const b = body as Record<string, unknown>;
    if (typeof b.error === 'string') return b.error;
    if (b.status === 'already_running') return `The logger is already running (pid ${String(b.pid)}).`;
  }
  return `The server answered HTTP ${status}.`;
}

export class DashboardClient {
  readonly store: Store;
  readonly connection: Connection;
  private readonly now: () => number;
  private poll: unknown = null;
  /** Sent as `Authorization: Bearer …` on logger calls; only needed when not on loopback. */
  private adminToken = '';

  constructor(
    private readonly opts: ClientOptions,
    store?: Store,
  ) {
    this.store = store ?? new Store();
    this.now = opts.now ?? Date.now;
    const dispatch = this.store.dispatch;
    this.connection = new Connection(
      opts.wsUrl,
      {
        onMessage: (msg) => dispatch({ kind: 'message', msg, now: this.now() }),
        onPhase: (phase, attempt, retryInMs) => dispatch({ kind: 'connection', phase, attempt, retryInMs }),
        onOpen: () => this.onOpen(),
      },
      opts,
    );
  }

  start(): void {
    this.connection.start();
    const every = this.opts.vehiclesPollMs ?? 5000;
    const si = this.opts.setInterval ?? ((fn, ms) => globalThis.setInterval(fn, ms));
    if (every > 0 && this.poll === null) {
      this.poll = si(() => {
        if (this.connection.connected) void this.refreshVehicles();
      }, every);
    }
  }

  stop(): void {
    this.connection.stop();
    if (this.poll !== null) (this.opts.clearInterval ?? ((h) => globalThis.clearInterval(h as number)))(this.poll);
    this.poll = null;
  }

  /** Watch exactly these vehicles (empty = all) and tell the server. */
  select(vins: string[]): void {
    this.store.dispatch({ kind: 'select', vins });
    this.connection.send({ type: 'subscribe', vins: this.store.state.selected });
  }

  toggle(vin: string): void {
    const sel = new Set(this.store.state.selected);
    if (sel.has(vin)) sel.delete(vin);
    else sel.add(vin);
    this.select([...sel]);
  }

  setAdminToken(token: string): void {
    this.adminToken = token.trim();
  }

  async startLogger(req: LoggerStartRequest): Promise<boolean> {
    return this.loggerCall('/logger/start', req);
  }

  async stopLogger(): Promise<boolean> {
    return this.loggerCall('/logger/stop', undefined);
  }

  async refreshLoggerStatus(): Promise<void> {
    try {
      const res = await this.opts.fetch(`${this.opts.httpBase ?? ''}/logger/status`);
      if (res.ok) this.store.dispatch({ kind: 'logger_status', status: (await res.json()) as LoggerStatus });
    } catch {
      // The WebSocket's `logger` messages keep the state current anyway.
    }
  }

  async refreshVehicles(): Promise<void> {
    try {
      const res = await this.opts.fetch(`${this.opts.httpBase ?? ''}/api/vehicles`);
      if (!res.ok) return;
      const list = await res.json();
      if (Array.isArray(list)) this.store.dispatch({ kind: 'vehicles', list: list as VehicleSummary[] });
    } catch {
      // Transient; the next poll retries.
    }
  }

  private onOpen(): void {
    // A server forgets subscriptions with the socket: say again what this page watches.
    if (this.store.state.selected.length > 0) {
      this.connection.send({ type: 'subscribe', vins: this.store.state.selected });
    }
    void this.refreshLoggerStatus();
    void this.refreshVehicles();
  }

  private async loggerCall(path: string, body: LoggerStartRequest | undefined): Promise<boolean> {
    const dispatch = this.store.dispatch;
    dispatch({ kind: 'logger_request', busy: true, error: null });
    try {
      const res = await this.opts.fetch(`${this.opts.httpBase ?? ''}${path}`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          ...(this.adminToken ? { authorization: `Bearer ${this.adminToken}` } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      let payload: unknown = null;
      try {
        payload = await res.json();
      } catch {
        payload = null;
      }
      if (!res.ok) {
        const error = errorText(payload, res.status);
        dispatch({ kind: 'logger_request', busy: false, error });
        dispatch({ kind: 'local_log', level: 'error', message: `Logger request failed: ${error}`, now: this.now() });
        return false;
      }
      dispatch({ kind: 'logger_request', busy: false, error: null });
      await this.refreshLoggerStatus();
      return true;
    } catch (e) {
      const error = `Could not reach the server: ${e instanceof Error ? e.message : String(e)}`;
      dispatch({ kind: 'logger_request', busy: false, error });
      return false;
    }
  }
}
