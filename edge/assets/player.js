// Corriente player page: plays this page's stream close to the live edge, with one of three
// technologies (the page's query string is kept on the media URLs, so a playback token passes
// through):
//   flv         `/APP/NAME.flv` (HTTP-FLV) with mpegts.js: the default, wherever MSE can play it
//   hls         `/APP/NAME.m3u8` (LL-HLS) with hls.js in `lowLatencyMode`, where mpegts.js cannot
//   native-hls  the same playlist as the `<video>`'s own source, in browsers that play HLS
//               themselves and have no MSE (iPhones before iOS 17.1)
// The viewer can switch between HTTP-FLV and LL-HLS; `?tech=flv` or `?tech=hls` in the page URL
// forces one (and is not passed on to the media URLs). The one in use is on
// `document.body.dataset.tech`.
//
// States, mirrored on `document.body.dataset.state` for people (CSS) and tests:
//   loading  connecting or waiting for the first frame
//   playing  frames are being shown
//   offline  the edge answered 404: nobody is publishing; the page polls and starts by itself
//   error    anything else (network down, 503, 403, decode error); retried with backoff
//
// Recordings: the page lists the stream's recordings (`/vod/APP/NAME/index.json`) and plays one
// in its own native `<video id="vod">` (the browser seeks with HTTP ranges). While it does,
// `document.body.dataset.view` is `vod` (else `live`), `dataset.vod` names the recording, and the
// live player is stopped (state `loading`) until "Back to live". `?vod=ID` opens one directly.
(function () {
  'use strict';

  /** How often an offline stream is checked (and when the tab is hidden). */
  const OFFLINE_POLL_MS = 2000;
  const OFFLINE_POLL_HIDDEN_MS = 10000;
  /** Backoff between attempts after failures: doubles from MIN up to MAX. */
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 15000;
  /** A probe (HEAD of the .flv) that has not answered by then counts as a network failure. */
  const PROBE_TIMEOUT_MS = 8000;
  /** No first frame this long after connecting, or no progress this long while playing:
   *  reconnect. Longer than the edge's upstream grace, so a failover is waited out. */
  const START_TIMEOUT_MS = 20000;
  const STALL_TIMEOUT_MS = 15000;
  /** Behind live by more than this: the LIVE badge greys out (click it to jump). */
  const BEHIND_S = 3;

  /** hls.js for LL-HLS: parts and blocking playlist reloads (`lowLatencyMode`), the target
   *  latency from the playlist's PART-HOLD-BACK, and a gentle speed-up when behind it. The
   *  edge holds a blocking request up to 6 s (three target durations); hls.js's default time-
   *  outs (10 s to the first byte) are longer than that. */
  const HLS_CONFIG = {
    lowLatencyMode: true,
    enableWorker: true,
    backBufferLength: 30,
    maxLiveSyncPlaybackRate: 1.1,
    liveDurationInfinity: true,
  };

  /** Low-latency mpegts.js settings: no stash buffer, a gentle speed-up past 1.2 s behind
   *  live and a jump to the live edge past 2 s (the GOP cache hands a new viewer up to one
   *  GOP of backlog, which the jump removes at once). */
  const PLAYER_CONFIG = {
    enableWorker: false,
    enableStashBuffer: false,
    stashInitialSize: 128 * 1024,
    isLive: true,
    lazyLoad: false,
    deferLoadAfterSourceOpen: false,
    autoCleanupSourceBuffer: true,
    autoCleanupMaxBackwardDuration: 30,
    autoCleanupMinBackwardDuration: 10,
    liveBufferLatencyChasing: true,
    liveBufferLatencyMaxLatency: 2.0,
    liveBufferLatencyMinRemain: 0.5,
    liveSync: true,
    liveSyncMaxLatency: 1.2,
    liveSyncTargetLatency: 0.7,
    liveSyncPlaybackRate: 1.1,
    statisticsInfoReportInterval: 1000,
  };

  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const video = $('video');
  const stage = $('stage');

  // --- Where the stream is -------------------------------------------------------------
  const path = location.pathname.replace(/\/+$/, '');
  const parts = path.split('/').filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch (_) { return p; }
  });
  const app = parts[0] || '';
  const name = parts.slice(1).join('/') || '';
  /** The page's own parameters: they say what the page does and never reach the edge. */
  const OWN_PARAMS = ['vod', 'tech', 'session'];
  /** The page's query without its own parameters, other pairs byte for byte (a token passes
   *  through as it came). */
  const withoutOwn = (search) => {
    const pairs = search.replace(/^\?/, '').split('&').filter((p) => p !== '' && !OWN_PARAMS.includes(p.split('=')[0]));
    return pairs.length ? '?' + pairs.join('&') : '';
  };
  const param = (search, key) => {
    for (const pair of search.replace(/^\?/, '').split('&')) {
      const [k, v] = pair.split('=');
      if (k === key && v) {
        try { return decodeURIComponent(v); } catch (_) { return v; }
      }
    }
    return null;
  };
  const vodParam = (search) => param(search, 'vod');
  const query = withoutOwn(location.search);
  const flvUrl = location.origin + path + '.flv' + query;
  // A session of its own for the playlist, so that the edge counts two tabs as two HLS viewers
  // (the edge keeps it off media URIs, which caches share).
  const session = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, '0')).join('');
  const hlsShareUrl = location.origin + path + '.m3u8' + query;
  const hlsUrl = hlsShareUrl + (query ? '&' : '?') + 'session=' + session;
  const pageUrl = location.origin + path + query;

  // --- Which technology plays the live stream -------------------------------------------
  /** What this browser can use. Live playback needs Media Source Extensions (mpegts.js,
   *  hls.js) or a browser that plays HLS itself; recordings play without either. */
  const can = {
    flv: typeof mpegts !== 'undefined' && mpegts.isSupported() &&
      !(mpegts.getFeatureList && !mpegts.getFeatureList().mseLivePlayback),
    hls: typeof Hls !== 'undefined' && Hls.isSupported(),
    native: typeof video.canPlayType === 'function' &&
      (video.canPlayType('application/vnd.apple.mpegurl') !== '' || video.canPlayType('application/x-mpegURL') !== ''),
  };
  /** The technology for a wish (`flv`, `hls` or none): the wish when this browser can, else the
   *  best it can: HTTP-FLV, then hls.js, then its own HLS (only used without MSE). */
  function techFor(wish) {
    if (wish === 'flv' && can.flv) return 'flv';
    if (wish === 'hls' && can.hls) return 'hls';
    if (wish === 'hls' && can.native) return 'native-hls';
    if (can.flv) return 'flv';
    if (can.hls) return 'hls';
    if (can.native) return 'native-hls';
    return null;
  }
  /** What the viewer's switch calls a technology. */
  const family = (t) => (t === 'flv' ? 'flv' : t ? 'hls' : null);
  const ENGINE = { flv: 'HTTP-FLV · mpegts.js', hls: 'LL-HLS · hls.js', 'native-hls': 'LL-HLS · the browser\'s own player' };
  const wished = param(location.search, 'tech');
  /** The technology in use for live playback (null: this browser has none). */
  let tech = techFor(wished);
  /** Asked for by `?tech=` or the viewer's switch: then the page's URL keeps saying so. */
  let techPinned = (wished === 'flv' || wished === 'hls') && family(tech) === wished;
  const liveSupported = tech !== null;

  // --- State ---------------------------------------------------------------------------
  let player = null;
  /** Bumped on every attempt: callbacks of an older attempt see a different value and stop. */
  let attempt = 0;
  let timer = null;
  let failures = 0;
  let playingSince = 0;
  let startedAt = 0;
  let lastTime = -1;
  let lastProgressAt = 0;
  /** Set while switching technology (the stop is not the broadcast ending). */
  let switchingTech = false;

  const STATUS_TEXT = { loading: 'Connecting', playing: 'Live', offline: 'Offline', error: 'Reconnecting' };
  /** `live`, or `vod` while a recording plays (the live player is stopped then). */
  let view = 'live';

  /** The header's status pill and the tab title, for the current view and state. */
  function showStatus() {
    const state = body.dataset.state;
    $('status').textContent = view === 'vod' ? 'Replay' : STATUS_TEXT[state] || state;
    document.title = (name || 'Stream') +
      (view === 'vod' ? ' (recording)' : state === 'offline' ? ' (offline)' : '') + ' · Corriente';
  }

  function setState(state) {
    const before = body.dataset.state;
    if (before !== state) {
      body.dataset.state = state;
      showStatus();
      if (state !== 'playing') playingSince = 0;
      window.dispatchEvent(new CustomEvent('corriente:state', { detail: state }));
      // The broadcast ended: its recording is about to be finished and listed.
      if (before === 'playing' && view === 'live' && !switchingTech) recordingsAfterLiveEnd();
    }
    updateOverlays();
  }

  function clearTimer() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  function schedule(ms, fn) {
    clearTimer();
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  }

  // --- Probing: is the stream live? ---------------------------------------------------
  async function probe() {
    clearTimer();
    if (view !== 'live') return;
    const mine = ++attempt;
    let status = 0;
    const abort = new AbortController();
    const deadline = setTimeout(() => abort.abort(), PROBE_TIMEOUT_MS);
    try {
      // The URL the technology plays: an edge may serve one and not the other. (The first
      // playlist request waits for the stream's first segment: the probe warms it up.)
      const res = await fetch(tech === 'flv' ? flvUrl : hlsUrl, { method: 'HEAD', cache: 'no-store', signal: abort.signal });
      status = res.status;
    } catch (_) {
      status = 0;
    } finally {
      clearTimeout(deadline);
    }
    if (mine !== attempt) return;
    if (status >= 200 && status < 300) start();
    else if (status === 404) offline();
    else retryLater(describeStatus(status));
  }

  function describeStatus(status) {
    if (status === 0) return ['Connection lost', 'The server cannot be reached.'];
    if (status === 401 || status === 403) return ['Access denied', 'This link is not (or no longer) valid for this stream.'];
    if (status === 503) return ['Temporarily unavailable', 'The edge cannot reach the cluster right now.'];
    return ['Playback problem', 'The server answered ' + status + '.'];
  }

  function offline() {
    teardown();
    failures = 0;
    setState('offline');
    $('offline-check').textContent = 'Checking every ' + OFFLINE_POLL_MS / 1000 + ' seconds…';
    schedule(document.hidden ? OFFLINE_POLL_HIDDEN_MS : OFFLINE_POLL_MS, probe);
  }

  function retryLater([title, text]) {
    teardown();
    failures += 1;
    const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** (failures - 1));
    setState('error');
    $('error-title').textContent = title;
    const due = Date.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      $('error-text').textContent = text + ' Retrying in ' + left + ' s…';
    };
    tick();
    clearTimer();
    const countdown = setInterval(() => {
      if (body.dataset.state !== 'error' || timer === null) return clearInterval(countdown);
      tick();
    }, 500);
    timer = setTimeout(() => { timer = null; clearInterval(countdown); probe(); }, delay);
  }

  // --- Playing ------------------------------------------------------------------------
  function start() {
    teardown();
    const mine = ++attempt;
    setState('loading');
    startedAt = Date.now();
    lastTime = -1;
    lastProgressAt = Date.now();
    resetMeter();
    if (tech === 'hls') startHls(mine);
    else if (tech === 'native-hls') startNative(mine);
    else startFlv(mine);
  }

  /** Starts the `<video>` (autoplay), noting when the browser refuses without a click. */
  function playVideo(play, current) {
    const played = play();
    if (played && typeof played.catch === 'function') {
      played.catch((e) => {
        if (current() && e && e.name === 'NotAllowedError') body.dataset.blocked = 'true';
        updateOverlays();
      });
    }
  }

  function startFlv(mine) {
    const p = mpegts.createPlayer({ type: 'flv', isLive: true, url: flvUrl }, PLAYER_CONFIG);
    player = p;
    const current = () => mine === attempt && player === p;
    p.on(mpegts.Events.ERROR, (type, detail, info) => {
      if (!current()) return;
      if (info && info.code === 404) return offline();
      lost(type === mpegts.ErrorTypes.MEDIA_ERROR
        ? ['Cannot play this stream', 'The browser could not decode it (' + detail + ').']
        : ['Connection lost', 'The stream was interrupted.']);
    });
    p.on(mpegts.Events.LOADING_COMPLETE, () => {
      // The response ended: the broadcast stopped (or the edge is draining).
      if (current()) lost(['Connection lost', 'The stream ended.']);
    });
    p.on(mpegts.Events.MEDIA_INFO, (info) => { if (current()) showMediaInfo(info); });
    p.attachMediaElement(video);
    p.load();
    playVideo(() => p.play(), current);
  }

  function startHls(mine) {
    const h = new Hls(HLS_CONFIG);
    player = h;
    const current = () => mine === attempt && player === h;
    let recoveries = 0;
    h.on(Hls.Events.ERROR, (event, data) => {
      if (!current() || !data.fatal) return;
      // A decoding hiccup: hls.js can rebuild its buffers once; after that, start over.
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && recoveries++ === 0) return h.recoverMediaError();
      // The stream ending shows as a playlist answered 404; the probe of lost() tells.
      lost(data.type === Hls.ErrorTypes.MEDIA_ERROR
        ? ['Cannot play this stream', 'The browser could not decode it (' + data.details + ').']
        : ['Connection lost', 'The stream was interrupted.']);
    });
    h.on(Hls.Events.BUFFER_CODECS, (event, data) => { if (current()) hlsMediaInfo(data); });
    h.on(Hls.Events.FRAG_LOADED, (event, data) => { if (current()) meterChunk(data); });
    h.attachMedia(video);
    h.loadSource(hlsUrl);
    playVideo(() => video.play(), current);
  }

  /** The browser's own HLS (no MSE): the playlist as the `<video>`'s source. */
  function startNative(mine) {
    const p = { native: true };
    player = p;
    video.src = hlsUrl;
    playVideo(() => video.play(), () => mine === attempt && player === p);
  }

  /** The connection dropped or failed: try again at once the first time, then back off. */
  function lost(reason) {
    teardown();
    if (playingSince && Date.now() - playingSince > 10000) failures = 0;
    if (failures === 0) {
      failures = 1;
      setState('loading');
      probe();
    } else {
      retryLater(reason);
    }
  }

  function teardown() {
    const p = player;
    player = null;
    if (!p) return;
    video.playbackRate = 1;
    if (p.native) {
      video.removeAttribute('src');
      video.load();
      return;
    }
    if (typeof Hls !== 'undefined' && p instanceof Hls) {
      try { p.destroy(); } catch (_) { /* already gone */ }
      return;
    }
    try { p.pause(); } catch (_) { /* already gone */ }
    try { p.unload(); } catch (_) { /* already gone */ }
    try { p.detachMediaElement(); } catch (_) { /* already gone */ }
    try { p.destroy(); } catch (_) { /* already gone */ }
  }

  video.addEventListener('playing', () => {
    if (!player) return;
    body.dataset.blocked = 'false';
    body.dataset.buffering = 'false';
    if (body.dataset.state !== 'playing') {
      setState('playing');
      playingSince = Date.now();
    }
    if (video.videoWidth === 0 && video.readyState >= 1) setLayout(false);
  });
  video.addEventListener('waiting', () => { body.dataset.buffering = 'true'; });
  video.addEventListener('loadedmetadata', () => {
    if (video.videoWidth === 0) setLayout(false);
    else if (player && tech !== 'flv') showMediaInfo(Object.assign(hlsInfo, { hasVideo: true }));
  });
  // hls.js and the browser's own HLS tell the picture's size only through the element.
  video.addEventListener('resize', () => { if (player && tech !== 'flv' && video.videoWidth) showMediaInfo(hlsInfo); });
  // hls.js reports its errors itself; the browser's own player only through the element.
  video.addEventListener('error', () => {
    if (player && player.native && video.error) lost(['Connection lost', 'The stream was interrupted (media error ' + video.error.code + ').']);
  });
  video.addEventListener('pause', updateOverlays);
  video.addEventListener('play', updateOverlays);
  video.addEventListener('volumechange', () => {
    body.dataset.muted = String(video.muted || video.volume === 0);
    $('mute').setAttribute('aria-label', video.muted ? 'Unmute' : 'Mute');
    $('volume').value = video.muted ? 0 : video.volume;
    updateOverlays();
  });

  // Watchdog: no first frame, or no progress while playing, means a silent dead connection.
  setInterval(() => {
    const now = Date.now();
    if (!player) return;
    if (video.currentTime !== lastTime) {
      lastTime = video.currentTime;
      lastProgressAt = now;
      if (body.dataset.state === 'playing') body.dataset.buffering = 'false';
    }
    const state = body.dataset.state;
    if (state === 'loading' && body.dataset.blocked !== 'true' && now - startedAt > START_TIMEOUT_MS) {
      lost(['Connection lost', 'The stream did not start.']);
    } else if (state === 'playing' && !video.paused && now - lastProgressAt > STALL_TIMEOUT_MS) {
      lost(['Connection lost', 'The stream stalled.']);
    }
  }, 1000);

  // --- Latency to live ------------------------------------------------------------------
  /** Seconds behind live, or null. HTTP-FLV: between what is shown and the newest media
   *  received. hls.js: its own `latency`, the playlist's live edge (as old as the playlist is)
   *  minus the playhead. The browser's own HLS: the wall clock minus the program date-time of
   *  the playhead (Safari's `getStartDate()`), else the end of what is seekable, else (as with
   *  HTTP-FLV) of what is buffered. */
  function latency() {
    if (!player) return null;
    if (tech === 'hls') {
      const l = player.latency;
      return Number.isFinite(l) && l > 0 ? l : null;
    }
    if (tech === 'native-hls') {
      const start = typeof video.getStartDate === 'function' ? video.getStartDate().getTime() : NaN;
      if (Number.isFinite(start) && start > 0) return Math.max(0, (Date.now() - start) / 1000 - video.currentTime);
      const s = video.seekable;
      if (s && s.length && Number.isFinite(s.end(s.length - 1))) return Math.max(0, s.end(s.length - 1) - video.currentTime);
    }
    const b = video.buffered;
    if (!b || b.length === 0) return null;
    return Math.max(0, b.end(b.length - 1) - video.currentTime);
  }

  function jumpToLive() {
    if (tech === 'hls' && player) {
      const sync = player.liveSyncPosition;
      if (Number.isFinite(sync) && sync - video.currentTime > 0.3) video.currentTime = sync;
      if (video.paused) video.play().catch(() => {});
      return;
    }
    const s = video.seekable;
    if (tech === 'native-hls' && s && s.length && Number.isFinite(s.end(s.length - 1))) {
      if (s.end(s.length - 1) - video.currentTime > 2) video.currentTime = Math.max(s.start(s.length - 1), s.end(s.length - 1) - 1);
      if (video.paused) video.play().catch(() => {});
      return;
    }
    const b = video.buffered;
    if (!b || b.length === 0) return;
    const end = b.end(b.length - 1);
    if (end - video.currentTime > 0.6) video.currentTime = Math.max(b.start(b.length - 1), end - 0.4);
    if (video.paused) video.play().catch(() => {});
  }

  setInterval(() => {
    const l = body.dataset.state === 'playing' ? latency() : null;
    const text = l === null ? '–' : l.toFixed(1) + ' s';
    const el = $('latency');
    el.textContent = l === null ? '' : l.toFixed(1) + ' s';
    el.dataset.seconds = l === null ? '' : l.toFixed(3);
    body.dataset.latency = l === null ? '' : l.toFixed(3);
    $('fact-latency').textContent = text;
    $('live').classList.toggle('behind', l !== null && (l > BEHIND_S || video.paused));
    $('live').title = l === null ? 'Live' : 'Behind live by ' + text + ' (click to jump to live)';
  }, 500);

  // --- Media details --------------------------------------------------------------------
  function codecName(codec) {
    if (!codec) return '';
    const c = String(codec).toLowerCase();
    if (c.startsWith('avc')) return 'H.264';
    if (c.startsWith('hvc') || c.startsWith('hev')) return 'H.265';
    if (c.startsWith('av01')) return 'AV1';
    if (c.startsWith('mp4a.40') || c === 'aac') return 'AAC';
    if (c === 'mp3' || c === 'mp4a.6b' || c === 'mp4a.69') return 'MP3';
    if (c === 'opus') return 'Opus';
    return codec;
  }

  function setLayout(hasVideo) {
    body.dataset.layout = hasVideo ? 'video' : 'audio';
  }

  /** What hls.js told of the stream's tracks (the size comes from the element). */
  const hlsInfo = {};

  function hlsMediaInfo({ video: v, audio: a, audiovideo: av }) {
    const codecs = (t) => String((t && (t.codec || t.levelCodec)) || '').split(',').map((c) => c.trim()).filter(Boolean);
    // One CMAF track set holding both (the edge's segments do) comes as `audiovideo`.
    const muxed = codecs(av);
    const videoCodec = codecs(v)[0] || muxed.find((c) => !c.startsWith('mp4a') && c !== 'opus');
    const audioCodec = codecs(a)[0] || muxed.find((c) => c.startsWith('mp4a') || c === 'opus');
    for (const k of Object.keys(hlsInfo)) delete hlsInfo[k];
    Object.assign(hlsInfo, {
      hasVideo: !!v || !!videoCodec,
      hasAudio: !!a || !!audioCodec,
      videoCodec,
      audioCodec,
      audioChannelCount: a && a.metadata && a.metadata.channelCount,
    });
    showMediaInfo(hlsInfo);
  }

  function showMediaInfo(info) {
    if (tech !== 'flv') {
      info.width = video.videoWidth || info.width;
      info.height = video.videoHeight || info.height;
    }
    const hasVideo = info.hasVideo !== false && !(info.hasVideo === undefined && !info.videoCodec);
    setLayout(hasVideo);
    if (hasVideo && info.width && info.height) {
      const fps = info.fps ? ' · ' + Math.round(info.fps) + ' fps' : '';
      $('fact-video').textContent = [codecName(info.videoCodec), info.width + '×' + info.height].filter(Boolean).join(' · ') + fps;
      $('quality').textContent = info.height + 'p';
    } else {
      $('fact-video').textContent = hasVideo ? codecName(info.videoCodec) || '–' : 'none (audio only)';
      $('quality').textContent = '';
    }
    if (info.hasAudio !== false && info.audioCodec) {
      const rate = info.audioSampleRate ? ' · ' + (info.audioSampleRate / 1000).toFixed(1).replace(/\.0$/, '') + ' kHz' : '';
      const ch = info.audioChannelCount === 1 ? ' mono' : info.audioChannelCount === 2 ? ' stereo' : '';
      $('fact-audio').textContent = codecName(info.audioCodec) + rate + ch;
    } else {
      $('fact-audio').textContent = info.hasAudio === false ? 'none' : '–';
    }
  }

  // --- Bitrate --------------------------------------------------------------------------
  // Measured from media timestamps, as ffprobe would: the sizes of the FLV audio and video tag
  // bodies whose timestamps fall in the last BITRATE_WINDOW_S seconds of media time, divided by
  // the media time they span. The bytes are counted as the stream arrives (a pass-through on
  // the body of this page's own .flv request). Not mpegts.js's `speed`: that is bytes per
  // wall-clock second, and a new viewer gets the edge's GOP cache (up to a GOP of backlog) in
  // one burst, so a 2.5 Mbit/s stream read 6.5 Mbit/s for its first seconds.
  const BITRATE_WINDOW_S = 5;
  /** Below this much media time (one 2 s GOP and its keyframe dominate) show nothing yet. */
  const BITRATE_MIN_SPAN_S = 3;
  /** A timestamp jump larger than this (sequence headers at 0, a republish) restarts the window. */
  const BITRATE_JUMP_MS = 10000;
  const meter = { samples: [], first: -1, newest: -1 };

  function resetMeter() {
    meter.samples = [];
    meter.first = -1;
    meter.newest = -1;
    chunks.length = 0;
  }

  // With hls.js, the same measure from the parts and segments it loads: their bytes over the
  // media time they cover, for those in the last BITRATE_WINDOW_S seconds of media time. (The
  // browser's own HLS player tells nothing of its downloads: no figure then.)
  /** [media start s, duration s, bytes] of each part or segment loaded, in loading order. */
  const chunks = [];

  function meterChunk({ frag, part }) {
    if (!frag || frag.sn === 'initSegment') return;
    const piece = part || frag;
    const bytes = piece.stats && piece.stats.loaded;
    const start = piece.start;
    const duration = piece.duration;
    if (!(bytes > 0) || !(duration > 0) || !Number.isFinite(start)) return;
    const last = chunks[chunks.length - 1];
    const newestEnd = last ? last[0] + last[1] : -Infinity;
    if (last && Math.abs(start - newestEnd) * 1000 > BITRATE_JUMP_MS) chunks.length = 0;
    else if (start < newestEnd - 0.05) return; // media already counted (a reload)
    chunks.push([start, duration, bytes]);
    const from = start + duration - BITRATE_WINDOW_S;
    while (chunks.length && chunks[0][0] < from - 1e-3) chunks.shift();
  }

  function chunkBitrate() {
    let bytes = 0;
    let span = 0;
    for (const [, d, b] of chunks) { bytes += b; span += d; }
    return span < BITRATE_MIN_SPAN_S ? null : (bytes * 8) / span;
  }

  function meterTag(ts, bytes) {
    if (meter.newest >= 0 && Math.abs(ts - meter.newest) > BITRATE_JUMP_MS) resetMeter();
    if (meter.first < 0) meter.first = ts;
    if (ts > meter.newest) meter.newest = ts;
    meter.samples.push([ts, bytes]);
    const from = meter.newest - BITRATE_WINDOW_S * 1000;
    while (meter.samples.length && meter.samples[0][0] <= from) meter.samples.shift();
  }

  /** Bits per second over the last BITRATE_WINDOW_S s of media time (less at the start), or null. */
  function bitrate() {
    if (tech === 'hls') return chunkBitrate();
    if (tech !== 'flv' || meter.newest < 0) return null;
    const start = Math.max(meter.newest - BITRATE_WINDOW_S * 1000, meter.first);
    const span = (meter.newest - start) / 1000;
    if (span < BITRATE_MIN_SPAN_S) return null;
    let bytes = 0;
    for (const [ts, b] of meter.samples) if (ts > start) bytes += b;
    return (bytes * 8) / span;
  }

  /** A parser of FLV tag headers that skips the tag bodies: feed it the body's chunks. */
  function flvTagMeter() {
    let skip = 13; // FLV header, then PreviousTagSize0
    const head = new Uint8Array(11);
    let have = 0;
    return (chunk) => {
      let i = 0;
      while (i < chunk.length) {
        if (skip > 0) {
          const n = Math.min(skip, chunk.length - i);
          skip -= n;
          i += n;
          continue;
        }
        const n = Math.min(11 - have, chunk.length - i);
        head.set(chunk.subarray(i, i + n), have);
        have += n;
        i += n;
        if (have < 11) break;
        have = 0;
        const type = head[0] & 0x1f;
        const size = (head[1] << 16) | (head[2] << 8) | head[3];
        const ts = ((head[7] << 24) | (head[4] << 16) | (head[5] << 8) | head[6]) >>> 0;
        if (type === 8 || type === 9) meterTag(ts, size);
        skip = size + 4; // the body, then PreviousTagSize
      }
    };
  }

  // mpegts.js reads the stream with fetch(): its GETs of this page's .flv pass through the meter.
  if (typeof window.fetch === 'function' && typeof TransformStream === 'function') {
    const realFetch = window.fetch.bind(window);
    const streamUrl = location.origin + path + '.flv';
    window.fetch = function (input, init) {
      const url = String(typeof input === 'string' ? input : (input && input.url) || '');
      const method = String((init && init.method) || (input && input.method) || 'GET').toUpperCase();
      const response = realFetch(input, init);
      if (method !== 'GET' || url.split('?')[0] !== streamUrl) return response;
      return response.then((res) => {
        if (!res.ok || !res.body) return res;
        resetMeter();
        const feed = flvTagMeter();
        const metered = res.body.pipeThrough(new TransformStream({
          transform(chunk, controller) {
            try { feed(chunk); } catch (_) { /* metering never breaks playback */ }
            controller.enqueue(chunk);
          },
        }));
        Object.defineProperty(res, 'body', { value: metered });
        return res;
      });
    };
  }

  function showBitrate() {
    const bps = body.dataset.state === 'playing' ? bitrate() : null;
    const el = $('fact-bitrate');
    el.textContent = bps === null ? '–' : bps >= 1e6 ? (bps / 1e6).toFixed(1) + ' Mbit/s' : Math.round(bps / 1e3) + ' kbit/s';
    el.dataset.bps = bps === null ? '' : String(Math.round(bps));
  }
  setInterval(showBitrate, 1000);

  // --- Overlays and controls ------------------------------------------------------------
  function updateOverlays() {
    const state = body.dataset.state;
    const active = state === 'playing' || state === 'loading';
    $('unmute').hidden = !(active && video.muted && body.dataset.blocked !== 'true');
    $('bigplay').hidden = !((state === 'playing' && video.paused) || (state === 'loading' && body.dataset.blocked === 'true'));
  }

  function unmute() {
    video.muted = false;
    if (video.volume === 0) video.volume = 1;
    if (video.paused) video.play().catch(() => {});
  }

  function toggleMute() {
    if (video.muted || video.volume === 0) unmute();
    else video.muted = true;
  }

  function fullscreenElement() {
    return document.fullscreenElement || document.webkitFullscreenElement || null;
  }

  function toggleFullscreen() {
    if (fullscreenElement()) {
      (document.exitFullscreen || document.webkitExitFullscreen).call(document);
      return;
    }
    if (view === 'vod') {
      if (vod.requestFullscreen) vod.requestFullscreen().catch(() => {});
      else if (vod.webkitEnterFullscreen) vod.webkitEnterFullscreen();
      return;
    }
    if (stage.requestFullscreen) stage.requestFullscreen().catch(() => {});
    else if (stage.webkitRequestFullscreen) stage.webkitRequestFullscreen();
    else if (video.webkitEnterFullscreen) video.webkitEnterFullscreen(); // iPhone Safari
  }

  const onFullscreenChange = () => { body.dataset.fullscreen = String(!!fullscreenElement()); };
  document.addEventListener('fullscreenchange', onFullscreenChange);
  document.addEventListener('webkitfullscreenchange', onFullscreenChange);

  $('unmute').addEventListener('click', unmute);
  $('mute').addEventListener('click', toggleMute);
  $('volume').addEventListener('input', (e) => {
    video.volume = Number(e.target.value);
    video.muted = video.volume === 0;
  });
  $('fullscreen').addEventListener('click', toggleFullscreen);
  $('live').addEventListener('click', jumpToLive);
  $('bigplay').addEventListener('click', () => {
    body.dataset.blocked = 'false';
    if (body.dataset.state === 'playing') jumpToLive();
    else video.play().catch(() => {});
    updateOverlays();
  });
  $('retry').addEventListener('click', () => { failures = 0; setState('loading'); probe(); });
  video.addEventListener('dblclick', toggleFullscreen);

  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
    if (e.key === 'm' || e.key === 'M') {
      if (view === 'vod') vod.muted = !vod.muted;
      else toggleMute();
    }
    else if (e.key === 'f' || e.key === 'F') toggleFullscreen();
    else return;
    e.preventDefault();
  });

  // Controls fade out after a few seconds without the pointer moving.
  let idleTimer = null;
  const wake = () => {
    stage.classList.remove('idle');
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      if (body.dataset.state === 'playing' && !video.paused && !stage.matches(':focus-within')) stage.classList.add('idle');
    }, 3000);
  };
  ['mousemove', 'touchstart', 'keydown'].forEach((ev) => stage.addEventListener(ev, wake, { passive: true }));
  wake();

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && body.dataset.state === 'offline') probe();
  });
  window.addEventListener('online', () => {
    if (body.dataset.state === 'error') { failures = 0; probe(); }
  });

  // --- Recordings -----------------------------------------------------------------------
  /** How often the list is refreshed (and when the tab is hidden). */
  const RECORDINGS_POLL_MS = 30000;
  const RECORDINGS_POLL_HIDDEN_MS = 120000;
  /** After a broadcast ends its recording is being finished and indexed: check this often
   *  until it is listed, for at most this long. */
  const RECORDINGS_SETTLE_POLL_MS = 2000;
  const RECORDINGS_SETTLE_MS = 30000;
  const RECORDINGS_TIMEOUT_MS = 8000;

  const vod = $('vod');
  const vodStage = $('vod-stage');
  const indexUrl = location.origin + '/vod' + path + '/index.json' + query;
  /** The index's entries (newest first), as last fetched. */
  let recordings = [];
  /** The recording playing in the vod view, or null. */
  let vodId = null;
  let recordingsTimer = null;
  let recordingsRound = 0;
  /** After a broadcast ended: the ids available then, and until when to look for a new one. */
  let settle = null;
  /** What the list was last built from, to leave an unchanged list (and its focus) alone. */
  let recordingsBuiltFrom = '';

  const recordingUrl = (id) => {
    const r = recordings.find((x) => x.id === id);
    const url = r && typeof r.url === 'string' && r.url.startsWith('/vod/')
      ? r.url
      : '/vod' + path + '/' + encodeURIComponent(id) + '.mp4';
    return location.origin + url + query;
  };
  /** This page's URL: its query, the technology when pinned, and recording `id` if any. */
  const selfUrl = (id) => {
    const own = [];
    if (techPinned && tech) own.push('tech=' + family(tech));
    if (id) own.push('vod=' + encodeURIComponent(id));
    return location.origin + path + (own.length ? (query ? query + '&' : '?') + own.join('&') : query);
  };

  function clock(ms) {
    const s = Math.max(0, Math.round((ms || 0) / 1000));
    const pad = (n) => String(n).padStart(2, '0');
    const h = Math.floor(s / 3600);
    const mmss = pad(Math.floor(s % 3600 / 60)) + ':' + pad(s % 60);
    return h > 0 ? h + ':' + mmss : mmss;
  }
  const megabytes = (bytes) => ((bytes || 0) / 1e6).toFixed(1) + ' MB';
  const startedText = (ms) => new Date(ms).toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });

  async function refreshRecordings() {
    clearTimeout(recordingsTimer);
    const mine = ++recordingsRound;
    const abort = new AbortController();
    const deadline = setTimeout(() => abort.abort(), RECORDINGS_TIMEOUT_MS);
    try {
      const res = await fetch(indexUrl, { cache: 'no-store', signal: abort.signal, headers: { accept: 'application/json' } });
      if (res.ok) {
        const data = await res.json();
        if (mine === recordingsRound) recordings = Array.isArray(data.recordings) ? data.recordings : [];
      } else if (res.status === 404 && mine === recordingsRound) {
        recordings = []; // an edge without on-demand playback, or a name it does not accept
      }
    } catch (_) {
      // Unreachable for now: keep the last list, try again later.
    } finally {
      clearTimeout(deadline);
    }
    if (mine !== recordingsRound) return;
    renderRecordings();
    if (settle) {
      const arrived = recordings.some((r) => r.available && !settle.known.has(r.id)) &&
        !recordings.some((r) => r.state === 'recording');
      if (arrived || Date.now() > settle.until) settle = null;
    }
    const next = settle ? RECORDINGS_SETTLE_POLL_MS : document.hidden ? RECORDINGS_POLL_HIDDEN_MS : RECORDINGS_POLL_MS;
    recordingsTimer = setTimeout(refreshRecordings, next);
  }

  function recordingsAfterLiveEnd() {
    settle = {
      known: new Set(recordings.filter((r) => r.available).map((r) => r.id)),
      until: Date.now() + RECORDINGS_SETTLE_MS,
    };
    refreshRecordings();
  }

  function renderRecordings() {
    const panel = $('recordings-panel');
    const shown = recordings.filter((r) => r && r.available && typeof r.id === 'string' && r.id);
    panel.hidden = shown.length === 0;
    panel.dataset.loaded = 'true';
    panel.dataset.count = String(shown.length);
    $('recordings-count').textContent = shown.length ? String(shown.length) : '';
    const current = shown.find((r) => r.id === vodId);
    $('vod-label').textContent = current ? 'Recorded ' + startedText(current.started_at_ms) : 'Recording';
    const signature = JSON.stringify([vodId, shown.map((r) => [r.id, r.started_at_ms, r.duration_ms, r.size, r.state, r.url])]);
    if (signature === recordingsBuiltFrom) return;
    recordingsBuiltFrom = signature;
    const list = $('recordings');
    const focused = document.activeElement && list.contains(document.activeElement)
      ? document.activeElement.dataset.recording : null;
    list.replaceChildren(...shown.map((r) => {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'rec';
      button.dataset.recording = r.id;
      button.dataset.url = r.url || '';
      button.dataset.startedAtMs = String(r.started_at_ms || 0);
      button.dataset.durationMs = String(r.duration_ms || 0);
      button.dataset.size = String(r.size || 0);
      button.dataset.state = String(r.state || '');
      if (r.id === vodId) button.setAttribute('aria-current', 'true');
      const icon = document.createElement('span');
      icon.className = 'rec-play';
      icon.setAttribute('aria-hidden', 'true');
      const when = document.createElement('time');
      when.className = 'rec-when';
      when.dateTime = new Date(r.started_at_ms || 0).toISOString();
      when.textContent = startedText(r.started_at_ms || 0);
      const duration = document.createElement('span');
      duration.className = 'rec-duration';
      duration.textContent = clock(r.duration_ms);
      const size = document.createElement('span');
      size.className = 'rec-size';
      size.textContent = megabytes(r.size);
      const meta = document.createElement('span');
      meta.className = 'rec-meta';
      meta.append(duration, size);
      const text = document.createElement('span');
      text.className = 'rec-text';
      text.append(when, meta);
      button.append(icon, text);
      if (r.state === 'failed') {
        const note = document.createElement('span');
        note.className = 'rec-note';
        note.textContent = 'Incomplete';
        note.title = 'Recording stopped early' + (r.reason ? ' (' + r.reason + ')' : '');
        button.append(note);
      }
      if (r.id === vodId) {
        const note = document.createElement('span');
        note.className = 'rec-note now';
        note.textContent = 'Playing';
        button.append(note);
      }
      button.setAttribute('aria-label', 'Play the recording of ' + when.textContent + ', ' + duration.textContent);
      button.addEventListener('click', () => {
        playRecording(r.id, { muted: false, push: true });
        vodStage.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
      });
      item.append(button);
      return item;
    }));
    if (focused) {
      const again = list.querySelector('[data-recording="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
  }

  /** Plays recording `id` in the vod view (stopping the live player); `muted` for autoplay
   *  without a click; `push` adds it to the history (`?vod=ID`). */
  function playRecording(id, { muted, push }) {
    if (view === 'live') {
      view = 'vod';
      clearTimer();
      attempt += 1;
      teardown();
      if (liveSupported) setState('loading');
    }
    vodId = id;
    body.dataset.view = 'vod';
    body.dataset.vod = id;
    stage.hidden = true;
    vodStage.hidden = false;
    if (push) history.pushState(null, '', selfUrl(id));
    showStatus();
    renderRecordings();
    loadVod(muted);
  }

  function loadVod(muted) {
    body.dataset.vodState = 'loading';
    vod.muted = muted;
    vod.src = recordingUrl(vodId);
    vod.load();
    startVod();
  }

  /** Starts playback; refused with sound (no click to allow it), it starts muted instead. */
  function startVod() {
    const src = vod.src;
    const played = vod.play();
    if (!played || typeof played.catch !== 'function') return;
    played.catch((e) => {
      if (vod.src !== src || !e || e.name !== 'NotAllowedError') return;
      if (vod.muted) { body.dataset.vodState = 'paused'; return; }
      vod.muted = true;
      vod.play().catch(() => { body.dataset.vodState = 'paused'; });
    });
  }

  function backToLive({ push }) {
    if (view !== 'vod') return;
    view = 'live';
    vodId = null;
    vod.pause();
    vod.removeAttribute('src');
    vod.load();
    body.dataset.view = 'live';
    delete body.dataset.vod;
    body.dataset.vodState = '';
    vodStage.hidden = true;
    stage.hidden = false;
    if (push) history.pushState(null, '', selfUrl(null));
    showStatus();
    renderRecordings();
    if (liveSupported) {
      failures = 0;
      setState('loading');
      probe();
    }
  }

  function describeVodFailure(status) {
    if (status === 404) return ['Recording not found', 'It does not exist (any more) on this server.'];
    if (status === 409) return ['Still recording', 'This recording plays once the broadcast ends.'];
    if (status === 401 || status === 403) return ['Access denied', 'This link is not (or no longer) valid for this stream.'];
    if (status === 502 || status === 503 || status === 504) return ['Temporarily unavailable', 'The server holding the recording cannot be reached right now.'];
    if (status === 0) return ['Connection lost', 'The server cannot be reached.'];
    const code = vod.error ? ' (media error ' + vod.error.code + ')' : '';
    if (status >= 200 && status < 300) return ['Cannot play this recording', 'The browser could not decode it' + code + '.'];
    return ['Cannot play this recording', 'The server answered ' + status + '.'];
  }

  vod.addEventListener('error', async () => {
    const src = vod.getAttribute('src');
    if (!src || view !== 'vod') return; // cleared on the way back to live
    body.dataset.vodState = 'error';
    let status = 0;
    try {
      status = (await fetch(src, { method: 'HEAD', cache: 'no-store' })).status;
    } catch (_) {
      status = 0;
    }
    if (vod.getAttribute('src') !== src) return;
    const [title, text] = describeVodFailure(status);
    $('vod-error-title').textContent = title;
    $('vod-error-text').textContent = text;
  });
  const vodState = (state) => () => { if (view === 'vod' && body.dataset.vodState !== 'error') body.dataset.vodState = state; };
  vod.addEventListener('playing', vodState('playing'));
  vod.addEventListener('pause', vodState('paused'));
  vod.addEventListener('ended', vodState('ended'));
  vod.addEventListener('waiting', vodState('loading'));
  const showVodUnmute = () => { $('vod-unmute').hidden = !(view === 'vod' && vod.muted && !vod.paused); };
  ['volumechange', 'play', 'pause', 'emptied'].forEach((ev) => vod.addEventListener(ev, showVodUnmute));
  $('vod-unmute').addEventListener('click', () => {
    vod.muted = false;
    if (vod.volume === 0) vod.volume = 1;
  });
  $('vod-retry').addEventListener('click', () => { if (vodId) loadVod(vod.muted); });
  $('back-to-live').addEventListener('click', () => backToLive({ push: true }));
  window.addEventListener('popstate', () => {
    const id = vodParam(location.search);
    if (id) playRecording(id, { muted: false, push: false });
    else backToLive({ push: false });
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) refreshRecordings();
  });

  // --- Sharing --------------------------------------------------------------------------
  const attr = (s) => s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');
  $('embed-code').value =
    '<iframe src="' + attr(pageUrl) + '" width="640" height="360" style="border:0;max-width:100%" ' +
    'allow="autoplay; fullscreen; picture-in-picture" allowfullscreen title="' + attr(app + '/' + name) + ' live"></iframe>';
  $('flv-url').value = flvUrl;
  $('hls-url').value = hlsShareUrl;

  document.querySelectorAll('[data-copy]').forEach((button) => {
    button.addEventListener('click', async () => {
      const field = $(button.dataset.copy);
      let ok = false;
      try {
        await navigator.clipboard.writeText(field.value);
        ok = true;
      } catch (_) {
        field.select();
        try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
      }
      button.textContent = ok ? 'Copied' : 'Select and copy';
      setTimeout(() => { button.textContent = 'Copy'; }, 1600);
    });
  });
  ['embed-code', 'flv-url', 'hls-url'].forEach((id) => $(id).addEventListener('focus', (e) => e.target.select()));

  // --- The viewer's choice of technology ------------------------------------------------
  function showTech() {
    body.dataset.tech = tech || '';
    $('fact-tech').textContent = tech ? ENGINE[tech] : 'none';
    // A choice only where both work here.
    $('tech-switch').hidden = !(can.flv && (can.hls || can.native));
    document.querySelectorAll('[data-tech-choice]').forEach((button) => {
      button.setAttribute('aria-pressed', String(family(tech) === button.dataset.techChoice));
    });
  }

  /** Switches live playback to `wish` (`flv` or `hls`), and says so in the page's URL. */
  function useTech(wish) {
    const next = techFor(wish);
    if (!next || family(next) !== wish) return;
    const changed = next !== tech;
    tech = next;
    techPinned = true;
    history.replaceState(history.state, '', selfUrl(vodId));
    if (!changed) return;
    showTech();
    if (view !== 'live') return; // used on the way back to live
    clearTimer();
    attempt += 1;
    teardown();
    failures = 0;
    switchingTech = true;
    setState('loading');
    switchingTech = false;
    probe();
  }
  document.querySelectorAll('[data-tech-choice]').forEach((button) => {
    button.addEventListener('click', () => useTech(button.dataset.techChoice));
  });

  // --- Go -------------------------------------------------------------------------------
  $('stream-app').textContent = app;
  $('stream-name').textContent = name;
  $('offline-name').textContent = app + '/' + name;
  $('radio-title').textContent = name;
  body.dataset.muted = String(video.muted);
  body.dataset.fullscreen = 'false';
  body.dataset.buffering = 'false';
  try {
    if (window.self !== window.top) body.classList.add('embedded');
  } catch (_) {
    body.classList.add('embedded');
  }

  // For tests and the curious: `corriente.state`, `corriente.tech`, `corriente.latency()`,
  // `corriente.bitrate()`, `corriente.view`, `corriente.recordings`; `corriente.player` is the
  // mpegts.js player or the hls.js instance in use.
  window.corriente = {
    get state() { return body.dataset.state; },
    get tech() { return tech; },
    latency,
    bitrate,
    flvUrl,
    hlsUrl,
    useTech,
    get player() { return player; },
    get view() { return view; },
    get recordings() { return recordings.slice(); },
    indexUrl,
  };

  body.dataset.view = 'live';
  showTech();
  refreshRecordings();
  if (!liveSupported) {
    setState('error');
    $('error-title').textContent = 'This browser cannot play live video';
    $('error-text').textContent = 'It lacks Media Source Extensions and plays no HLS itself. Open a stream URL below in VLC or ffplay.';
    $('retry').hidden = true;
  } else {
    if (typeof mpegts !== 'undefined' && mpegts.LoggingControl) {
      mpegts.LoggingControl.enableVerbose = false;
      mpegts.LoggingControl.enableDebug = false;
      mpegts.LoggingControl.enableInfo = false;
    }
    setState('loading');
  }
  const opening = vodParam(location.search);
  if (opening) playRecording(opening, { muted: true, push: false });
  else if (liveSupported) probe();
})();
