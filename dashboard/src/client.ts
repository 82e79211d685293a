// Glue between the connection, the HTTP endpoints and the store: what the page does on start
// (ask for the session, log in when the server wants it), on connect, when the user picks
// vehicles, and when the logger buttons are pressed. No DOM, no React.

import { Api, ApiError, type FetchLike } from './api';
import { Connection, type ConnectionOptions } from './connection';
import type { LoggerStartRequest, LoggerStatus } from './protocol';
import { Store } from './store';

export type { FetchLike } from './api';

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

export class DashboardClient {
  readonly store: Store;
  readonly connection: Connection;
  readonly api: Api;
  private readonly now: () => number;
  private poll: unknown = null;
  private started = false;
  private checking: Promise<void> | null = null;
  /** Whether the server has answered `GET /api/session` since the page started. */
  private sessionKnown = false;
  /** Sent as `Authorization: Bearer …` on logger calls; only needed when not on loopback. */
  private adminToken = '';

  constructor(
    private readonly opts: ClientOptions,
    store?: Store,
  ) {
    this.store = store ?? new Store();
    this.now = opts.now ?? Date.now;
    this.api = new Api(opts.fetch, opts.httpBase ?? '', () => void this.checkSession());
    const dispatch = this.store.dispatch;
    this.connection = new Connection(
      opts.wsUrl,
      {
        onMessage: (msg) => dispatch({ kind: 'message', msg, now: this.now() }),
        onPhase: (phase, attempt, retryInMs) => {
          dispatch({ kind: 'connection', phase, attempt, retryInMs });
          // A refused upgrade looks like any drop; when read auth is on (or the server never
          // said), ask whether the session is still good before hammering the server.
          if (phase === 'reconnecting' && (this.store.state.auth.readAuth === 'required' || !this.sessionKnown)) void this.checkSession();
        },
        onOpen: () => this.onOpen(),
      },
      opts,
    );
  }

  /**
   * Asks the server for the session first: with read auth required and no session the page shows
   * the login form and opens no WebSocket (the upgrade would answer 401).
   */
  start(): Promise<void> {
    this.started = true;
    const checked = this.checkSession();
    const every = this.opts.vehiclesPollMs ?? 5000;
    const si = this.opts.setInterval ?? ((fn, ms) => globalThis.setInterval(fn, ms));
    if (every > 0 && this.poll === null) {
      this.poll = si(() => {
        if (this.connection.connected) void this.refreshVehicles();
      }, every);
    }
    return checked;
  }

  stop(): void {
    this.started = false;
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

  /** Re-reads `GET /api/session` and connects or disconnects accordingly (concurrent calls share one request). */
  checkSession(): Promise<void> {
    if (this.checking) return this.checking;
    this.checking = (async () => {
      try {
        const session = await this.api.session();
        this.sessionKnown = true;
        this.store.dispatch({ kind: 'session', session });
      } catch {
        // Server unreachable: keep what we knew; the connection's retries go on.
        if (!this.store.state.auth.checked) this.store.dispatch({ kind: 'session', session: { authenticated: false, role: null, read_auth: 'off' } });
      } finally {
        this.checking = null;
      }
      this.applyAuth();
    })();
    return this.checking;
  }

  private applyAuth(): void {
    if (!this.started) return;
    const a = this.store.state.auth;
    if (a.readAuth === 'required' && !a.authenticated) this.connection.stop();
    else this.connection.start();
  }

  /** Sends the pasted token; on success the server sets the session cookie and the page connects. */
  async login(token: string): Promise<boolean> {
    const dispatch = this.store.dispatch;
    dispatch({ kind: 'auth_request', busy: true, error: null });
    try {
      await this.api.login(token.trim());
    } catch (e) {
      const error = e instanceof ApiError && e.status === 401 ? `Not signed in: ${e.message}` : e instanceof Error ? e.message : String(e);
      dispatch({ kind: 'auth_request', busy: false, error });
      return false;
    }
    dispatch({ kind: 'auth_request', busy: false, error: null });
    await this.checkSession();
    return this.store.state.auth.authenticated;
  }

  async logout(): Promise<void> {
    try {
      await this.api.logout();
    } catch (e) {
      this.store.dispatch({ kind: 'auth_request', busy: false, error: e instanceof Error ? e.message : String(e) });
    }
    await this.checkSession();
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
      const status = await this.api.get('/logger/status');
      if (status && typeof status === 'object' && typeof (status as LoggerStatus).running === 'boolean') {
        this.store.dispatch({ kind: 'logger_status', status: status as LoggerStatus });
      }
    } catch {
      // The WebSocket's `logger` messages keep the state current anyway.
    }
  }

  async refreshVehicles(): Promise<void> {
    try {
      this.store.dispatch({ kind: 'vehicles', list: await this.api.allVehicles() });
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
      await this.api.post(path, body, this.adminToken ? { authorization: `Bearer ${this.adminToken}` } : {});
    } catch (e) {
      const error = e instanceof Error ? e.message : String(e);
      dispatch({ kind: 'logger_request', busy: false, error });
      if (!(e instanceof ApiError) || e.status !== 0) {
        dispatch({ kind: 'local_log', level: 'error', message: `Logger request failed: ${error}`, now: this.now() });
      }
      if (e instanceof ApiError && e.status === 401) void this.checkSession();
      return false;
    }
    dispatch({ kind: 'logger_request', busy: false, error: null });
    await this.refreshLoggerStatus();
    return true;
  }
}
