import { describe, expect, it } from 'vitest';
import { DashboardClient, type FetchLike } from '../src/client';
import { FakeSocket, FakeTimers } from './fakes';
import { reading, VIN_A, VIN_B } from './fixtures';

interface Call {
  url: string;
  method: string;
  body?: string;
  headers?: Record<string, string>;
}

function setup(routes: Record<string, { status: number; body: unknown }> = {}) {
  const sockets: FakeSocket[] = [];
  const calls: Call[] = [];
  const intervals: (() => void)[] = [];
  const fetch: FetchLike = async (url, init) => {
    calls.push({ url, method: init?.method ?? 'GET', body: init?.body, headers: init?.headers });
    const r = routes[url] ?? { status: 404, body: { status: 'error', error: 'not found' } };
    return { ok: r.status >= 200 && r.status < 300, status: r.status, json: async () => r.body };
  };
  const client = new DashboardClient({
    wsUrl: 'ws://h/ws',
    createSocket: (u) => {
      const s = new FakeSocket(u);
      sockets.push(s);
      return s;
    },
    timers: new FakeTimers(),
    random: () => 0.5,
    fetch,
    now: () => 1234,
    setInterval: (fn) => {
      intervals.push(fn);
      return intervals.length;
    },
    clearInterval: () => {},
  });
  return { client, sockets, calls, intervals };
}

const flush = () => new Promise((r) => setTimeout(r, 0));
const sentOf = (s: FakeSocket) => s.sent.map((x) => JSON.parse(x));

describe('DashboardClient', () => {
  it('on connect loads logger status and the vehicle list; messages reach the store', async () => {
    const t = setup({
      '/logger/status': { status: 200, body: { running: false, pid: null, started_at_ms: null, last_exit_code: null, last_run_s: null } },
      '/api/vehicles?limit=500': { status: 200, body: { vehicles: [{ vin: VIN_B, first_seen_ms: 1, last_seen_ms: 2, readings: 3, model: null, year: null }], next_cursor: null } },
    });
    await t.client.start();
    t.sockets[0].open();
    t.sockets[0].receive({ type: 'history', data: [reading(VIN_A, 1000)] });
    await flush();
    const s = t.client.store.state;
    expect(s.connection.phase).toBe('connected');
    expect(s.logger?.running).toBe(false);
    expect(s.historyReadings).toBe(1);
    expect([...s.vehicles.keys()].sort()).toEqual([VIN_A, VIN_B]);
    expect(s.vehicles.get(VIN_A)!.lastReceivedAt).toBe(1234);
    // No subscription was chosen: nothing is sent (the server defaults to all).
    expect(t.sockets[0].sent).toEqual([]);
  });

  it('subscribe: choosing vehicles sends the set; it is re-sent after a reconnect', async () => {
    const t = setup();
    await t.client.start();
    t.sockets[0].open();
    t.client.toggle(VIN_B);
    t.client.toggle(VIN_A);
    expect(sentOf(t.sockets[0])).toEqual([
      { type: 'subscribe', vins: [VIN_B] },
      { type: 'subscribe', vins: [VIN_A, VIN_B] },
    ]);
    t.client.toggle(VIN_B);
    t.client.select([]);
    expect(sentOf(t.sockets[0]).slice(2)).toEqual([
      { type: 'subscribe', vins: [VIN_A] },
      { type: 'subscribe', vins: [] },
    ]);
    t.client.select([VIN_B]);
    t.sockets[0].drop();
    // Selection made while disconnected is kept and sent on the next open.
    t.client.select([VIN_A]);
    expect(t.client.store.state.connection.phase).toBe('reconnecting');
    (t.client.connection as unknown as { timers: FakeTimers }).timers.fire();
    t.sockets[1].open();
    expect(sentOf(t.sockets[1])).toEqual([{ type: 'subscribe', vins: [VIN_A] }]);
  });

  it('start and stop call the HTTP endpoints and refresh the status', async () => {
    const t = setup({
      '/logger/start': { status: 200, body: { status: 'started', pid: 7 } },
      '/logger/stop': { status: 200, body: { status: 'stopped', exit_code: 0 } },
      '/logger/status': { status: 200, body: { running: true, pid: 7, started_at_ms: 1, last_exit_code: null, last_run_s: null } },
    });
    expect(await t.client.startLogger({ vehicles: 3, rate: 5 })).toBe(true);
    expect(t.calls[0]).toMatchObject({ url: '/logger/start', method: 'POST', body: JSON.stringify({ vehicles: 3, rate: 5 }) });
    expect(t.calls[0].headers?.authorization).toBeUndefined();
    expect(t.client.store.state.logger?.pid).toBe(7);
    expect(t.client.store.state.loggerBusy).toBe(false);
    expect(await t.client.stopLogger()).toBe(true);
    expect(t.calls.find((c) => c.url === '/logger/stop')?.method).toBe('POST');
  });

  it('sends the admin token as a bearer token when one is set', async () => {
    const t = setup({ '/logger/stop': { status: 200, body: { status: 'not_running' } } });
    t.client.setAdminToken('  s3cret ');
    await t.client.stopLogger();
    expect(t.calls[0].headers?.authorization).toBe('Bearer s3cret');
  });

  it('a refused start shows the server’s sentence and logs it', async () => {
    const t = setup({ '/logger/start': { status: 403, body: { status: 'error', error: 'The logger can only be controlled from loopback.' } } });
    expect(await t.client.startLogger({ vehicles: 1, rate: 1 })).toBe(false);
    const s = t.client.store.state;
    expect(s.loggerError).toBe('The logger can only be controlled from loopback.');
    expect(s.logs.at(-1)?.level).toBe('error');
    const t2 = setup({ '/logger/start': { status: 409, body: { status: 'already_running', pid: 9 } } });
    await t2.client.startLogger({});
    expect(t2.client.store.state.loggerError).toContain('already running');
  });

  it('polls the vehicle list only while connected', async () => {
    const t = setup({ '/api/vehicles?limit=500': { status: 200, body: { vehicles: [], next_cursor: null } } });
    await t.client.start();
    expect(t.intervals).toHaveLength(1);
    const vehicleCalls = () => t.calls.filter((c) => c.url.startsWith('/api/vehicles')).length;
    t.intervals[0]();
    expect(vehicleCalls()).toBe(0);
    t.sockets[0].open();
    await flush();
    const before = vehicleCalls();
    t.intervals[0]();
    await flush();
    expect(vehicleCalls()).toBe(before + 1);
  });

  it('read auth: no WebSocket until signed in; login retries it; logout closes it', async () => {
    const routes: Record<string, { status: number; body: unknown }> = {
      '/api/session': { status: 200, body: { authenticated: false, role: null, read_auth: 'required' } },
      '/api/login': { status: 401, body: { status: 'error', error: 'Unknown token.' } },
    };
    const t = setup(routes);
    await t.client.start();
    expect(t.sockets).toHaveLength(0);
    expect(t.client.store.state.auth).toMatchObject({ checked: true, readAuth: 'required', authenticated: false });

    expect(await t.client.login('bad')).toBe(false);
    expect(t.client.store.state.auth.error).toContain('Unknown token.');
    expect(t.sockets).toHaveLength(0);

    routes['/api/login'] = { status: 204, body: null };
    routes['/api/session'] = { status: 200, body: { authenticated: true, role: 'viewer', read_auth: 'required' } };
    expect(await t.client.login('  good  ')).toBe(true);
    const login = t.calls.filter((c) => c.url === '/api/login').at(-1)!;
    expect(login).toMatchObject({ method: 'POST', body: JSON.stringify({ token: 'good' }), headers: { 'content-type': 'application/json' } });
    expect(t.sockets).toHaveLength(1);
    expect(t.client.store.state.auth).toMatchObject({ authenticated: true, role: 'viewer', error: null });

    routes['/api/logout'] = { status: 204, body: null };
    routes['/api/session'] = { status: 200, body: { authenticated: false, role: null, read_auth: 'required' } };
    await t.client.logout();
    expect(t.calls.find((c) => c.url === '/api/logout')).toMatchObject({ method: 'POST', headers: { 'content-type': 'application/json' } });
    expect(t.sockets[0].closed).toBe(true);
    expect(t.client.store.state.auth.authenticated).toBe(false);
  });

  it('a dropped socket while read auth is on re-checks the session (an expired one shows the form)', async () => {
    const routes: Record<string, { status: number; body: unknown }> = {
      '/api/session': { status: 200, body: { authenticated: true, role: 'operator', read_auth: 'required' } },
    };
    const t = setup(routes);
    await t.client.start();
    t.sockets[0].open();
    routes['/api/session'] = { status: 200, body: { authenticated: false, role: null, read_auth: 'required' } };
    t.sockets[0].drop();
    await flush();
    await flush();
    expect(t.client.store.state.auth.authenticated).toBe(false);
    // The retry is cancelled: no new socket until the user signs in again.
    expect((t.client.connection as unknown as { timers: FakeTimers }).timers.pending()).toEqual([]);
  });

  it('without read auth (or an older server without /api/session) the page connects at once', async () => {
    const t = setup();
    await t.client.start();
    expect(t.sockets).toHaveLength(1);
    expect(t.client.store.state.auth).toMatchObject({ checked: true, readAuth: 'off' });
  });

  it('a server unreachable at start is asked again on the next drop (it may require sign-in)', async () => {
    let up = false;
    const routes: Record<string, { status: number; body: unknown }> = {};
    const t = setup(routes);
    const fetch = (t.client.api as unknown as { fetch: FetchLike }).fetch;
    (t.client.api as unknown as { fetch: FetchLike }).fetch = async (url, init) => {
      if (!up) throw new Error('connection refused');
      return fetch(url, init);
    };
    await t.client.start();
    expect(t.client.store.state.auth).toMatchObject({ checked: true, readAuth: 'off' });
    expect(t.sockets).toHaveLength(1);
    up = true;
    routes['/api/session'] = { status: 200, body: { authenticated: false, role: null, read_auth: 'required' } };
    t.sockets[0].drop(); // the upgrade was refused
    await flush();
    await flush();
    expect(t.client.store.state.auth).toMatchObject({ readAuth: 'required', authenticated: false });
    expect((t.client.connection as unknown as { timers: FakeTimers }).timers.pending()).toEqual([]);
  });
});
