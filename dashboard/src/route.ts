// Hash routes, so the server needs no routes of its own for the views:
//   #/                                   live view
//   #/history?vin=VIN&from=MS&to=MS      history of one vehicle
//   #/vehicles/VIN                       one vehicle's page

export type Route =
  | { view: 'live' }
  | { view: 'history'; vin: string | null; from: number | null; to: number | null }
  | { view: 'vehicle'; vin: string };

const int = (v: string | null): number | null => {
  if (v === null || !/^-?\d+$/.test(v)) return null;
  return Number(v);
};

export function parseRoute(hash: string): Route {
  const h = hash.replace(/^#/, '');
  const [path, q = ''] = h.split('?', 2);
  const params = new URLSearchParams(q);
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'history') {
    return { view: 'history', vin: params.get('vin') || null, from: int(params.get('from')), to: int(params.get('to')) };
  }
  if (parts[0] === 'vehicles' && parts[1]) {
    try {
      return { view: 'vehicle', vin: decodeURIComponent(parts[1]) };
    } catch {
      return { view: 'live' };
    }
  }
  return { view: 'live' };
}

export function routeHref(r: Route): string {
  switch (r.view) {
    case 'live':
      return '#/';
    case 'vehicle':
      return `#/vehicles/${encodeURIComponent(r.vin)}`;
    case 'history': {
      const q = new URLSearchParams();
      if (r.vin) q.set('vin', r.vin);
      if (r.from !== null) q.set('from', String(Math.round(r.from)));
      if (r.to !== null) q.set('to', String(Math.round(r.to)));
      const s = q.toString();
      return `#/history${s ? `?${s}` : ''}`;
    }
  }
}
