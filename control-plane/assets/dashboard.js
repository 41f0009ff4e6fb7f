// Corriente cluster dashboard: polls the control plane's stats API (same origin) every 2 s and
// renders streams, recordings, origins and edges. Elements carry data-* attributes with raw
// values (`tr[data-stream="live/x"] [data-field="viewers"]` has `data-value="3"`;
// `tr[data-recording="live/x/ID"] [data-field="state"]` has `data-value="complete"`) for scripts
// and tests.
(function () {
  'use strict';

  const REFRESH_MS = 2000;
  const REFRESH_HIDDEN_MS = 10000;
  const FETCH_TIMEOUT_MS = 5000;
  /** The recordings table shows this many, newest first. */
  const MAX_RECORDINGS = 100;

  const $ = (id) => document.getElementById(id);
  const body = document.body;

  /** The markup each rendered row or card was built from, to skip unchanged ones. */
  const builtFrom = new WeakMap();
  let lastOk = 0;
  let refreshes = 0;
  let timer = null;

  // --- Formatting ---------------------------------------------------------------------
  const esc = (v) => String(v == null ? '' : v)
    .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;').replace(/'/g, '&#39;');

  function bits(bps) {
    if (!bps || bps <= 0) return '–';
    if (bps >= 1e9) return (bps / 1e9).toFixed(2) + ' Gbit/s';
    if (bps >= 1e6) return (bps / 1e6).toFixed(1) + ' Mbit/s';
    if (bps >= 1e3) return Math.round(bps / 1e3) + ' kbit/s';
    return Math.round(bps) + ' bit/s';
  }

  /** `bits()` split into number and unit, for the big summary numbers. */
  function bitsHtml(bps) {
    const text = bits(bps);
    const i = text.indexOf(' ');
    return i < 0 ? esc(text) : esc(text.slice(0, i)) + '<small>' + esc(text.slice(i + 1)) + '</small>';
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds || 0));
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    const pad = (n) => String(n).padStart(2, '0');
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + pad(m) + 'm';
    if (m > 0) return m + 'm ' + pad(s % 60) + 's';
    return s + 's';
  }

  const CODECS = { h264: 'H.264', avc: 'H.264', hevc: 'H.265', h265: 'H.265', av1: 'AV1', vp9: 'VP9', aac: 'AAC', mp3: 'MP3', opus: 'Opus' };
  const codecName = (c) => CODECS[String(c || '').toLowerCase()] || String(c || '').toUpperCase();

  function fps(rate) {
    if (!rate) return '';
    const r = Math.round(rate * 100) / 100;
    return (Number.isInteger(r) ? r : r.toFixed(2)) + ' fps';
  }

  function channels(n) {
    if (n === 1) return 'mono';
    if (n === 2) return 'stereo';
    return n ? n + ' ch' : '';
  }

  const keyPath = (k) => (k && k.app ? k.app + '/' + k.name : '');

  function size(bytes) {
    const b = bytes || 0;
    if (b >= 1e9) return (b / 1e9).toFixed(2) + ' GB';
    return (b / 1e6).toFixed(1) + ' MB';
  }

  const localTime = (ms) => (ms ? new Date(ms).toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  }) : '–');

  // --- Addresses ----------------------------------------------------------------------
  /** Splits `ip:port` / `[v6]:port`; a wildcard or empty host becomes the page's own host. */
  function hostPort(addr) {
    if (!addr) return null;
    const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(addr);
    if (!m) return null;
    let host = m[1];
    if (host === '' || host === '0.0.0.0' || host === '::' || host === '[::]') host = location.hostname;
    if (host.includes(':') && !host.startsWith('[')) host = '[' + host + ']';
    return host + ':' + m[2];
  }

  /** The player page for `key` on an edge: one already serving it, else the first ready one. */
  function playerUrl(stream, edges) {
    const usable = edges.filter((e) => e.http_addr && hostPort(e.http_addr));
    if (usable.length === 0) return null;
    const serving = new Set((stream.viewers_by_edge || []).filter((v) => v.viewers > 0).map((v) => v.edge));
    const pick = usable.find((e) => e.ready && serving.has(e.id)) || usable.find((e) => e.ready) || usable[0];
    const path = '/' + encodeURIComponent(stream.key.app) + '/' + encodeURIComponent(stream.key.name);
    return 'http://' + hostPort(pick.http_addr) + path;
  }

  /** An edge to play recordings from: the first ready one with an HTTP address, or null. */
  function vodEdge(edges) {
    const usable = edges.filter((e) => e.http_addr && hostPort(e.http_addr));
    const pick = usable.find((e) => e.ready) || usable[0];
    return pick ? 'http://' + hostPort(pick.http_addr) : null;
  }

  // --- Fetching -----------------------------------------------------------------------
  async function getJson(path) {
    const abort = new AbortController();
    const t = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch(path, { cache: 'no-store', signal: abort.signal, headers: { accept: 'application/json' } });
      if (!res.ok) throw new Error(path + ' answered ' + res.status);
      return await res.json();
    } finally {
      clearTimeout(t);
    }
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      // A control plane without the recordings index (or failing to read it) still shows the rest.
      const [s, n, r] = await Promise.all([
        getJson('/api/v1/streams'),
        getJson('/api/v1/nodes'),
        getJson('/api/v1/recordings').catch((e) => ({ failed: e })),
      ]);
      render(s.streams || [], n.nodes || []);
      renderRecordings(r, (n.nodes || []).filter((x) => x.role === 'edge'));
      lastOk = Date.now();
      body.dataset.health = 'ok';
      body.dataset.loaded = 'true';
      $('banner').hidden = true;
    } catch (e) {
      body.dataset.health = 'failing';
      const banner = $('banner');
      banner.textContent = 'Cannot reach the stats API (' + (e && e.name === 'AbortError' ? 'timed out' : e.message || e) +
        '). Showing the last data; retrying…';
      banner.hidden = false;
    }
    refreshes += 1;
    body.dataset.refreshes = String(refreshes);
    freshness();
    timer = setTimeout(refresh, document.hidden ? REFRESH_HIDDEN_MS : REFRESH_MS);
  }

  function freshness() {
    const text = $('freshness-text');
    if (!lastOk) {
      text.textContent = body.dataset.health === 'failing' ? 'Not connected' : 'Loading…';
      return;
    }
    const ago = Math.round((Date.now() - lastOk) / 1000);
    text.textContent = body.dataset.health === 'failing'
      ? 'Last update ' + ago + ' s ago'
      : ago <= 1 ? 'Live · updated just now' : 'Live · updated ' + ago + ' s ago';
  }

  // --- Rendering ----------------------------------------------------------------------
  function render(streams, nodes) {
    const byId = (a, b) => String(a.id).localeCompare(String(b.id));
    const origins = nodes.filter((n) => n.role === 'origin').sort(byId);
    const edges = nodes.filter((n) => n.role === 'edge').sort(byId);
    streams = streams.slice().sort((a, b) => keyPath(a.key).localeCompare(keyPath(b.key)));

    // Summary
    const viewers = streams.reduce((sum, s) => sum + (s.viewers || 0), 0);
    const ingress = origins.reduce((sum, n) => sum + ((n.load && n.load.ingress_bps) || 0), 0);
    const egress = edges.reduce((sum, n) => sum + ((n.load && n.load.egress_bps) || 0), 0);
    const ready = nodes.filter((n) => n.ready).length;
    setStat('sum-streams', streams.length, esc(streams.length));
    setStat('sum-viewers', viewers, esc(viewers));
    setStat('sum-ingress', ingress, bitsHtml(ingress));
    setStat('sum-egress', egress, bitsHtml(egress));
    setStat('sum-nodes', ready + '/' + nodes.length, nodes.length ? esc(ready) + '<small>/ ' + esc(nodes.length) + '</small>' : '–');

    // Streams
    $('streams-count').textContent = streams.length ? String(streams.length) : '';
    keyedRender($('streams'), streams, (s) => keyPath(s.key), 'stream', (s) => streamRow(s, edges));
    $('streams-empty').hidden = streams.length > 0;
    publishHint(origins);

    // Nodes
    $('origins-count').textContent = origins.length ? String(origins.length) : '';
    $('edges-count').textContent = edges.length ? String(edges.length) : '';
    keyedRender($('origins'), origins, (n) => n.id, 'node', nodeCard);
    keyedRender($('edges'), edges, (n) => n.id, 'node', nodeCard);
    $('origins-empty').hidden = origins.length > 0;
    $('edges-empty').hidden = edges.length > 0;
  }

  function setStat(id, value, html) {
    const el = $(id);
    el.dataset.value = String(value);
    if (el.innerHTML !== html) el.innerHTML = html;
  }

  /** Replaces `parent`'s children with one element per item, keyed by `data-KIND`, touching
   *  only those whose markup changed (hover and text selection survive a refresh). */
  function keyedRender(parent, items, keyOf, kind, build) {
    const existing = new Map();
    for (const el of Array.from(parent.children)) existing.set(el.dataset[kind], el);
    let prev = null;
    for (const item of items) {
      const key = keyOf(item);
      const html = build(item);
      let el = existing.get(key);
      existing.delete(key);
      if (!el || builtFrom.get(el) !== html) {
        const tpl = document.createElement(parent.tagName === 'TBODY' ? 'tbody' : 'div');
        tpl.innerHTML = html;
        const fresh = tpl.firstElementChild;
        builtFrom.set(fresh, html);
        if (el) el.replaceWith(fresh);
        el = fresh;
      }
      const next = prev ? prev.nextElementSibling : parent.firstElementChild;
      if (next !== el) parent.insertBefore(el, next);
      prev = el;
    }
    for (const el of existing.values()) el.remove();
  }

  function streamRow(s, edges) {
    const m = s.media || {};
    const path = keyPath(s.key);
    const url = playerUrl(s, edges);
    const title = '<span class="app">' + esc(s.key.app) + '/</span>' + esc(s.key.name);
    const name = url
      ? '<a class="stream-title" data-field="player" href="' + esc(url) + '" target="_blank" rel="noopener">' + title + '</a>' +
        '<a class="watch" href="' + esc(url) + '" target="_blank" rel="noopener" aria-label="Watch ' + esc(path) + '">Watch ↗</a>'
      : '<span class="stream-title">' + title + '</span>';
    const resolution = m.width && m.height ? m.width + 'x' + m.height : '';
    const video = m.video_codec
      ? '<span class="codec" data-field="video_codec" data-value="' + esc(m.video_codec) + '">' + esc(codecName(m.video_codec)) + '</span>' +
        '<span data-field="resolution" data-value="' + esc(resolution) + '">' + (resolution ? esc(m.width + '×' + m.height) : '') + '</span>' +
        (m.frame_rate ? '<div class="cell-sub" data-field="frame_rate" data-value="' + esc(m.frame_rate) + '">' + esc(fps(m.frame_rate)) + '</div>' : '')
      : '<span class="cell-sub" data-field="video_codec" data-value="">none</span>';
    const audioSub = [m.audio_sample_rate ? (m.audio_sample_rate / 1000).toFixed(1).replace(/\.0$/, '') + ' kHz' : '', channels(m.audio_channels)]
      .filter(Boolean).join(' ');
    const audio = m.audio_codec
      ? '<span class="codec" data-field="audio_codec" data-value="' + esc(m.audio_codec) + '">' + esc(codecName(m.audio_codec)) + '</span>' +
        (audioSub ? '<div class="cell-sub">' + esc(audioSub) + '</div>' : '')
      : '<span class="cell-sub" data-field="audio_codec" data-value="">none</span>';
    const perEdge = (s.viewers_by_edge || []).filter((v) => v.viewers > 0)
      .sort((a, b) => String(a.edge).localeCompare(String(b.edge)))
      .map((v) => '<span class="chip" data-edge="' + esc(v.edge) + '" data-value="' + esc(v.viewers) + '" title="viewers on edge ' + esc(v.edge) + '">' +
        esc(v.edge) + ' <b>' + esc(v.viewers) + '</b></span>')
      .join('');
    return '<tr data-stream="' + esc(path) + '">' +
      '<td data-label="Stream"><div class="stream-name"><span class="live-dot" aria-hidden="true"></span><div>' +
        '<div>' + name + '</div>' +
        '<div class="stream-sub">from ' + esc(s.publisher_addr || 'unknown') + ' · epoch ' + esc(s.epoch) + '</div>' +
      '</div></div></td>' +
      '<td data-label="Origin" data-field="origin" data-value="' + esc(s.origin) + '"><div class="v mono">' + esc(s.origin) + '</div></td>' +
      '<td data-label="Video"><div class="v">' + video + '</div></td>' +
      '<td data-label="Audio"><div class="v">' + audio + '</div></td>' +
      '<td data-label="Bitrate" class="num" data-field="bitrate" data-value="' + esc(m.bitrate_bps || 0) + '"><div class="v">' + esc(bits(m.bitrate_bps)) + '</div></td>' +
      '<td data-label="Uptime" class="num" data-field="uptime" data-value="' + esc(s.uptime_seconds || 0) + '"><div class="v">' + esc(duration(s.uptime_seconds)) + '</div></td>' +
      '<td data-label="Viewers"><div class="v viewers"><span class="viewers-total" data-field="viewers" data-value="' + esc(s.viewers || 0) + '">' +
        esc(s.viewers || 0) + '</span>' + perEdge + '</div></td>' +
      '</tr>';
  }

  function renderRecordings(answer, edges) {
    const note = $('recordings-note');
    if (answer.failed) {
      note.textContent = 'Cannot read the recordings index (' +
        (answer.failed.name === 'AbortError' ? 'timed out' : answer.failed.message || answer.failed) + ')';
      return;
    }
    const all = Array.isArray(answer.recordings) ? answer.recordings : [];
    const shown = all.slice(0, MAX_RECORDINGS);
    const edge = vodEdge(edges);
    $('recordings-count').textContent = all.length ? String(all.length) : '';
    note.textContent = all.length > shown.length ? 'newest ' + shown.length + ' shown' : '';
    keyedRender($('recordings'), shown, (r) => r.stream + '/' + r.id, 'recording', (r) => recordingRow(r, edge));
    $('recordings-empty').hidden = all.length > 0;
    body.dataset.recordingsLoaded = 'true';
  }

  const STATES = { recording: 'Recording', complete: 'Complete', failed: 'Failed' };

  /** One recording; `edge` (`http://HOST:PORT`, or null) is where its links point. */
  function recordingRow(r, edge) {
    const stream = String(r.stream || '');
    const slash = stream.indexOf('/');
    const app = slash < 0 ? stream : stream.slice(0, slash);
    const name = slash < 0 ? '' : stream.slice(slash + 1);
    const playable = r.state !== 'recording' && r.origin_up;
    const player = playable && edge
      ? edge + '/' + encodeURIComponent(app) + '/' + encodeURIComponent(name) + '?vod=' + encodeURIComponent(r.id)
      : null;
    const file = playable && edge && r.url ? edge + r.url : null;
    const title = '<span class="app">' + esc(app) + '/</span>' + esc(name);
    const state = String(r.state || '');
    const badge = state === 'complete' ? 'ready' : state === 'failed' ? 'not-ready' : 'recording';
    const url = file
      ? '<a class="mono" data-field="url" data-value="' + esc(r.url) + '" href="' + esc(file) + '" target="_blank" rel="noopener">' + esc(r.url) + '</a>'
      : '<span class="mono" data-field="url" data-value="' + esc(r.url) + '">' + esc(r.url) + '</span>';
    return '<tr data-recording="' + esc(stream + '/' + r.id) + '" data-id="' + esc(r.id) + '">' +
      '<td data-label="Stream" data-field="stream" data-value="' + esc(stream) + '"><div class="stream-title">' + title + '</div>' +
        '<div class="stream-sub mono">' + esc(r.id) + ' · epoch ' + esc(r.epoch) + '</div></td>' +
      '<td data-label="Started" data-field="started_at_ms" data-value="' + esc(r.started_at_ms || 0) + '"><div class="v">' + esc(localTime(r.started_at_ms)) + '</div></td>' +
      '<td data-label="Duration" class="num" data-field="duration_ms" data-value="' + esc(r.duration_ms || 0) + '"><div class="v">' + esc(duration((r.duration_ms || 0) / 1000)) + '</div></td>' +
      '<td data-label="Size" class="num" data-field="size" data-value="' + esc(r.size || 0) + '"><div class="v">' + esc(size(r.size)) + '</div></td>' +
      '<td data-label="State"><div class="v"><span class="badge ' + badge + '" data-field="state" data-value="' + esc(state) + '"' +
        (r.reason ? ' title="' + esc(r.reason) + '"' : '') + '>' + esc(STATES[state] || state) + '</span>' +
        (r.reason && state === 'failed' ? '<div class="cell-sub">' + esc(r.reason) + '</div>' : '') + '</div></td>' +
      '<td data-label="Origin" data-field="origin" data-value="' + esc(r.origin) + '" data-up="' + esc(!!r.origin_up) + '"><div class="v">' +
        '<span class="mono">' + esc(r.origin) + '</span>' + (r.origin_up ? '' : ' <span class="badge not-ready">down</span>') + '</div></td>' +
      '<td data-label="Playback"><div class="v playback">' + url +
        (player ? '<a class="watch" data-field="player" href="' + esc(player) + '" target="_blank" rel="noopener" aria-label="Play recording ' + esc(r.id) + '">Play ↗</a>' : '') +
      '</div></td>' +
      '</tr>';
  }

  function nodeCard(n) {
    const load = n.load || {};
    const addr = (label, a) => (a ? '<span>' + label + ' <span class="mono">' + esc(a) + '</span></span>' : '');
    const meta = [
      n.role === 'origin' ? addr('RTMP ingest', n.rtmp_addr) : addr('RTMP', n.rtmp_addr),
      n.role === 'edge' ? addr('HTTP', n.http_addr) : '',
      n.role === 'origin' ? addr('relay', n.relay_addr) : '',
      n.version ? '<span>v' + esc(n.version) + '</span>' : '',
      n.started_at_ms ? '<span>up ' + esc(duration((Date.now() - n.started_at_ms) / 1000)) + '</span>' : '',
    ].join('');
    const cell = (label, field, value, text) =>
      '<div><dt>' + label + '</dt><dd data-field="' + field + '" data-value="' + esc(value) + '">' + esc(text) + '</dd></div>';
    const loadCells = n.role === 'origin'
      ? cell('Streams', 'streams', load.streams || 0, load.streams || 0) +
        cell('Relay pulls', 'viewers', load.viewers || 0, load.viewers || 0) +
        cell('Ingest', 'ingress_bps', load.ingress_bps || 0, bits(load.ingress_bps)) +
        (load.egress_bps ? cell('To edges', 'egress_bps', load.egress_bps, bits(load.egress_bps)) : '')
      : cell('Streams', 'streams', load.streams || 0, load.streams || 0) +
        cell('Viewers', 'viewers', load.viewers || 0, load.viewers || 0) +
        cell('From origins', 'ingress_bps', load.ingress_bps || 0, bits(load.ingress_bps)) +
        cell('To viewers', 'egress_bps', load.egress_bps || 0, bits(load.egress_bps));
    const watching = (n.viewers || [])
      .filter((v) => Array.isArray(v) && v[1] > 0)
      .map((v) => '<span class="chip">' + esc(keyPath(v[0])) + ' <b>' + esc(v[1]) + '</b></span>')
      .join('');
    return '<article class="node" data-node="' + esc(n.id) + '" data-role="' + esc(n.role) + '" data-ready="' + esc(!!n.ready) + '">' +
      '<div class="node-head"><span class="node-id" title="' + esc(n.id) + '">' + esc(n.id) + '</span>' +
        (n.ready ? '<span class="badge ready">Ready</span>' : '<span class="badge not-ready">Not ready</span>') + '</div>' +
      '<div class="node-meta">' + meta + '</div>' +
      '<dl class="load">' + loadCells + '</dl>' +
      (watching ? '<div class="node-streams">' + watching + '</div>' : '') +
      '</article>';
  }

  function publishHint(origins) {
    const origin = origins.find((o) => o.ready && hostPort(o.rtmp_addr)) || origins.find((o) => hostPort(o.rtmp_addr));
    const hint = $('publish-hint');
    if (!origin) { hint.hidden = true; return; }
    const server = 'rtmp://' + hostPort(origin.rtmp_addr) + '/live';
    $('hint-server').textContent = server;
    $('hint-ffmpeg').textContent = 'ffmpeg -re -i input.mp4 -c:v libx264 -c:a aac -f flv ' + server + '/test';
    hint.hidden = false;
  }

  // --- Go -----------------------------------------------------------------------------
  setInterval(freshness, 1000);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
  refresh();
})();
