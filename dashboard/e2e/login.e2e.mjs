#!/usr/bin/env node
// Browser test of signing in when the server requires read auth.
//
//   npm run e2e:login        --target real: the real server with LOCKSTEP_READ_AUTH and
//                            LOCKSTEP_DEVICE_AUTH required; the viewer and operator tokens are
//                            made with `lockstep-server token create` on its database first
//                            (extra server variables may be given in E2E_AUTH_ENV="K=V K2=V2")
//   npm run e2e:login:mock   --target mock: scripts/mock-server.mjs --read-auth (tokens
//                            viewer-token / operator-token)
//
// Steps: the page shows the sign-in form and opens no WebSocket → a wrong token shows the
// server's sentence → viewer: data shows, role shown, logger buttons disabled → log out: the
// form again → operator: logger buttons work, vehicles appear → reload keeps the session (the
// cookie is HttpOnly: the page's script cannot see it). Console and page errors fail the test,
// except the one 401 of the wrong token.

import { execFileSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { dashboardDir, expect, freePort, openBrowser, run, startMockServer, startRealServer, step, targetFromArgs, textOf, waitFor, waitUp } from './lib.mjs';

const target = targetFromArgs({ allowMock: true });

function authEnv(workDir) {
  const env = {
    DATABASE_URL: `sqlite://${join(workDir, 'lockstep.db')}`,
    LOCKSTEP_READ_AUTH: 'required',
    LOCKSTEP_DEVICE_AUTH: 'required',
  };
  for (const kv of (process.env.E2E_AUTH_ENV ?? '').split(/\s+/).filter(Boolean)) {
    const i = kv.indexOf('=');
    if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

/** A token made by the server's CLI on the test's own database: the last line of stdout. */
function createToken(workDir, role) {
  const bin = resolve(dashboardDir, process.env.LOCKSTEP_SERVER_BIN ?? '../target/debug/lockstep-server');
  const out = execFileSync(bin, ['token', 'create', '--role', role, '--label', `browser test ${role}`], {
    cwd: workDir,
    env: { PATH: process.env.PATH ?? '', ...authEnv(workDir) },
  }).toString();
  const token = out.trim().split('\n').pop();
  expect(token.startsWith('lst_'), `token create printed no token as its last line: ${out}`);
  return token;
}

await run(`login (${target} server)`, async (ctx) => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const viewerToken = target === 'mock' ? 'viewer-token' : createToken(ctx.workDir, 'viewer');
  const operatorToken = target === 'mock' ? 'operator-token' : createToken(ctx.workDir, 'operator');
  const server = target === 'real' ? startRealServer(port, ctx.workDir, { extraEnv: authEnv(ctx.workDir) }) : startMockServer(port, ctx.workDir, ['--read-auth']);
  ctx.servers.push(server);
  await waitUp(server, base);
  const session = await (await fetch(`${base}/api/session`)).json();
  expect(session.read_auth === 'required', `the server does not require read auth: ${JSON.stringify(session)}`);

  const b = await openBrowser();
  ctx.browser = b.browser;
  const { page } = b;
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(`${base}/`);
  await waitFor('the sign-in form', () => page.$('[data-testid=login-form]'));
  expect(sockets.length === 0, `a WebSocket was opened before signing in: ${sockets.join(', ')}`);
  expect(!(await page.$('[data-testid=connection]')), 'a connection badge is shown before signing in');
  step('sign-in form shown, no WebSocket opened');

  // Wrong token: the server's sentence, still signed out.
  const allow401 = b.allow(/status of 401/);
  await page.fill('[data-testid=login-token]', 'not-a-token');
  await page.click('[data-testid=login-submit]');
  const err = await waitFor('the error sentence', () => textOf(page, '[data-testid=login-error]'));
  allow401();
  step(`wrong token: ${err}`);

  // Viewer: sees data, cannot run the logger.
  await page.fill('[data-testid=login-token]', viewerToken);
  await page.click('[data-testid=login-submit]');
  await waitFor('"connected" as viewer', async () => (await textOf(page, '[data-testid=connection]')) === 'connected');
  expect((await textOf(page, '[data-testid=role]')) === 'viewer', 'role not shown as viewer');
  expect(await page.isDisabled('[data-testid=logger-start]'), 'a viewer can press Start logger');
  expect(/operator or admin/.test(await textOf(page, '[data-testid=logger-role]')), 'no explanation why the logger is disabled');
  expect(!(await page.evaluate(() => document.cookie)).includes('session'), 'the session cookie is readable by the page');
  step('viewer: connected, role shown, logger disabled');

  await page.click('[data-testid=logout]');
  await waitFor('the sign-in form after logging out', () => page.$('[data-testid=login-form]'));
  step('logged out');

  // Operator: runs the logger.
  await page.fill('[data-testid=login-token]', operatorToken);
  await page.click('[data-testid=login-submit]');
  await waitFor('"connected" as operator', async () => (await textOf(page, '[data-testid=connection]')) === 'connected');
  expect((await textOf(page, '[data-testid=role]')) === 'operator', 'role not shown as operator');
  await page.fill('[data-testid=logger-vehicles]', '2');
  await page.fill('[data-testid=logger-rate]', '5');
  await page.click('[data-testid=logger-start]');
  await waitFor('two vehicles listed', async () => (await page.$$('[data-testid=vehicles] tbody tr')).length === 2);
  await page.click('[data-testid=logger-stop]');
  await waitFor('the logger to stop', async () => /^stopped/.test(await textOf(page, '[data-testid=logger-state]')));
  step('operator: started and stopped the logger; vehicles appeared');

  await page.reload();
  await waitFor('"connected" after reload (session kept)', async () => (await textOf(page, '[data-testid=connection]')) === 'connected');
  expect((await textOf(page, '[data-testid=role]')) === 'operator', 'role lost after reload');
  step('reload kept the session');
  b.check();
});
