// Drives Debian's headless Chromium over Corriente's player page and cluster dashboard, the way
// a viewer and an operator would, and prints what it measured as JSON. Run by
// tests/tests/browser.rs, which owns the cluster and the publishers:
//
//   stdout  one JSON object per line: {"need":"publish"} asks the Rust test to do something and
//           waits for a line on stdin; {"result":{...}} is the last line.
//   stderr  progress, for humans.
//
// Environment: CORRIENTE_PLAYER_URL (http://EDGE/live/NAME, not live when this starts),
// CORRIENTE_RADIO_URL (an audio-only stream, published on request), CORRIENTE_DASHBOARD_URL
// (http://ADMIN/), and those of lib.mjs: CORRIENTE_ARTIFACTS (directory for screenshots),
// CHROMIUM (default /usr/bin/chromium).

import { browserScript, emit, env, seconds } from './lib.mjs';

const PLAYER_URL = env('CORRIENTE_PLAYER_URL');
const RADIO_URL = env('CORRIENTE_RADIO_URL');
const DASHBOARD_URL = env('CORRIENTE_DASHBOARD_URL');
const STREAM = new URL(PLAYER_URL).pathname.replace(/^\//, ''); // "live/NAME"

// Generous: a loaded 2-core machine runs cargo, ffmpeg, corriente and Chromium at once.
const T = { page: 30_000, state: 30_000, dashboard: 30_000 };

const { log, launch, shot, openPage: open, screenshotPages, run, need } = browserScript('browser');

// --- Page helpers ----------------------------------------------------------------------------
/** What the player shows right now: state, progress, decoded frames and distance to live. */
const playerSnapshot = (page) => page.evaluate(() => {
  const v = document.getElementById('video');
  const q = v.getVideoPlaybackQuality();
  const b = v.buffered;
  const end = b.length ? b.end(b.length - 1) : null;
  const indicator = parseFloat(document.body.dataset.latency);
  return {
    state: document.body.dataset.state,
    layout: document.body.dataset.layout,
    currentTime: v.currentTime,
    frames: q.totalVideoFrames,
    dropped: q.droppedVideoFrames,
    latency: end === null ? null : end - v.currentTime,
    indicator: Number.isFinite(indicator) ? indicator : null,
    bitrate: Number(document.getElementById('fact-bitrate').dataset.bps) || null,
    muted: v.muted,
    paused: v.paused,
    videoWidth: v.videoWidth,
    videoHeight: v.videoHeight,
    at: performance.now(),
  };
});

const waitState = (page, state, timeout = T.state) =>
  page.waitForFunction((s) => document.body.dataset.state === s, state, { timeout, polling: 100 });

/** The dashboard row of `key`: raw values of its data-field cells, or null. */
const dashboardRow = (page, key) => page.evaluate((k) => {
  const row = document.querySelector(`tr[data-stream="${CSS.escape(k)}"]`);
  if (!row) return null;
  const out = {};
  row.querySelectorAll('[data-field]').forEach((el) => {
    out[el.dataset.field] = el.dataset.value ?? el.getAttribute('href');
  });
  const link = row.querySelector('a[data-field="player"]');
  out.player = link ? link.href : null;
  out.perEdge = Array.from(row.querySelectorAll('[data-edge]')).map((el) => [el.dataset.edge, Number(el.dataset.value)]);
  return out;
}, key);

const waitViewers = (page, key, n, timeout = T.dashboard) => page.waitForFunction(([k, want]) => {
  const el = document.querySelector(`tr[data-stream="${CSS.escape(k)}"] [data-field="viewers"]`);
  return el && Number(el.dataset.value) === want;
}, [key, n], { timeout, polling: 100 });

/** Shows the player's control bar (it fades out while the pointer is still). */
async function wakeControls(page) {
  const box = await page.locator('#stage').boundingBox();
  if (box) {
    await page.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.55);
    await page.mouse.move(box.x + box.width * 0.62, box.y + box.height * 0.5);
  }
  await page.waitForTimeout(300); // the fade-in transition
}

// 404s of the offline probe are expected; every other console error is worth seeing.
const openPage = (context, url, label) => open(context, url, label, { timeout: T.page, quiet: /404/ });

// --- The run ---------------------------------------------------------------------------------
async function main() {
  const browser = await launch();
  const result = { stream: STREAM, screenshots: [] };
  try {
    const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true,
    });

    // 1. Offline: the stream is not live yet.
    const player = await openPage(desktop, PLAYER_URL, 'player');
    await waitState(player, 'offline');
    result.offline = {
      state: await player.evaluate(() => document.body.dataset.state),
      heading: await player.locator('.veil-offline h2').innerText(),
      overlayVisible: await player.locator('.veil-offline').isVisible(),
    };
    result.embed = await player.inputValue('#embed-code');
    result.flvUrl = await player.evaluate(() => window.corriente.flvUrl);
    result.screenshots.push(await shot(player, 'player-offline-desktop.png'));
    {
      const p = await openPage(phone, PLAYER_URL, 'player (phone)');
      await waitState(p, 'offline');
      result.screenshots.push(await shot(p, 'player-offline-phone.png'));
      await p.close();
    }
    const dashboard = await openPage(desktop, DASHBOARD_URL, 'dashboard');
    await dashboard.waitForFunction(() => document.body.dataset.loaded === 'true', null, { timeout: T.dashboard });
    result.dashboardBefore = {
      row: await dashboardRow(dashboard, STREAM),
      emptyShown: await dashboard.locator('#streams-empty').isVisible(),
      nodes: await dashboard.$$eval('[data-node]', (els) => els.map((e) => ({ id: e.dataset.node, role: e.dataset.role, ready: e.dataset.ready }))),
    };
    result.screenshots.push(await shot(dashboard, 'dashboard-empty-desktop.png'));

    // 2. The publisher starts: the open page starts playing by itself.
    await need('publish');
    const published = Date.now();
    await waitState(player, 'playing');
    result.timeToPlayingAfterPublish = seconds(Date.now() - published);
    // The first bitrate the page shows (right after the join's GOP-cache burst).
    await player.waitForFunction(() => document.getElementById('fact-bitrate').dataset.bps, null, { timeout: T.state, polling: 100 });
    result.bitrateFirst = {
      bps: await player.evaluate(() => Number(document.getElementById('fact-bitrate').dataset.bps)),
      text: await player.locator('#fact-bitrate').innerText(),
      afterPublish: seconds(Date.now() - published),
    };
    log(`playing ${result.timeToPlayingAfterPublish} s after the publisher started`);
    await player.waitForFunction(() => document.getElementById('video').currentTime > 3, null, { timeout: T.state, polling: 100 });
    result.timeToThreeSecondsAfterPublish = seconds(Date.now() - published);

    // 3. Steady playback: progress, decoded frames, distance to live.
    const samples = [];
    for (let i = 0; i < 25; i++) {
      samples.push(await playerSnapshot(player));
      await player.waitForTimeout(200);
    }
    const first = samples[0];
    const last = samples[samples.length - 1];
    const latencies = samples.map((s) => s.latency).filter((l) => l !== null);
    const indicators = samples.map((s) => s.indicator).filter((l) => l !== null);
    result.playback = {
      states: [...new Set(samples.map((s) => s.state))],
      currentTime: last.currentTime,
      advancedSeconds: last.currentTime - first.currentTime,
      wallSeconds: (last.at - first.at) / 1000,
      framesFirst: first.frames,
      framesLast: last.frames,
      dropped: last.dropped,
      latencyMax: Math.max(...latencies),
      latencyMean: latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length),
      indicatorMax: indicators.length ? Math.max(...indicators) : null,
      bitrates: samples.map((s) => s.bitrate),
      indicatorText: await player.locator('#latency').innerText(),
      samples: latencies.length,
      videoWidth: last.videoWidth,
      videoHeight: last.videoHeight,
      muted: last.muted,
      unmuteShown: await player.locator('#unmute').isVisible(),
      facts: await player.locator('#fact-video').innerText(),
    };
    log('playback', JSON.stringify(result.playback));
    await wakeControls(player);
    result.controlsShown = await player.locator('#mute').isVisible() && await player.locator('#fullscreen').isVisible();
    result.screenshots.push(await shot(player, 'player-desktop.png'));
    // Unmuting is one click.
    await player.click('#unmute');
    result.unmutedByClick = await player.evaluate(() => !document.getElementById('video').muted);

    // 4. The dashboard: the stream with its codec, resolution and viewers; a second viewer joins.
    await waitViewers(dashboard, STREAM, 1);
    result.dashboardOneViewer = await dashboardRow(dashboard, STREAM);
    const second = await openPage(phone, PLAYER_URL, 'player (phone)');
    await waitState(second, 'playing');
    const joined = Date.now();
    await waitViewers(dashboard, STREAM, 2);
    result.dashboardViewerUpdateSeconds = seconds(Date.now() - joined);
    result.dashboardTwoViewers = await dashboardRow(dashboard, STREAM);
    log('dashboard', JSON.stringify(result.dashboardTwoViewers));
    result.screenshots.push(await shot(dashboard, 'dashboard-desktop.png'));
    {
      const d = await openPage(phone, DASHBOARD_URL, 'dashboard (phone)');
      await waitViewers(d, STREAM, 2);
      result.screenshots.push(await shot(d, 'dashboard-phone.png'));
      await d.close();
    }
    await second.waitForFunction(() => document.getElementById('video').currentTime > 1, null, { timeout: T.state });
    await wakeControls(second);
    result.screenshots.push(await shot(second, 'player-phone.png'));
    await second.close();
    await waitViewers(dashboard, STREAM, 1);
    result.dashboardAfterLeave = await dashboardRow(dashboard, STREAM);

    // 5. A token in the page URL reaches the stream request.
    {
      const p = await desktop.newPage();
      const flvRequests = [];
      p.on('request', (r) => { if (r.url().includes('.flv')) flvRequests.push(r.url()); });
      await p.goto(PLAYER_URL + '?token=t0k3n', { timeout: T.page });
      await waitState(p, 'playing');
      result.tokenRequests = [...new Set(flvRequests)];
      await p.close();
    }

    // 6. The broadcast stops, then comes back: the page goes offline and recovers by itself.
    await need('unpublish');
    const stopped = Date.now();
    await waitState(player, 'offline');
    result.offlineAfterUnpublish = seconds(Date.now() - stopped);
    await need('publish');
    const back = Date.now();
    await waitState(player, 'playing');
    const t0 = await player.evaluate(() => document.getElementById('video').currentTime);
    await player.waitForFunction((t) => document.getElementById('video').currentTime > t + 1, t0, { timeout: T.state });
    result.replayingAfterRepublish = seconds(Date.now() - back);
    log(`offline ${result.offlineAfterUnpublish} s after unpublish; playing ${result.replayingAfterRepublish} s after republish`);

    // 7. Audio only: the radio layout.
    await need('publish-radio');
    const radio = await openPage(desktop, RADIO_URL, 'radio');
    await waitState(radio, 'playing');
    await radio.waitForFunction(() => document.getElementById('video').currentTime > 1, null, { timeout: T.state });
    result.radio = {
      layout: await radio.evaluate(() => document.body.dataset.layout),
      artVisible: await radio.locator('.radio').isVisible(),
      facts: await radio.locator('#fact-video').innerText(),
      ...(await playerSnapshot(radio)),
    };
    await wakeControls(radio);
    result.screenshots.push(await shot(radio, 'player-audio-desktop.png'));
    await radio.close();

    await desktop.close();
    await phone.close();
  } catch (e) {
    // What every open page showed when it went wrong.
    await screenshotPages(browser, 'failure', (page) =>
      page.evaluate(() => document.body.dataset.state).catch(() => '?').then((state) => `state ${state}`));
    throw e;
  } finally {
    await browser.close();
  }
  emit({ result });
}

run(main);
