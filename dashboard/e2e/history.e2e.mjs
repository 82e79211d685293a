#!/usr/bin/env node
// Browser test of the history view, the vehicle page and the API-docs link.
//
//   npm run e2e:history        --target real  (LOCKSTEP_SERVER_BIN / LOCKSTEP_EDGE_BIN as for `npm run e2e`)
//   npm run e2e:history:mock   --target mock  (scripts/mock-server.mjs; needs `npm run build`)
//
// Steps: start one vehicle from the page at a high rate until the server has stored more
// readings than the history view draws one by one → History: the range is downsampled (visible
// status names buckets; band and mean line drawn) → zoom in until the readings fit: the status
// says each is drawn, the chart counts transmitted and reconstructed points and its pixels
// change → drag across a chart to zoom → the vehicle page shows its details and today's
// statistics → the API-docs link answers. Console and page errors fail the test.

import { canvasPixels, expect, freePort, openBrowser, run, startMockServer, startRealServer, step, targetFromArgs, textOf, waitFor, waitUp } from './lib.mjs';

const target = targetFromArgs({ allowMock: true });
const RATE = Number(process.env.E2E_RATE ?? 50);
/** More than the raw limit of the history view (src/history.ts RAW_LIMIT = 2000). */
const READINGS = Number(process.env.E2E_HISTORY_READINGS ?? 2500);
const BLUE = '#0072b2';
const MEAN = '#003b5c';
/** The min…max band: BLUE at 25 % over white. */
const BAND = '#bfdcec';

await run(`history (${target} server)`, async (ctx) => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const server = target === 'real' ? startRealServer(port, ctx.workDir) : startMockServer(port, ctx.workDir);
  ctx.servers.push(server);
  await waitUp(server, base);

  const b = await openBrowser();
  ctx.browser = b.browser;
  const { page } = b;
  await page.goto(`${base}/`);
  await waitFor('"connected"', async () => (await textOf(page, '[data-testid=connection]')) === 'connected');

  await page.fill('[data-testid=logger-vehicles]', '1');
  await page.fill('[data-testid=logger-rate]', String(RATE));
  await page.click('[data-testid=logger-start]');
  step(`logger started: 1 vehicle at ${RATE} Hz; waiting for ${READINGS} stored readings`);
  const vin = await waitFor(
    `${READINGS} readings stored`,
    async () => {
      const r = await fetch(`${base}/api/vehicles`);
      const body = await r.json();
      const v = (Array.isArray(body) ? body : body.vehicles)[0];
      return v && v.readings >= READINGS ? v.vin : null;
    },
    (READINGS / RATE) * 1000 + 60_000,
    500,
  );
  await page.click('[data-testid=logger-stop]');
  await waitFor('the logger to stop', async () => /^stopped/.test(await textOf(page, '[data-testid=logger-state]')));

  // History view, everything: downsampled.
  await page.click('nav >> text=History');
  await waitFor('the history view', () => page.$('[data-testid=history-view]'));
  await page.selectOption('[data-testid=history-vin]', vin);
  await page.click('button:text-is("everything")');
  const status = await waitFor('a downsampled range', async () => {
    const t = await textOf(page, '[data-testid=history-status]');
    return /buckets of/.test(t) ? t : null;
  });
  step(`status: ${status}`);
  const speed = '.chart[data-signal=speed]';
  const banded = await waitFor('the mean line drawn', async () => {
    const px = await canvasPixels(page, speed, [MEAN, BAND], 12);
    // The band is as thick as the spread inside a bucket, which a short test run barely has.
    return px.matches[0] > 50 ? px : null;
  });
  const counts1 = await textOf(page, `${speed} .chart-counts`);
  expect(/buckets/.test(counts1), `speed chart counts: ${counts1}`);
  step(`speed chart: ${counts1}; ${banded.matches[0]} pixels of the mean line, ${banded.matches[1]} of the band`);

  // Zoom in until the readings are drawn one by one.
  const statusFor = async () => {
    const q = new URLSearchParams(new URL(page.url()).hash.split('?')[1]);
    const want = `${q.get('from')}-${q.get('to')}`;
    const el = await page.$(`[data-testid=history-status][data-range="${want}"]`);
    return el ? (await el.innerText()).trim() : null;
  };
  let raw = '';
  for (let i = 0; i < 8 && !raw; i++) {
    await page.click('[data-testid=zoom-in]');
    const t = await waitFor('the zoomed range to load', statusFor);
    if (/each drawn/.test(t)) raw = t;
  }
  expect(raw, 'zooming in never showed single readings');
  step(`zoomed in: ${raw}`);
  const counts2 = await waitFor('transmitted and reconstructed counts', async () => {
    const t = await textOf(page, `${speed} .chart-counts`);
    const m = /(\d+) transmitted · (\d+) reconstructed/.exec(t);
    return m ? { tx: Number(m[1]), rec: Number(m[2]), text: t } : null;
  });
  expect(counts2.tx > 0 && counts2.tx + counts2.rec > 1, `speed chart: ${counts2.text}`);
  const points = await canvasPixels(page, speed, [BLUE], 30);
  expect(points.hash !== banded.hash, 'the chart looks the same after zooming in');
  expect(points.matches[0] > 10, 'no points drawn after zooming in');
  step(`speed chart: ${counts2.text}`);

  // Drag across the chart: the range in the URL narrows.
  const before = new URL(page.url()).hash;
  const box = await (await page.$(`${speed} .u-over`)).boundingBox();
  await page.mouse.move(box.x + box.width * 0.3, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2, { steps: 5 });
  await page.mouse.up();
  await waitFor('the dragged span to become the range', async () => new URL(page.url()).hash !== before);
  const span = (h) => {
    const q = new URLSearchParams(h.split('?')[1]);
    return Number(q.get('to')) - Number(q.get('from'));
  };
  expect(span(new URL(page.url()).hash) < span(before), 'dragging did not zoom in');
  step('drag-zoom narrowed the range');

  // Vehicle page: details and today's statistics.
  await page.click('a:text-is("vehicle page")');
  await waitFor('vehicle details', async () => /readings stored/.test(await textOf(page, '[data-testid=vehicle-details]')));
  const today = new Date().toISOString().slice(0, 10);
  await waitFor(`statistics for ${today}`, async () => (await textOf(page, '[data-testid=vehicle-days]')).includes(today));
  step(`vehicle page: ${(await textOf(page, '[data-testid=vehicle-details]')).replace(/\s+/g, ' ')}`);
  await page.screenshot({ path: new URL('./screenshot-vehicle.png', import.meta.url).pathname, fullPage: true });

  const docs = await page.getAttribute('[data-testid=docs-link]', 'href');
  expect(docs === '/docs', `docs link points to ${docs}`);
  const r = await fetch(`${base}${docs}`);
  expect(r.ok, `GET /docs answered ${r.status}`);
  step('API docs link answers');
  b.check();
});
