import { describe, expect, it } from 'vitest';
import { parseRoute, routeHref, type Route } from '../src/route';

describe('hash routes', () => {
  it('round-trip every view', () => {
    const routes: Route[] = [
      { view: 'live' },
      { view: 'vehicle', vin: 'LOCKSTEP/TEST 1' },
      { view: 'history', vin: 'LOCKSTEPTEST00001', from: 1000, to: 2000 },
      { view: 'history', vin: null, from: null, to: null },
    ];
    for (const r of routes) expect(parseRoute(routeHref(r))).toEqual(r);
  });

  it('anything else is the live view; bad numbers are ignored', () => {
    expect(parseRoute('')).toEqual({ view: 'live' });
    expect(parseRoute('#/nope')).toEqual({ view: 'live' });
    expect(parseRoute('#/vehicles/%E0%A4%A')).toEqual({ view: 'live' });
    expect(parseRoute('#/history?vin=X&from=abc&to=5')).toEqual({ view: 'history', vin: 'X', from: null, to: 5 });
  });
});
