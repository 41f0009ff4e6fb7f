// Drives Debian's headless Chromium over a recording on Corriente's player page (`?vod=ID`) and
// the dashboard's Recordings table, and prints what it measured as JSON. Run by
// tests/tests/vod_browser.rs, which records a 20 s publication before starting this.
//
//   stdout  one JSON object per line: {"result":{...}} on success, {"error":"..."} on failure.
//   stderr  progress, for humans.
//
// Environment: CORRIENTE_PLAYER_URL (http://EDGE/live/NAME?vod=ID), CORRIENTE_RECORDING_ID (ID),
// CORRIENTE_DASHBOARD_URL (http://ADMIN/), and those of lib.mjs: CORRIENTE_ARTIFACTS (directory
// for screenshots), CHROMIUM (default /usr/bin/chromium); CORRIENTE_VOD_DEBUG=1 adds every /vod/
// request's and response's headers to the result.

import { browserScript, emit, env, seconds } from './lib.mjs';

const PLAYER_URL = env('CORRIENTE_PLAYER_URL');
const RECORDING_ID = env('CORRIENTE_RECORDING_ID');
const DASHBOARD_URL = env('CORRIENTE_DASHBOARD_URL');
const STREAM = new URL(PLAYER_URL).pathname.replace(/^\//, ''); // "live/NAME"

// Generous: a loaded 2-core machine runs cargo, corriente and Chromium at once.
const T = { page: 30_000, media: 60_000, dashboard: 30_000 };
/** Until the seek has played through, the page downloads at this rate (about twice the
 *  recording's bitrate): on loopback the whole file would arrive in the first response, and
 *  the seek would never need a range request. */
const THROTTLE_BYTES_PER_S = 100_000;

const { log, launch, shot, openPage: open, screenshotPages, run } = browserScript('vod');

/** A new page at `url`; `before(page)` runs first (to watch its traffic from the start). 404s of
 *  the live player's offline probe are expected; every other console error is worth seeing. */
const openPage = (context, url, label, before) =>
  open(context, url, label, { timeout: T.page, quiet: /404/, before });

/** Every /vod/ response the page saw: method, status, the Range asked for, what came back. */
function recordVodTraffic(page) {
  const seen = [];
  page.on('response', async (response) => {
    const request = response.request();
    if (!new URL(request.url()).pathname.startsWith('/vod/')) return;
    const entry = {
      method: request.method(),
      path: new URL(request.url()).pathname,
      query: new URL(request.url()).search,
      status: response.status(),
    };
    seen.push(entry);
    try {
      entry.at = seconds(performance.now());
      const asked = await request.allHeaders();
      const got = await response.allHeaders();
      entry.range = asked.range ?? null;
      entry.contentRange = got['content-range'] ?? null;
      entry.contentLength = got['content-length'] ?? null;
      entry.type = got['content-type'] ?? null;
      if (process.env.CORRIENTE_VOD_DEBUG) { entry.asked = asked; entry.got = got; }
    } catch (_) {
      // The page went away before the headers could be read.
    }
  });
  page.on('requestfailed', (request) => {
    if (!new URL(request.url()).pathname.startsWith('/vod/')) return;
    seen.push({ method: request.method(), path: new URL(request.url()).pathname, failed: request.failure()?.errorText ?? 'failed' });
  });
  return seen;
}

/** What the recording's `<video>` shows right now. */
const vodSnapshot = (page) => page.evaluate(() => {
  const v = document.getElementById('vod');
  const q = v.getVideoPlaybackQuality();
  return {
    view: document.body.dataset.view,
    vodState: document.body.dataset.vodState,
    src: v.currentSrc,
    duration: v.duration,
    currentTime: v.currentTime,
    readyState: v.readyState,
    paused: v.paused,
    muted: v.muted,
    frames: q.totalVideoFrames,
    dropped: q.droppedVideoFrames,
    videoWidth: v.videoWidth,
    videoHeight: v.videoHeight,
    error: v.error ? { code: v.error.code, message: v.error.message } : null,
  };
});

const noVodError = (page) => page.evaluate(() => {
  const v = document.getElementById('vod');
  if (v.error) throw new Error(`the recording's <video> failed: code ${v.error.code} ${v.error.message}`);
});

async function main() {
  const browser = await launch();
  const result = { stream: STREAM, id: RECORDING_ID, screenshots: [] };
  try {
    const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 } });

    // 1. `?vod=ID` opens the recording (autoplaying, muted) and knows its duration. The network
    //    is throttled from the start, so the middle is not downloaded yet when it seeks there.
    let traffic = [];
    let cdp = null;
    const throttle = (bytesPerSecond) => cdp.send('Network.emulateNetworkConditions', {
      offline: false, latency: 0, downloadThroughput: bytesPerSecond, uploadThroughput: -1,
    });
    const player = await openPage(desktop, PLAYER_URL, 'player', async (p) => {
      traffic = recordVodTraffic(p);
      cdp = await desktop.newCDPSession(p);
      await cdp.send('Network.enable');
      await throttle(THROTTLE_BYTES_PER_S);
    });
    result.throttleBytesPerSecond = THROTTLE_BYTES_PER_S;
    await player.waitForFunction(() => {
      const v = document.getElementById('vod');
      return v.error || (Number.isFinite(v.duration) && v.duration > 0 && v.readyState >= 1);
    }, null, { timeout: T.media, polling: 50 });
    await noVodError(player);
    result.opened = await vodSnapshot(player);
    log('opened', JSON.stringify(result.opened));

    // 2. Seek to the middle: seeked, then at least 1.5 s of decoded playback past the target.
    traffic.push({ marker: 'seek', at: seconds(performance.now()) });
    await player.evaluate(() => {
      const v = document.getElementById('vod');
      const b = v.buffered;
      const s = {
        bufferedAtSeek: b.length ? b.end(b.length - 1) : 0,
        target: v.duration / 2,
        framesAtSeek: v.getVideoPlaybackQuality().totalVideoFrames,
        startedAt: performance.now(),
        seekedAt: null,
        firstFrameAt: null,
        firstFrameMediaTime: null,
        errors: [],
      };
      window.__seek = s;
      v.addEventListener('error', () => s.errors.push(v.error ? `${v.error.code} ${v.error.message}` : 'error'));
      v.addEventListener('seeked', () => { if (s.seekedAt === null) s.seekedAt = performance.now(); }, { once: true });
      // The first frame presented from the new position (one from before the seek may still be
      // on its way to the screen: skip it).
      const onFrame = (_now, meta) => {
        if (meta.mediaTime >= s.target - 0.25) {
          s.firstFrameAt = performance.now();
          s.firstFrameMediaTime = meta.mediaTime;
        } else {
          v.requestVideoFrameCallback(onFrame);
        }
      };
      v.currentTime = s.target;
      if (typeof v.requestVideoFrameCallback === 'function') v.requestVideoFrameCallback(onFrame);
    });
    await player.waitForFunction(() => window.__seek.seekedAt !== null || window.__seek.errors.length > 0,
      null, { timeout: T.media, polling: 50 });
    await player.waitForFunction(() => {
      const v = document.getElementById('vod');
      const s = window.__seek;
      if (s.errors.length || v.error) return true;
      return v.currentTime >= s.target + 1.5 &&
        v.getVideoPlaybackQuality().totalVideoFrames > s.framesAtSeek;
    }, null, { timeout: T.media, polling: 100 });
    await noVodError(player);
    const seek = await player.evaluate(() => {
      const v = document.getElementById('vod');
      const s = window.__seek;
      return {
        target: s.target,
        reached: v.currentTime,
        framesAtSeek: s.framesAtSeek,
        framesAfterSeek: v.getVideoPlaybackQuality().totalVideoFrames - s.framesAtSeek,
        droppedFrames: v.getVideoPlaybackQuality().droppedVideoFrames,
        seekedMs: s.seekedAt === null ? null : s.seekedAt - s.startedAt,
        firstFrameMs: s.firstFrameAt === null ? null : s.firstFrameAt - s.startedAt,
        firstFrameMediaTime: s.firstFrameMediaTime,
        wallMs: performance.now() - s.startedAt,
        errors: s.errors,
      };
    });
    // Time to the first frame: the frame callback's, else `seeked` (the frame at the target).
    seek.seekToFirstFrameMs = seek.firstFrameMs ?? seek.seekedMs;
    seek.bufferedAtSeek = await player.evaluate(() => window.__seek.bufferedAtSeek);
    result.seek = seek;
    log('seek', JSON.stringify(seek));
    // Autoplay, muted, still going by itself after the seek.
    result.autoplay = await vodSnapshot(player);
    await throttle(-1);
    result.screenshots.push(await shot(player, 'vod-player-desktop.png'));

    // 3. The page's Recordings list shows it, marked as the one playing.
    const item = `#recordings [data-recording="${RECORDING_ID}"]`;
    await player.waitForSelector(item, { timeout: T.page, state: 'visible' });
    result.list = await player.evaluate((sel) => {
      const el = document.querySelector(sel);
      return {
        count: Number(document.getElementById('recordings-panel').dataset.count),
        text: el.innerText.replace(/\s+/g, ' ').trim(),
        current: el.getAttribute('aria-current') === 'true',
        durationText: el.querySelector('.rec-duration').textContent,
        sizeText: el.querySelector('.rec-size').textContent,
        durationMs: Number(el.dataset.durationMs),
        size: Number(el.dataset.size),
        url: el.dataset.url,
      };
    }, item);
    log('list', JSON.stringify(result.list));

    // 4. "Back to live" returns to the live view (offline: the broadcast ended); clicking the
    //    recording in the list plays it again.
    traffic.push({ marker: 'back to live', at: seconds(performance.now()) });
    await player.click('#back-to-live');
    await player.waitForFunction(() => document.body.dataset.view === 'live' && document.body.dataset.state === 'offline',
      null, { timeout: T.page, polling: 100 });
    result.backToLive = {
      view: await player.evaluate(() => document.body.dataset.view),
      state: await player.evaluate(() => document.body.dataset.state),
      liveVisible: await player.locator('#stage').isVisible(),
      vodVisible: await player.locator('#vod-stage').isVisible(),
      url: player.url(),
    };
    traffic.push({ marker: 'click in the list', at: seconds(performance.now()) });
    await player.click(item);
    await player.waitForFunction(() => {
      const v = document.getElementById('vod');
      return v.error || (document.body.dataset.view === 'vod' && !v.paused && v.currentTime > 0.5);
    }, null, { timeout: T.media, polling: 100 });
    await noVodError(player);
    result.replayByClick = { ...(await vodSnapshot(player)), url: player.url() };
    log('replay by click', JSON.stringify(result.replayByClick));
    result.vodRequests = traffic;

    // 5. The dashboard's Recordings table: the recording, complete, with its origin and URL.
    const dashboard = await openPage(desktop, DASHBOARD_URL, 'dashboard');
    const row = `tr[data-recording="${STREAM}/${RECORDING_ID}"]`;
    await dashboard.waitForFunction((sel) => {
      const el = document.querySelector(sel + ' [data-field="state"]');
      return el && el.dataset.value === 'complete';
    }, row, { timeout: T.dashboard, polling: 100 });
    result.dashboard = await dashboard.evaluate((sel) => {
      const el = document.querySelector(sel);
      const out = { id: el.dataset.id };
      el.querySelectorAll('[data-field]').forEach((f) => {
        out[f.dataset.field] = f.dataset.value ?? f.getAttribute('href');
      });
      const link = el.querySelector('a[data-field="player"]');
      out.player = link ? link.href : null;
      return out;
    }, row);
    log('dashboard', JSON.stringify(result.dashboard));
    await dashboard.locator(row).scrollIntoViewIfNeeded();
    result.screenshots.push(await shot(dashboard, 'vod-dashboard-desktop.png'));

    // 6. On a phone, with a token in the page URL: the index and the recording are asked for
    //    with the page's query (the token, not the page's own `vod=`).
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true, hasTouch: true,
    });
    let phoneTraffic = [];
    const small = await openPage(phone, PLAYER_URL + '&token=t0k3n', 'player (phone)', async (p) => {
      phoneTraffic = recordVodTraffic(p);
    });
    await small.waitForFunction(() => document.getElementById('vod').currentTime > 1, null, { timeout: T.media, polling: 100 });
    await small.waitForSelector(item, { timeout: T.page, state: 'visible' });
    result.tokenQueries = [...new Set(phoneTraffic.filter((r) => r.query !== undefined).map((r) => `${r.path}${r.query}`))];
    result.screenshots.push(await shot(small, 'vod-player-phone.png'));

    await desktop.close();
    await phone.close();
  } catch (e) {
    // What every open page showed when it went wrong.
    await screenshotPages(browser, 'vod-failure', (page) =>
      page.evaluate(() => JSON.stringify({ ...document.body.dataset })));
    throw e;
  } finally {
    await browser.close();
  }
  emit({ result });
}

run(main);
