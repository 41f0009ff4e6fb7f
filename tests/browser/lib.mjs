// What the browser test scripts (pages.mjs, vod.mjs, hls.mjs) share: their environment, how
// they launch Debian's headless Chromium, log progress, take screenshots, open pages, and
// report to the Rust test that runs them (tests/src/browser.rs):
//
//   stdout  one JSON object per line: {"need":"..."} (a request to the test, which answers
//           "ok" on stdin once done), then {"result":{...}} on success or {"error":"..."} on
//           failure.
//   stderr  progress, for humans.
//
// Environment (every script): CORRIENTE_ARTIFACTS (directory for screenshots), CHROMIUM
// (default /usr/bin/chromium).

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

/** `process.env[name]`, else `fallback`; throws when neither is there. */
export const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};

/** The directory screenshots go to. */
export const ARTIFACTS = env('CORRIENTE_ARTIFACTS');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');

/** Prints `obj` as one JSON line on stdout, for the Rust test. */
export const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

/** Milliseconds to seconds, to the millisecond. */
export const seconds = (ms) => Math.round(ms) / 1000;

// The test's answers on stdin, read from the first question on.
let answers = null;
function nextLine() {
  if (!answers) {
    const stdin = readline.createInterface({ input: process.stdin });
    answers = { lines: [], waiters: [], closed: false };
    stdin.on('line', (line) => (answers.waiters.length ? answers.waiters.shift()(line) : answers.lines.push(line)));
    stdin.on('close', () => { answers.closed = true; answers.waiters.splice(0).forEach((w) => w(null)); });
  }
  if (answers.lines.length) return Promise.resolve(answers.lines.shift());
  if (answers.closed) return Promise.resolve(null);
  return new Promise((r) => answers.waiters.push(r));
}

/** The helpers of one script, logging to stderr under `[tag]`. */
export function browserScript(tag) {
  const log = (...args) => console.error(`[${tag}]`, ...args);

  /** Headless Chromium, with the artifacts directory made. launch() gives Chromium a fresh,
   *  throwaway --user-data-dir of its own. */
  async function launch() {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    return chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--autoplay-policy=no-user-gesture-required',
      ],
      timeout: 60_000,
    });
  }

  /** A screenshot of `page` as ARTIFACTS/`name`: its path. */
  async function shot(page, name, fullPage = false) {
    const file = path.join(ARTIFACTS, name);
    await page.screenshot({ path: file, fullPage });
    log('screenshot', file);
    return file;
  }

  /** A new page of `context` at `url` (loaded within `timeout` ms) that logs its uncaught
   *  errors and its console errors, except those matching `quiet`, under `label`;
   *  `before(page)` runs first (to watch its traffic from its first request on). */
  async function openPage(context, url, label, { timeout, quiet = null, before = async () => {} }) {
    const page = await context.newPage();
    await before(page);
    page.on('pageerror', (e) => log(`${label}: page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && !(quiet && quiet.test(m.text()))) log(`${label}: console: ${m.text()}`);
    });
    await page.goto(url, { timeout, waitUntil: 'load' });
    return page;
  }

  /** After a failure, what every open page showed: a screenshot `${prefix}-N.png` of each,
   *  and its URL and `describe(page)` in the log. */
  async function screenshotPages(browser, prefix, describe) {
    let n = 0;
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        n += 1;
        await page.screenshot({ path: path.join(ARTIFACTS, `${prefix}-${n}.png`) }).catch(() => {});
        const state = await describe(page).catch(() => '?');
        log(`${prefix}-${n}.png: ${page.url()} (${state})`);
      }
    }
  }

  /** Runs `main` (which emits the result), then exits: 0, or 1 with `{"error":...}`. */
  function run(main) {
    main().then(
      () => process.exit(0),
      (e) => {
        log('failed:', e && e.stack ? e.stack : e);
        emit({ error: String(e && e.message ? e.message : e) });
        process.exit(1);
      },
    );
  }

  /** Asks the Rust test to do `what` and waits until it did. */
  async function need(what) {
    emit({ need: what });
    const line = await nextLine();
    if (line === null || line.trim() !== 'ok') throw new Error(`the test did not do "${what}": ${line}`);
    log(`${what}: done`);
  }

  return { log, launch, shot, openPage, screenshotPages, run, need };
}
