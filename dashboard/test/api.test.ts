import { describe, expect, it } from 'vitest';
import { Api, ApiError, dayOf, parseSession, parseTelemetry, parseVehiclePage, urls, type FetchInit, type FetchLike } from '../src/api';
import { VIN_A, VIN_B } from './fixtures';

/** A fetch answering from a table of URL → [status, body]; records every call. */
function fakeFetch(routes: Record<string, [number, unknown]>) {
  const calls: { url: string; init?: FetchInit }[] = [];
  const fetch: FetchLike = async (url, init) => {
    calls.push({ url, init });
    const [status, body] = routes[url] ?? [404, { status: 'error', error: `no route ${url}` }];
    return { ok: status >= 200 && status < 300, status, json: async () => (status === 204 ? Promise.reject(new Error('empty')) : body) };
  };
  return { fetch, calls };
}

describe('URLs', () => {
  it('encode the VIN and only the parameters given', () => {
    expect(urls.vehicles()).toBe('/api/vehicles');
    expect(urls.vehicles(500, 'c 1')).toBe('/api/vehicles?limit=500&cursor=c+1');
    expect(urls.vehicle('A/B')).toBe('/api/vehicles/A%2FB');
    expect(urls.telemetry(VIN_A, 1000.4, 2000.2, { step: 5 })).toBe(`/api/vehicles/${VIN_A}/telemetry?from=1000&to=2001&step=5`);
    expect(urls.telemetry(VIN_A, 1, 2, { limit: 10, cursor: 'x' })).toBe(`/api/vehicles/${VIN_A}/telemetry?from=1&to=2&limit=10&cursor=x`);
    expect(urls.vehicleStats(VIN_A, '2026-11-01', '2026-11-30')).toBe(`/api/vehicles/${VIN_A}/stats?from=2026-11-01&to=2026-11-30`);
    expect(dayOf(Date.UTC(2026, 11, 1, 23, 59))).toBe('2026-12-01');
  });
});

describe('parsers', () => {
  it('read the paged vehicle list (and a bare array from older servers)', () => {
    const v = { vin: VIN_A, first_seen_ms: 1, last_seen_ms: 2, readings: 3, model: 'Twizy', year: 2014 };
    expect(parseVehiclePage({ vehicles: [v, { nope: 1 }], next_cursor: 'n' })).toEqual({ vehicles: [v], next_cursor: 'n' });
    expect(parseVehiclePage([{ vin: VIN_B, first_seen_ms: 1, last_seen_ms: 2, readings: 3 }]).vehicles[0]).toMatchObject({ vin: VIN_B, model: null, year: null });
    expect(() => parseVehiclePage({ what: 1 })).toThrow(ApiError);
  });

  it('tell raw readings from buckets; a signal without values in a bucket is null', () => {
    const raw = parseTelemetry({ vin: VIN_A, readings: [{ timestamp: 1, speed: 3, transmitted: ['speed'] }, { bad: 1 }], next_cursor: null });
    expect(raw).toEqual({ vin: VIN_A, readings: [{ timestamp: 1, speed: 3, transmitted: ['speed'] }], next_cursor: null });
    const b = parseTelemetry({ vin: VIN_A, step: 60000, buckets: [{ timestamp: 0, count: 2, speed: { min: 1, max: 3, mean: 2 }, battery: null }] });
    expect(b).toMatchObject({ step: 60000, buckets: [{ timestamp: 0, count: 2, speed: { min: 1, max: 3, mean: 2 }, battery: null, power: null }] });
  });

  it('a session answer that is not one means no read auth', () => {
    expect(parseSession({ authenticated: true, role: 'operator', read_auth: 'required' })).toEqual({ authenticated: true, role: 'operator', read_auth: 'required' });
    expect(parseSession({ authenticated: true, role: 'root', read_auth: 'required' }).role).toBeNull();
    expect(parseSession(null)).toEqual({ authenticated: false, role: null, read_auth: 'off' });
  });
});

describe('Api', () => {
  it('follows next_cursor through every page of vehicles', async () => {
    const v = (vin: string) => ({ vin, first_seen_ms: 1, last_seen_ms: 2, readings: 3, model: null, year: null });
    const f = fakeFetch({
      '/api/vehicles?limit=2': [200, { vehicles: [v('A'), v('B')], next_cursor: 'p2' }],
      '/api/vehicles?limit=2&cursor=p2': [200, { vehicles: [v('C')], next_cursor: null }],
    });
    expect((await new Api(f.fetch).allVehicles(2)).map((x) => x.vin)).toEqual(['A', 'B', 'C']);
    expect(f.calls.every((c) => c.init?.credentials === 'same-origin')).toBe(true);
  });

  it('a page size above the server cap (400) falls back to the server default', async () => {
    const v = (vin: string) => ({ vin, first_seen_ms: 1, last_seen_ms: 2, readings: 3 });
    const f = fakeFetch({
      '/api/vehicles?limit=500': [400, { status: 'error', error: 'limit must be at most 100' }],
      '/api/vehicles': [200, { vehicles: [v('A')], next_cursor: 'A' }],
      '/api/vehicles?cursor=A': [200, { vehicles: [v('B')], next_cursor: null }],
      [urls.telemetry(VIN_A, 0, 10, { limit: 1000 })]: [400, { status: 'error', error: 'limit too large' }],
      [urls.telemetry(VIN_A, 0, 10)]: [200, { vin: VIN_A, readings: [{ timestamp: 1 }], next_cursor: null }],
    });
    const api = new Api(f.fetch);
    expect((await api.allVehicles()).map((x) => x.vin)).toEqual(['A', 'B']);
    expect((await api.raw(VIN_A, 0, 10)).readings).toHaveLength(1);
    // Other errors are not retried.
    await expect(new Api(fakeFetch({}).fetch).allVehicles()).rejects.toMatchObject({ status: 404 });
  });

  it('an unknown VIN is null, other errors carry the server sentence, 401 is reported', async () => {
    let unauthorized = 0;
    const f = fakeFetch({
      [`/api/vehicles/${VIN_B}`]: [500, { status: 'error', error: 'The store is down.' }],
      '/api/stats': [401, { status: 'error', error: 'Sign in first.' }],
    });
    const api = new Api(f.fetch, '', () => (unauthorized += 1));
    expect(await api.vehicle(VIN_A)).toBeNull();
    await expect(api.vehicle(VIN_B)).rejects.toThrow('The store is down.');
    await expect(api.fleetStats()).rejects.toMatchObject({ status: 401 });
    expect(unauthorized).toBe(1);
  });

  it('raw readings are paged with the cursor and cut off at the cap', async () => {
    const page = (n: number, next: string | null) => [200, { vin: VIN_A, readings: Array.from({ length: n }, (_, i) => ({ timestamp: i })), next_cursor: next }] as [number, unknown];
    const f = fakeFetch({
      [urls.telemetry(VIN_A, 0, 10, { limit: 2 })]: page(2, 'c1'),
      [urls.telemetry(VIN_A, 0, 10, { limit: 2, cursor: 'c1' })]: page(2, 'c2'),
      [urls.telemetry(VIN_A, 0, 10, { limit: 2, cursor: 'c2' })]: page(1, null),
    });
    const api = new Api(f.fetch);
    expect(await api.raw(VIN_A, 0, 10, 2, 100)).toMatchObject({ truncated: false });
    expect((await api.raw(VIN_A, 0, 10, 2, 100)).readings).toHaveLength(5);
    expect(await api.raw(VIN_A, 0, 10, 2, 3)).toMatchObject({ truncated: true });
  });

  it('login, logout: JSON POSTs to the same origin; a bad token is a 401 with the sentence', async () => {
    const f = fakeFetch({ '/api/login': [401, { status: 'error', error: 'Unknown token.' }], '/api/logout': [204, null] });
    const api = new Api(f.fetch);
    await expect(api.login('nope')).rejects.toMatchObject({ status: 401, message: 'Unknown token.' });
    await api.logout();
    for (const c of f.calls) {
      expect(c.init).toMatchObject({ method: 'POST', credentials: 'same-origin', headers: { 'content-type': 'application/json' } });
    }
    expect(f.calls[0].init?.body).toBe(JSON.stringify({ token: 'nope' }));
    // A server without /api/session: no read auth.
    expect(await api.session()).toEqual({ authenticated: false, role: null, read_auth: 'off' });
  });
});
