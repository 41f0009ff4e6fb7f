// Drives Debian's headless Chromium over Corriente's LL-HLS: the player page forced to hls.js
// (`?tech=hls`), its switch between HTTP-FLV and LL-HLS, hls.js alone on a bare page playing
// the raw `/APP/NAME.m3u8`, and the page in a browser without MSE (the `<video>`'s own HLS). Prints what it measured as JSON. Run by tests/tests/hls_browser.rs,
// which owns the cluster and the (already live) publisher:
//
//   stdout  {"result":{...}} on success, {"error":"..."} on failure.
//   stderr  progress, for humans.
//
// With CORRIENTE_HLS_MODE=failover it plays through a failover instead (see `failover`).
//
// Environment: CORRIENTE_PLAYER_URL (http://EDGE/live/NAME, live when this starts), and those of
// lib.mjs: CORRIENTE_ARTIFACTS (directory for screenshots), CHROMIUM (default /usr/bin/chromium).
//
// Latency to live is sampled every 250 ms inside the page, two ways: hls.js's own `hls.latency`
// (the playlist's live edge, as old as the playlist is, minus the playhead) and, independently,
// the wall clock minus the program date-time of the playhead (the fragment under the playhead:
// its EXT-X-PROGRAM-DATE-TIME plus the playhead's offset into it). The edge's date-times are the
// publication's start plus media time, and browser and edge share this machine's clock.

import { browserScript, emit, env } from './lib.mjs';

const PLAYER_URL = env('CORRIENTE_PLAYER_URL');
const EDGE = new URL(PLAYER_URL).origin;
const STREAM_PATH = new URL(PLAYER_URL).pathname; // "/live/NAME"
const PLAYLIST_URL = EDGE + STREAM_PATH + '.m3u8';

// Generous: a loaded 2-core machine runs cargo, ffmpeg, corriente and Chromium at once. The
// first playlist request waits for the stream's first whole segment (up to two GOPs).
const T = { page: 30_000, start: 60_000, state: 30_000 };
/** The latency window: this many samples, this far apart (10 s). */
const SAMPLE_MS = 250;
const SAMPLES = 40;

const { log, launch, shot, openPage: open, screenshotPages, run, need } = browserScript('hls');

/** Before any page script: wraps the `Hls` class the page's hls.min.js defines, so that every
 *  hls.js instance reports its errors and its warnings (through hls.js's `debug` logger hook)
 *  to `window.__hlsLog`, and records `error` events of `<video>` elements. */
function instrument() {
  const logged = { errors: [], warnings: [], videoErrors: [], instances: 0 };
  window.__hlsLog = logged;
  const text = (args) => args.map((a) => (a instanceof Error ? a.message : typeof a === 'string' ? a : JSON.stringify(a))).join(' ').slice(0, 400);
  const noop = () => {};
  const logger = {
    trace: noop, debug: noop, log: noop, info: noop,
    warn: (...a) => { if (logged.warnings.length < 200) logged.warnings.push(text(a)); },
    error: (...a) => { if (logged.warnings.length < 200) logged.warnings.push('error: ' + text(a)); },
  };
  let wrapped;
  Object.defineProperty(window, 'Hls', {
    configurable: true,
    get() { return wrapped; },
    set(Real) {
      wrapped = class extends Real {
        constructor(config) {
          super(Object.assign({}, config, { debug: logger }));
          logged.instances += 1;
          this.on(Real.Events.ERROR, (event, d) => {
            if (logged.errors.length >= 200) return;
            logged.errors.push({
              at: Date.now(),
              type: d.type,
              details: d.details,
              fatal: !!d.fatal,
              status: d.response ? d.response.code : null,
              url: (d.context && d.context.url) || (d.frag && d.frag.url) || d.url || null,
              reason: d.reason || (d.error && d.error.message) || null,
            });
          });
        }
      };
    },
  });
  document.addEventListener('error', (e) => {
    const v = e.target;
    if (v && v.tagName === 'VIDEO' && v.getAttribute('src') !== null) {
      logged.videoErrors.push({ id: v.id, code: v.error ? v.error.code : null, message: v.error ? v.error.message : '' });
    }
  }, true);
}

/** In the page: samples playback every `ms` for `count` samples. `hlsExpr` names the hls.js
 *  instance, `videoId` the element. */
function sampleWindow({ ms, count, hlsExpr, videoId }) {
  // eslint-disable-next-line no-new-func
  const hlsOf = new Function('return ' + hlsExpr);
  const v = document.getElementById(videoId);
  const detailsOf = (h) => h.latestLevelDetails || (h.levels[h.currentLevel] && h.levels[h.currentLevel].details);
  /** The fragment under the playhead in hls.js's parsed playlist: the last one (complete, or
   *  the open one with its parts) starting at or before the playhead. */
  const playheadFrag = (h, t) => {
    const details = detailsOf(h);
    if (!details) return null;
    const frags = details.fragments.concat(details.fragmentHint ? [details.fragmentHint] : []);
    let found = null;
    for (const f of frags) {
      if (Number.isFinite(f.programDateTime) && f.start <= t + 1e-3) found = f;
    }
    return found;
  };
  /** The playhead's program date-time (Unix ms). */
  const playheadPdt = (h, t) => {
    const found = playheadFrag(h, t);
    return found ? found.programDateTime + (t - found.start) * 1000 : null;
  };
  return new Promise((resolve) => {
    const out = [];
    const take = () => {
      const h = hlsOf();
      const now = Date.now();
      const t = v.currentTime;
      const q = v.getVideoPlaybackQuality();
      const pdt = h ? playheadPdt(h, t) : null;
      const playing = h && h.playingDate ? h.playingDate.getTime() : null;
      const b = v.buffered;
      out.push({
        at: now,
        currentTime: t,
        frames: q.totalVideoFrames,
        dropped: q.droppedVideoFrames,
        hlsLatency: h && h.latency > 0 ? h.latency : null,
        pdtLatency: pdt === null ? null : (now - pdt) / 1000,
        playingDateLatency: playing === null ? null : (now - playing) / 1000,
        buffered: b.length ? b.end(b.length - 1) - t : null,
        rate: v.playbackRate,
        paused: v.paused,
        state: document.body.dataset.state || null,
        tech: document.body.dataset.tech || null,
        indicator: document.body.dataset.latency ? Number(document.body.dataset.latency) : null,
        bitrate: document.getElementById('fact-bitrate') ? Number(document.getElementById('fact-bitrate').dataset.bps) || null : null,
        // The playhead's discontinuity (hls.js's `cc`) and segment number, and the gap
        // segments of the playlist.
        cc: h && playheadFrag(h, t) ? playheadFrag(h, t).cc : null,
        sn: h && playheadFrag(h, t) ? playheadFrag(h, t).sn : null,
        gaps: h && detailsOf(h) ? detailsOf(h).fragments.filter((f) => f.gap).length : null,
      });
      if (out.length >= count) resolve(out);
      else setTimeout(take, Math.max(0, out[0].at + out.length * ms - Date.now()));
    };
    take();
  });
}

const percentile = (xs, p) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};

/** The figures of a sample window. */
function summarize(samples) {
  const first = samples[0];
  const last = samples[samples.length - 1];
  const of = (k) => samples.map((s) => s[k]).filter((x) => x !== null);
  const waits = (k) => ({ p50: percentile(of(k), 50), p95: percentile(of(k), 95), n: of(k).length });
  return {
    wallSeconds: (last.at - first.at) / 1000,
    advancedSeconds: last.currentTime - first.currentTime,
    framesFirst: first.frames,
    framesLast: last.frames,
    dropped: last.dropped,
    hlsLatency: waits('hlsLatency'),
    pdtLatency: waits('pdtLatency'),
    playingDateLatency: waits('playingDateLatency'),
    rates: [...new Set(samples.map((s) => s.rate))],
    states: [...new Set(samples.map((s) => s.state))],
    techs: [...new Set(samples.map((s) => s.tech))],
    paused: samples.some((s) => s.paused),
  };
}

/** What the edge answered to HLS (and FLV) requests of a page: counts per kind and status, the
 *  failures, and every URL's query (for the token check). */
function watchTraffic(page) {
  const seen = { byKind: {}, failures: [], queries: [], slowest: {} };
  const kind = (u) => (u.pathname.endsWith('.m3u8') ? (u.searchParams.has('_HLS_msn') ? 'playlist (blocking)' : 'playlist')
    : u.pathname.includes('/hls/init-') ? 'init' : /\/hls\/\d+\.\d+\.m4s$/.test(u.pathname) ? 'part'
      : /\/hls\/\d+\.m4s$/.test(u.pathname) ? 'segment' : u.pathname.endsWith('.flv') ? 'flv' : null);
  const started = new Map();
  page.on('request', (r) => started.set(r, Date.now()));
  page.on('response', (r) => {
    let u;
    try { u = new URL(r.url()); } catch (_) { return; }
    const k = kind(u);
    if (!k) return;
    const key = `${k} ${r.request().method()} ${r.status()}`;
    seen.byKind[key] = (seen.byKind[key] || 0) + 1;
    seen.queries.push(u.pathname.replace(/^.*\//, '') + u.search);
    const took = Date.now() - (started.get(r.request()) || Date.now());
    if (!seen.slowest[k] || took > seen.slowest[k]) seen.slowest[k] = took;
    if (r.status() >= 400) seen.failures.push({ at: Date.now(), method: r.request().method(), status: r.status(), url: u.pathname + u.search });
  });
  page.on('requestfailed', (r) => {
    let u;
    try { u = new URL(r.url()); } catch (_) { return; }
    // (A probe's HEAD and a player torn down show here as net::ERR_ABORTED: the page's own doing.)
    if (kind(u)) seen.failures.push({ at: Date.now(), method: r.method(), status: null, url: u.pathname + u.search, failure: r.failure() && r.failure().errorText });
  });
  return seen;
}

/** A new page at `url`, and what it asks the edge for (from its first request on). */
async function openPage(context, url, label) {
  let traffic;
  const page = await open(context, url, label, { timeout: T.page, before: async (p) => { traffic = watchTraffic(p); } });
  return [page, traffic];
}

/** A page of `context` of no origin of the edge's, where hls.js alone (`window.__hls`, low
 *  latency) plays the raw playlist URL into `<video id="v">`; and what it asks the edge for. */
async function openBare(context, label) {
  const page = await context.newPage();
  page.on('pageerror', (e) => log(`${label}: page error: ${e.message}`));
  const traffic = watchTraffic(page);
  await page.setContent(`<!doctype html><html><body style="margin:0;background:#000">
<video id="v" muted autoplay playsinline style="width:640px;height:480px"></video>
<script src="${EDGE}/_corriente/hls.min.js"></script>
<script>
  const v = document.getElementById('v');
  window.__hls = new Hls({ lowLatencyMode: true });
  window.__hls.loadSource(${JSON.stringify(PLAYLIST_URL)});
  window.__hls.attachMedia(v);
  v.play().catch(() => {});
</script></body></html>`, { timeout: T.page, waitUntil: 'load' });
  return [page, traffic];
}

const hlsLog = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.__hlsLog)));

/** Waits for steady playback: playing, a few seconds in, hls.js's latency known. */
const settle = (page, hlsExpr, videoId, timeout) => page.waitForFunction(([expr, id]) => {
  const h = new Function('return ' + expr)();
  const v = document.getElementById(id);
  return h && v && !v.paused && v.currentTime > 3 && h.latency > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 60;
}, [hlsExpr, videoId], { timeout, polling: 100 });

// --- The run ---------------------------------------------------------------------------------
async function main() {
  const browser = await launch();
  const result = { screenshots: [] };
  try {
    const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    await desktop.addInitScript(instrument);

    // 1. The player page, forced to LL-HLS.
    {
      const opened = Date.now();
      const [page, traffic] = await openPage(desktop, PLAYER_URL + '?tech=hls', 'player');
      await page.waitForFunction(() => document.body.dataset.state === 'playing', null, { timeout: T.start, polling: 100 });
      const toPlaying = (Date.now() - opened) / 1000;
      await settle(page, 'window.corriente.player', 'video', T.state);
      log(`player: playing after ${toPlaying} s; sampling ${SAMPLES} x ${SAMPLE_MS} ms`);
      const samples = await page.evaluate(sampleWindow, { ms: SAMPLE_MS, count: SAMPLES, hlsExpr: 'window.corriente.player', videoId: 'video' });
      const video = await page.evaluate(() => {
        const v = document.getElementById('video');
        return {
          width: v.videoWidth,
          height: v.videoHeight,
          facts: document.getElementById('fact-video').textContent,
          audio: document.getElementById('fact-audio').textContent,
          playback: document.getElementById('fact-tech').textContent,
          switchShown: !document.getElementById('tech-switch').hidden,
          pressed: document.querySelector('[data-tech-choice][aria-pressed="true"]')?.dataset.techChoice ?? null,
          hlsUrl: window.corriente.hlsUrl,
          hlsVersion: typeof Hls !== 'undefined' ? Hls.version : null,
          bitrateText: document.getElementById('fact-bitrate').textContent,
        };
      });
      result.player = {
        url: page.url(),
        tech: await page.evaluate(() => document.body.dataset.tech),
        timeToPlaying: toPlaying,
        ...video,
        summary: summarize(samples),
        samples,
        hls: await hlsLog(page),
        traffic,
      };
      log('player', JSON.stringify(result.player.summary));
      result.screenshots.push(await shot(page, 'hls-player-desktop.png'));
      await page.close();
    }

    // 2. A token goes to the playlist; the viewer's switch goes to HTTP-FLV and back, and the
    //    page's own `tech=` never reaches the edge.
    {
      const [page, traffic] = await openPage(desktop, PLAYER_URL + '?token=t0k3n&tech=hls', 'player (token)');
      const playingWith = (tech) => page.waitForFunction((t) => document.body.dataset.tech === t &&
        document.body.dataset.state === 'playing' && document.getElementById('video').currentTime > 1, tech, { timeout: T.start, polling: 100 });
      await playingWith('hls');
      const before = { url: page.url(), tech: await page.evaluate(() => document.body.dataset.tech) };
      await page.click('[data-tech-choice="flv"]');
      await playingWith('flv');
      const flv = { url: page.url(), tech: await page.evaluate(() => document.body.dataset.tech) };
      result.screenshots.push(await shot(page, 'hls-player-switched-to-flv.png', true));
      await page.click('[data-tech-choice="hls"]');
      await playingWith('hls');
      const back = { url: page.url(), tech: await page.evaluate(() => document.body.dataset.tech) };
      result.switching = { before, flv, back, queries: [...new Set(traffic.queries.filter((q) => !/\.m4s|init-/.test(q)))], failures: traffic.failures, hls: await hlsLog(page) };
      log('switching', JSON.stringify({ before, flv, back }));
      await page.close();
    }

    // 3. hls.js alone, on a page of another origin, playing the raw playlist URL.
    {
      const [page, traffic] = await openBare(desktop, 'bare');
      await settle(page, 'window.__hls', 'v', T.start);
      const samples = await page.evaluate(sampleWindow, { ms: SAMPLE_MS, count: SAMPLES, hlsExpr: 'window.__hls', videoId: 'v' });
      result.bare = {
        playlist: PLAYLIST_URL,
        origin: await page.evaluate(() => location.origin),
        width: await page.evaluate(() => document.getElementById('v').videoWidth),
        height: await page.evaluate(() => document.getElementById('v').videoHeight),
        summary: summarize(samples),
        hls: await hlsLog(page),
        traffic,
      };
      log('bare', JSON.stringify(result.bare.summary));
      result.screenshots.push(await shot(page, 'hls-bare-page.png'));
      await page.close();
    }
    await desktop.close();

    // 4. A browser without MSE that plays HLS itself (as older iPhones do): the page hands the
    //    playlist to the `<video>`. Chromium plays HLS natively too; MSE is hidden from the page.
    {
      const noMse = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
      await noMse.addInitScript(() => {
        delete window.MediaSource;
        delete window.ManagedMediaSource;
        delete window.WebKitMediaSource;
      });
      await noMse.addInitScript(instrument);
      const [page, traffic] = await openPage(noMse, PLAYER_URL, 'player (no MSE)');
      const nativeHls = await page.evaluate(() => document.createElement('video').canPlayType('application/vnd.apple.mpegurl'));
      result.native = { canPlayType: nativeHls, tech: await page.evaluate(() => document.body.dataset.tech) };
      if (nativeHls) {
        await page.waitForFunction(() => document.body.dataset.state === 'playing' && document.getElementById('video').currentTime > 2, null, { timeout: T.start, polling: 100 });
        const from = await page.evaluate(() => ({ t: document.getElementById('video').currentTime, frames: document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames }));
        await page.waitForFunction((t) => document.getElementById('video').currentTime > t + 3, from.t, { timeout: T.state, polling: 100 });
        Object.assign(result.native, await page.evaluate(() => {
          const v = document.getElementById('video');
          return {
            src: v.currentSrc,
            width: v.videoWidth,
            height: v.videoHeight,
            frames: v.getVideoPlaybackQuality().totalVideoFrames,
            indicator: document.body.dataset.latency ? Number(document.body.dataset.latency) : null,
            switchShown: !document.getElementById('tech-switch').hidden,
          };
        }), { framesBefore: from.frames, hls: await hlsLog(page), failures: traffic.failures });
        result.screenshots.push(await shot(page, 'hls-native-phone.png'));
      }
      log('native', JSON.stringify(result.native));
      await noMse.close();
    }
  } catch (e) {
    await screenshotPages(browser, 'hls-failure', (page) =>
      page.evaluate(() => [document.body.dataset.state, document.body.dataset.tech, JSON.stringify(window.__hlsLog)]));
    throw e;
  } finally {
    await browser.close();
  }
  emit({ result });
}

/** hls.js on a bare page through a failover: plays, asks the test to kill the stream's origin
 *  and republish on another (`{"need":"failover"}`), and samples playback for 20 s after. */
async function failover() {
  const browser = await launch();
  const result = { screenshots: [] };
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    await context.addInitScript(instrument);
    const [page, traffic] = await openBare(context, 'failover');
    await settle(page, 'window.__hls', 'v', T.start);
    const window_ = { ms: SAMPLE_MS, hlsExpr: 'window.__hls', videoId: 'v' };
    const before = await page.evaluate(sampleWindow, { ...window_, count: 8 });
    await need('failover');
    const after = await page.evaluate(sampleWindow, { ...window_, count: 80 });
    // The longest time the decoded frame count stood still.
    let stall = 0;
    let since = after[0];
    for (const s of after) {
      if (s.frames > since.frames) since = s;
      stall = Math.max(stall, s.at - since.at);
    }
    result.failover = {
      before: summarize(before),
      after: summarize(after),
      longestStallSeconds: stall / 1000,
      ccs: [...new Set(before.concat(after).map((s) => s.cc).filter((c) => c !== null))],
      maxGaps: Math.max(0, ...after.map((s) => s.gaps || 0)),
      lastSample: after[after.length - 1],
      hls: await hlsLog(page),
      traffic,
    };
    log('failover', JSON.stringify({ ...result.failover, hls: undefined, traffic: undefined }));
    result.screenshots.push(await shot(page, 'hls-failover.png'));
  } catch (e) {
    await screenshotPages(browser, 'hls-failover-failure', (page) =>
      page.evaluate(() => JSON.stringify(window.__hlsLog)));
    throw e;
  } finally {
    await browser.close();
  }
  emit({ result });
}

run(process.env.CORRIENTE_HLS_MODE === 'failover' ? failover : main);
