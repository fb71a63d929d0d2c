// voicefleet browser client. Plain ES module, no dependencies, no build step.
// Protocol: see docs/protocol.md. The page talks only to the WebSocket /ws/audio of its own origin
// (its Content-Security-Policy says so too); there is no way to point it elsewhere.
//
// URL parameters (handy for headless tests):
//   ?autostart=1     start without a click (use --autoplay-policy=no-user-gesture-required)
//   ?voice=am_adam   preselect a voice          ?lang=en      language sent in start
//   ?new=1           ignore a stored session id (start a new conversation)
// The access token comes in the fragment, #token=... (docs/security.md): the app that fronts the
// page gets it from POST /v1/tokens and links here with it. A fragment is never sent to a server,
// so the token stays out of access logs and Referer headers; the page keeps it for this tab only
// and takes it out of the address bar at once.

const SESSION_KEY = 'voicefleet.sessionId';
// The secret from `ready` that resumes the session: kept per tab, like the id, and sent only with it.
const SECRET_KEY = 'voicefleet.resumeSecret';
const TOKEN_KEY = 'voicefleet.token';
const CAPTURE_RATE = 16000;
const FRAME_MS = 100;
const FRAME_SAMPLES = (CAPTURE_RATE * FRAME_MS) / 1000; // 1600 samples = 3200 bytes
const PLAYBACK_RATE = 24000;
const PREBUFFER_MS = 80; // jitter buffer before a turn starts playing
const MAX_PENDING_FRAMES = 50; // frames kept while waiting for "ready" (5 s)
const MAX_WS_BUFFERED = 256 * 1024; // drop mic frames if the socket is this backed up
const MAX_EVENTS = 20000;
const DUCK_GAIN = 0.3;
const DUCK_RELEASE_MS = 900;

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const now = () => performance.now();

// ---------------------------------------------------------------------------------------------
// Records for people and for automated tests: window.voicefleet
const vf = {
  version: 1,
  state: 'idle', // idle | starting | connecting | ready | stopping | closed | error
  sessionId: null,
  resumed: null,
  wsUrl: null,
  audioContextRate: null,
  captureInfo: null,
  events: [], // every server message in order: JSON events as received (+ t), binary runs merged
  eventsDropped: 0,
  connections: 0, // WebSocket connections opened (each start/reconnect is one)
  turns: [], // one record per (connection, server turn number), see newTurn()
  transcripts: [], // {t, text, final}: every final transcript, in order
  partialCount: 0,
  errors: [], // {t, code, message}
  closes: [], // {t, code, reason, wasClean}
  notices: [], // messages shown to the user
  sent: { frames: 0, bytes: 0, dropped: 0, startMessages: [], stops: 0 },
  strayAudio: { frames: 0, bytes: 0 }, // binary frames outside audio_start..audio_end
  playback: { underruns: 0, cleared: 0 },
  start: () => start(),
  stop: () => stop(),
  reconnect: () => start(),
  newConversation: () => newConversation(),
  turn: (n) => turnsByNumber.get(n) || null,
  tts: null, // GET tts/providers as last read: what the TTS workers speak with, and the voices
  refreshTts: () => refreshTts(),
};
window.voicefleet = vf;

const turnsByNumber = new Map();

// ---------------------------------------------------------------------------------------------
// DOM
const ui = {
  start: $('start'), reconnect: $('reconnect'), newSession: $('new-session'), voice: $('voice'),
  token: $('token'), status: $('status'), notice: $('notice'), log: $('log'),
  partial: $('partial'), meter: $('meter-fill'), speaking: $('speaking'), sessionId: $('session-id'),
  stats: $('stats'), provider: $('tts-provider'),
};

function defaultWsUrl() {
  // Relative to the page's path so the client works behind a path prefix: /prefix/ -> /prefix/ws/audio
  const u = new URL('ws/audio', location.href);
  u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  u.search = '';
  u.hash = '';
  return u.href;
}

const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get('token')) {
  sessionStorage.setItem(TOKEN_KEY, fragment.get('token'));
  history.replaceState(null, '', location.pathname + location.search);
}
ui.token.value = sessionStorage.getItem(TOKEN_KEY) || '';
ui.token.addEventListener('change', () => sessionStorage.setItem(TOKEN_KEY, ui.token.value.trim()));
const voiceParam = params.get('voice');
if (voiceParam) {
  if (![...ui.voice.options].some((o) => o.value === voiceParam)) {
    ui.voice.add(new Option(voiceParam, voiceParam));
  }
  ui.voice.value = voiceParam;
}
// ---------------------------------------------------------------------------------------------
// What the fleet speaks with: the TTS provider(s), version and health, and the voices on offer
const TTS_REFRESH_MS = 15000;

function describeProviders(info) {
  // One entry per distinct provider the workers send sentences to now, with its worker count.
  const speaking = new Map();
  for (const w of info.workers) {
    const p = w.providers.find((q) => q.label === w.active);
    if (!p) continue;
    const key = `${p.engine} ${p.version} (${p.label}) · ${p.health}`;
    const entry = speaking.get(key) || { p, workers: 0 };
    entry.workers++;
    speaking.set(key, entry);
  }
  return [...speaking.entries()];
}

function showTts(info) {
  vf.tts = info;
  const speaking = describeProviders(info);
  if (speaking.length === 0) {
    ui.provider.textContent = 'Voice: no speech worker has reported yet';
    ui.provider.dataset.health = 'unknown';
  } else {
    ui.provider.textContent = 'Voice: ' + speaking.map(([key, e]) => (
      e.workers > 1 ? `${key} × ${e.workers} workers` : key)).join('; ');
    const healths = new Set(speaking.map(([, e]) => e.p.health));
    ui.provider.dataset.health = healths.size === 1 ? [...healths][0] : 'mixed';
  }
  ui.provider.title = `Voices offered by ${info.source}`;
  if (!info.voices.length) return; // nothing listed: keep the page's own choices
  const wanted = voiceParam || ui.voice.value || info.default;
  ui.voice.replaceChildren(...info.voices.map((v) => new Option(v, v)));
  // A voice the URL asked for stays chosen even if not on offer (the server then says why).
  if (info.voices.includes(wanted) || info.anyVoice || wanted === voiceParam) {
    if (!info.voices.includes(wanted)) ui.voice.add(new Option(wanted, wanted));
    ui.voice.value = wanted;
  } else {
    ui.voice.value = info.voices.includes(info.default) ? info.default : info.voices[0];
  }
}

async function refreshTts() {
  try {
    const response = await fetch(new URL('tts/providers', location.href), { cache: 'no-store' });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    showTts(await response.json());
  } catch (err) {
    ui.provider.textContent = 'Voice: unknown (the server did not say)';
    ui.provider.dataset.health = 'unknown';
    recordEvent({ type: 'tts_providers_failed', t: now(), error: String(err.message || err) });
  }
}

function forgetSession() {
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(SECRET_KEY);
}
if (params.get('new') === '1') forgetSession();
showSessionId(sessionStorage.getItem(SESSION_KEY));

const STATE_LABELS = {
  idle: 'Idle', starting: 'Starting microphone…', connecting: 'Connecting…', ready: 'Listening',
  stopping: 'Stopping…', closed: 'Disconnected', error: 'Error',
};

function setState(state, label) {
  vf.state = state;
  ui.status.dataset.state = state;
  ui.status.textContent = label || STATE_LABELS[state] || state;
  const running = state === 'starting' || state === 'connecting' || state === 'ready';
  ui.start.textContent = running ? 'Stop' : 'Start';
  ui.start.setAttribute('aria-pressed', String(running));
  ui.start.disabled = state === 'stopping';
  ui.newSession.disabled = running || state === 'stopping';
  ui.voice.disabled = running || state === 'stopping';
  if (running) ui.reconnect.hidden = true;
}

function showNotice(message, kind = 'error') {
  vf.notices.push({ t: now(), kind, message });
  ui.notice.hidden = false;
  ui.notice.dataset.kind = kind;
  ui.notice.textContent = message;
}

function clearNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = '';
}

function showSessionId(id) {
  ui.sessionId.textContent = id || 'none';
}

let statsPending = false;
function updateStats() {
  if (statsPending) return;
  statsPending = true;
  requestAnimationFrame(() => {
    statsPending = false;
    let audioBytes = 0;
    for (const t of vf.turns) audioBytes += t.audioBytes;
    ui.stats.textContent = `sent ${vf.sent.frames} frames · received ${(audioBytes / 1024).toFixed(0)} kB audio`;
  });
}

function scrollLog() {
  const el = document.scrollingElement || document.documentElement;
  const nearBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 160;
  if (nearBottom) ui.partial.scrollIntoView({ block: 'end' });
}

function addUserLine(text) {
  const li = document.createElement('li');
  li.className = 'msg user';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = 'You';
  const body = document.createElement('p');
  body.className = 'text';
  body.textContent = text;
  li.append(who, body);
  ui.log.append(li);
  scrollLog();
  return li;
}

function addSystemLine(text, kind = 'info') {
  const li = document.createElement('li');
  li.className = `msg system ${kind}`;
  li.textContent = text;
  ui.log.append(li);
  scrollLog();
}

// ---------------------------------------------------------------------------------------------
// Turn records
let pendingFinal = null; // final transcript waiting for the turn that answers it
let lastFinalAt = -Infinity;

function newTurn(n) {
  const rec = {
    turn: n,
    connection: vf.connections,
    sessionId: vf.sessionId,
    createdAt: now(),
    userText: null, // the final transcript this turn answers
    finalAt: null, // performance.now() when that final transcript arrived
    assistantText: '',
    audioStartAt: null,
    sampleRate: null,
    firstAudioAt: null,
    ttfaMs: null, // TTFA (after final transcript): final transcript -> first audio frame received
    audioFrames: 0,
    audioBytes: 0,
    audioEndAt: null,
    cancelled: false,
    cancelAt: null,
    playbackStartAt: null, // first sample reached the audio output (after the jitter buffer)
    playbackEndAt: null,
    ttfpMs: null, // final transcript -> playback started
    underruns: 0,
    pauses: 0, // audio_pause events: the user spoke over this reply
    resumes: 0, // audio_resume events: it was an acknowledgement, the reply went on
  };
  const li = document.createElement('li');
  li.className = 'msg assistant';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = 'Assistant';
  const body = document.createElement('p');
  body.className = 'text';
  const meta = document.createElement('p');
  meta.className = 'meta';
  li.append(who, body, meta);
  ui.log.append(li);
  Object.defineProperty(rec, 'el', { value: { li, body, meta }, enumerable: false });
  turnsByNumber.set(n, rec);
  vf.turns.push(rec);
  renderTurnMeta(rec);
  scrollLog();
  return rec;
}

function getTurn(n, { answers = false } = {}) {
  if (typeof n !== 'number') n = Number(n);
  let rec = turnsByNumber.get(n);
  if (!rec) rec = newTurn(n);
  if (answers && pendingFinal && rec.userText === null) attachFinal(rec, pendingFinal);
  return rec;
}

function attachFinal(rec, fin) {
  rec.userText = fin.text;
  rec.finalAt = fin.t;
  if (pendingFinal === fin) pendingFinal = null;
  computeLatencies(rec);
}

function computeLatencies(rec) {
  if (rec.finalAt === null) return;
  if (rec.firstAudioAt !== null) rec.ttfaMs = Math.round(rec.firstAudioAt - rec.finalAt);
  if (rec.playbackStartAt !== null) rec.ttfpMs = Math.round(rec.playbackStartAt - rec.finalAt);
  renderTurnMeta(rec);
}

function renderTurnMeta(rec) {
  const parts = [`turn ${rec.turn}`];
  if (rec.ttfaMs !== null) parts.push(`TTFA (after final transcript): ${rec.ttfaMs} ms`);
  else if (rec.firstAudioAt !== null) parts.push('TTFA (after final transcript): n/a');
  if (rec.audioBytes > 0) {
    const secs = rec.audioBytes / 2 / (rec.sampleRate || PLAYBACK_RATE);
    parts.push(`${secs.toFixed(1)} s audio`);
  }
  if (rec.cancelled) parts.push('interrupted');
  rec.el.meta.textContent = parts.join(' · ');
  rec.el.li.classList.toggle('cancelled', rec.cancelled);
  rec.el.li.hidden = !rec.assistantText && rec.audioBytes === 0 && !rec.cancelled;
}

// ---------------------------------------------------------------------------------------------
// Event log
function recordEvent(ev) {
  if (vf.events.length >= MAX_EVENTS) {
    vf.events.shift();
    vf.eventsDropped++;
  }
  vf.events.push(ev);
}

function recordBinary(turn, bytes) {
  const last = vf.events[vf.events.length - 1];
  if (last && last.type === 'binary' && last.turn === turn) {
    last.frames++;
    last.bytes += bytes;
    last.tLast = now();
  } else {
    recordEvent({ type: 'binary', t: now(), tLast: now(), turn, frames: 1, bytes });
  }
}

// ---------------------------------------------------------------------------------------------
// Audio graph
let ctx = null;
let micStream = null;
let micSource = null;
let captureNode = null;
let playbackNode = null;
let duckGain = null;
let playbackRate = PLAYBACK_RATE;
let speaking = false;
let duckTimer = null;

function describeMicError(err) {
  const name = err && err.name;
  if (name === 'NotAllowedError' || name === 'PermissionDeniedError' || name === 'SecurityError') {
    return 'Microphone access was denied. Allow the microphone for this site (the icon in the address bar) and press Start again.';
  }
  if (name === 'NotFoundError' || name === 'DevicesNotFoundError' || name === 'OverconstrainedError') {
    return 'No microphone was found. Connect a microphone and press Start again.';
  }
  if (name === 'NotReadableError' || name === 'TrackStartError' || name === 'AbortError') {
    return 'The microphone could not be opened; another application may be using it.';
  }
  return `The microphone is unavailable: ${(err && (err.message || err.name)) || err}`;
}

async function setupAudio() {
  await ctx.audioWorklet.addModule(new URL('audio-worklets.js', import.meta.url));
  vf.audioContextRate = ctx.sampleRate;

  micSource = ctx.createMediaStreamSource(micStream);
  captureNode = new AudioWorkletNode(ctx, 'vf-capture', {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    channelCount: 1,
    channelCountMode: 'explicit',
    channelInterpretation: 'speakers',
    processorOptions: { targetRate: CAPTURE_RATE, frameSamples: FRAME_SAMPLES },
  });
  captureNode.port.onmessage = (e) => onCaptureMessage(e.data);
  micSource.connect(captureNode);
  // The capture node writes silence; connecting it keeps it pulled by the graph in every browser.
  captureNode.connect(ctx.destination);

  playbackNode = new AudioWorkletNode(ctx, 'vf-playback', {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { sourceRate: PLAYBACK_RATE, prebufferMs: PREBUFFER_MS },
  });
  playbackRate = PLAYBACK_RATE;
  playbackNode.port.onmessage = (e) => onPlaybackMessage(e.data);
  duckGain = ctx.createGain();
  playbackNode.connect(duckGain).connect(ctx.destination);
}

async function resumeAudio(timeoutMs = 1500) {
  if (!ctx || ctx.state === 'running') return true;
  await Promise.race([
    ctx.resume().catch(() => {}),
    new Promise((r) => setTimeout(r, timeoutMs)),
  ]);
  return ctx && ctx.state === 'running';
}

function teardownAudio() {
  if (micStream) for (const tr of micStream.getTracks()) tr.stop();
  micStream = null;
  for (const node of [micSource, captureNode, playbackNode, duckGain]) {
    try { if (node) node.disconnect(); } catch { /* already disconnected */ }
  }
  if (captureNode) captureNode.port.onmessage = null;
  if (playbackNode) playbackNode.port.onmessage = null;
  micSource = captureNode = playbackNode = duckGain = null;
  if (ctx) ctx.close().catch(() => {});
  ctx = null;
  setSpeaking(false);
  ui.meter.style.width = '0%';
}

function onCaptureMessage(m) {
  if (m.type === 'info') {
    vf.captureInfo = m;
    return;
  }
  if (m.type !== 'frame') return;
  const level = m.rms > 0 ? Math.min(1, Math.max(0, (20 * Math.log10(m.rms) + 60) / 60)) : 0;
  ui.meter.style.width = `${(level * 100).toFixed(0)}%`;
  sendFrame(m.pcm);
}

function onPlaybackMessage(m) {
  const rec = m.turn !== null && m.turn !== undefined ? turnsByNumber.get(m.turn) : null;
  switch (m.type) {
    case 'started':
      if (rec) {
        rec.playbackStartAt = now();
        computeLatencies(rec);
      }
      setSpeaking(true);
      break;
    case 'drained':
      if (rec) rec.playbackEndAt = now();
      setSpeaking(false);
      break;
    case 'underrun':
      vf.playback.underruns++;
      if (rec) rec.underruns++;
      break;
    case 'cleared':
      vf.playback.cleared++;
      setSpeaking(false);
      break;
    default:
      break;
  }
}

function setSpeaking(on) {
  speaking = on;
  ui.speaking.hidden = !on;
  if (!on) unduck();
}

function duck() {
  if (!duckGain || !ctx || !speaking) return;
  duckGain.gain.setTargetAtTime(DUCK_GAIN, ctx.currentTime, 0.03);
  clearTimeout(duckTimer);
  duckTimer = setTimeout(unduck, DUCK_RELEASE_MS);
}

function unduck() {
  clearTimeout(duckTimer);
  duckTimer = null;
  if (duckGain && ctx) duckGain.gain.setTargetAtTime(1, ctx.currentTime, 0.05);
}

// ---------------------------------------------------------------------------------------------
// WebSocket
let ws = null;
let generation = 0; // bumps on every start/stop so stale async steps give up
let userStopped = false;
let readyReceived = false;
let pendingFrames = [];
let audioTurn = null; // turn whose audio is streaming (between audio_start and audio_end)
const cancelledTurns = new Set();
let lastServerError = null;
let stopTimer = null;
// Closes after which the same conversation can simply go on: a gateway draining or restarting
// (1001, 1012), a busy or briefly unavailable fleet (1013), a dropped connection (1006).
const RETRYABLE_CLOSES = new Set([1001, 1006, 1012, 1013]);
const MAX_RETRIES = 5;
let retries = 0;
let retryTimer = null;

function sendFrame(buf) {
  if (!ws || ws.readyState !== WebSocket.OPEN || userStopped) return;
  if (!readyReceived) {
    pendingFrames.push(buf);
    if (pendingFrames.length > MAX_PENDING_FRAMES) {
      pendingFrames.shift();
      vf.sent.dropped++;
    }
    return;
  }
  if (ws.bufferedAmount > MAX_WS_BUFFERED) {
    vf.sent.dropped++;
    return;
  }
  ws.send(buf);
  vf.sent.frames++;
  vf.sent.bytes += buf.byteLength;
  if (vf.sent.frames % 10 === 0) updateStats();
}

function startMessage() {
  const msg = {
    type: 'start', format: 'pcm_s16le', sampleRate: CAPTURE_RATE, channels: 1, frameDurationMs: FRAME_MS,
    voice: ui.voice.value, language: params.get('lang') || 'en',
  };
  const sid = sessionStorage.getItem(SESSION_KEY);
  if (sid) {
    msg.sessionId = sid;
    msg.resumeSecret = sessionStorage.getItem(SECRET_KEY) || '';
  }
  const token = ui.token.value.trim();
  if (token) msg.token = token;
  return msg;
}

function connect(gen) {
  const url = defaultWsUrl();
  vf.wsUrl = url;
  vf.connections++;
  setState('connecting');
  let sock;
  try {
    sock = new WebSocket(url);
  } catch (err) {
    failStart(`Cannot open the WebSocket ${url}: ${err.message || err}`);
    return;
  }
  ws = sock;
  sock.binaryType = 'arraybuffer';
  sock.onopen = () => {
    if (gen !== generation) return;
    const msg = startMessage();
    vf.sent.startMessages.push({ ...msg, token: msg.token ? '***' : undefined });
    sock.send(JSON.stringify(msg));
  };
  sock.onmessage = (e) => {
    if (sock !== ws) return;
    if (typeof e.data === 'string') onServerText(e.data);
    else onServerAudio(e.data);
  };
  sock.onerror = () => {
    // Browsers give no detail here; the close event that follows carries the code.
    recordEvent({ type: 'ws_error', t: now() });
  };
  sock.onclose = (e) => {
    if (sock !== ws) return;
    onClose(e);
  };
}

function onServerText(text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    recordEvent({ type: 'unparsable', t: now(), text: text.slice(0, 200) });
    return;
  }
  if (!m || typeof m !== 'object') return;
  recordEvent({ ...m, t: now() });
  switch (m.type) {
    case 'ready': onReady(m); break;
    case 'transcript': onTranscript(m); break;
    case 'assistant_text': {
      const rec = getTurn(m.turn, { answers: true });
      rec.assistantText += m.text || '';
      rec.el.body.textContent = rec.assistantText;
      renderTurnMeta(rec);
      scrollLog();
      break;
    }
    case 'audio_start': {
      const rec = getTurn(m.turn, { answers: true });
      rec.audioStartAt = now();
      rec.sampleRate = m.sampleRate || PLAYBACK_RATE;
      if (cancelledTurns.has(m.turn)) { audioTurn = null; break; }
      audioTurn = m.turn;
      if (playbackNode && rec.sampleRate !== playbackRate) {
        playbackRate = rec.sampleRate;
        playbackNode.port.postMessage({ type: 'config', sourceRate: playbackRate });
      }
      break;
    }
    case 'audio_end': {
      const rec = getTurn(m.turn);
      rec.audioEndAt = now();
      if (audioTurn === m.turn) audioTurn = null;
      if (playbackNode && !cancelledTurns.has(m.turn)) playbackNode.port.postMessage({ type: 'end', turn: m.turn });
      renderTurnMeta(rec);
      break;
    }
    case 'audio_pause':
    case 'audio_resume': {
      // The user speaks over the reply: hold it where it is until the server decides whether
      // that was an interruption (audio_cancel follows) or an acknowledgement (audio_resume).
      const pause = m.type === 'audio_pause';
      if (playbackNode) playbackNode.port.postMessage({ type: pause ? 'pause' : 'resume', turn: m.turn });
      const rec = getTurn(m.turn);
      if (pause) rec.pauses++;
      else rec.resumes++;
      unduck(); // paused, nothing to duck; resumed, at full volume
      break;
    }
    case 'audio_cancel': {
      // Barge-in: stop now and drop everything queued for that turn.
      cancelledTurns.add(m.turn);
      if (playbackNode) playbackNode.port.postMessage({ type: 'clear' });
      if (audioTurn === m.turn) audioTurn = null;
      const rec = getTurn(m.turn);
      rec.cancelled = true;
      rec.cancelAt = now();
      renderTurnMeta(rec);
      setSpeaking(false);
      break;
    }
    case 'error': onServerError(m); break;
    default: break;
  }
}

function onReady(m) {
  const requested = sessionStorage.getItem(SESSION_KEY);
  readyReceived = true;
  retries = 0;
  // Turn numbers are per session; start a fresh mapping so a new session's turn 1 gets a new record.
  turnsByNumber.clear();
  cancelledTurns.clear();
  vf.sessionId = m.sessionId || null;
  vf.resumed = !!m.resumed;
  if (m.sessionId) sessionStorage.setItem(SESSION_KEY, m.sessionId);
  if (m.resumeSecret) sessionStorage.setItem(SECRET_KEY, m.resumeSecret);
  showSessionId(m.sessionId);
  setState('ready');
  if (m.resumed) addSystemLine('Resumed the previous conversation.');
  else if (requested && requested !== m.sessionId) addSystemLine('The previous conversation could not be resumed; this is a new one.');
  const frames = pendingFrames;
  pendingFrames = [];
  for (const f of frames) sendFrame(f);
}

function onTranscript(m) {
  const text = m.text || '';
  if (!m.final) {
    vf.partialCount++;
    ui.partial.textContent = text;
    ui.partial.hidden = !text;
    if (text) duck();
    scrollLog();
    return;
  }
  const t = now();
  ui.partial.hidden = true;
  ui.partial.textContent = '';
  vf.transcripts.push({ t, text, final: true });
  if (text) addUserLine(text);
  const fin = { text, t };
  // Rare: the reply started before the final transcript arrived; attach it to that turn.
  const latest = vf.turns[vf.turns.length - 1];
  if (latest && latest.userText === null && latest.createdAt > lastFinalAt && !latest.cancelled) {
    attachFinal(latest, fin);
  } else {
    pendingFinal = fin;
  }
  lastFinalAt = t;
}

function onServerAudio(buf) {
  const turn = audioTurn;
  recordBinary(turn, buf.byteLength);
  if (turn === null || cancelledTurns.has(turn)) {
    vf.strayAudio.frames++;
    vf.strayAudio.bytes += buf.byteLength;
    return;
  }
  const rec = getTurn(turn);
  if (rec.firstAudioAt === null) {
    rec.firstAudioAt = now();
    computeLatencies(rec);
  }
  rec.audioFrames++;
  rec.audioBytes += buf.byteLength;
  if (rec.audioFrames % 10 === 1) renderTurnMeta(rec);
  updateStats();
  const usable = buf.byteLength & ~1;
  if (playbackNode && usable > 0) {
    const pcm = usable === buf.byteLength ? buf : buf.slice(0, usable);
    playbackNode.port.postMessage({ type: 'push', turn, pcm }, [pcm]);
  }
}

const ERROR_TEXT = {
  unauthorized: 'The server requires a valid access token: open this page from the app that gives you one (or enter one under Advanced).',
  token_expired: 'Your access token has expired: open this page again from the app that gave it to get a new one.',
  busy: 'The server has no speech-recognition capacity right now. Try again in a moment.',
  session_expired: 'The session reached its maximum length. Press Start for a new conversation.',
  session_taken_over: 'This conversation was resumed elsewhere (another tab or device), so this page let go of it.',
  stt_unavailable: 'Speech recognition is unavailable right now.',
  llm_failed: 'The assistant could not answer that turn.',
  tts_failed: 'The assistant\'s voice failed for that turn.',
  unsupported_format: 'The server does not accept this audio format.',
  internal: 'The server hit an internal error.',
  bad_message: 'The page sent a message the server could not read.',
  unknown_type: 'The page sent a message of a kind the server does not know.',
  already_started: 'The page tried to start a session that had already started.',
  bad_frame: 'The page sent audio the server could not read.',
  not_started: 'The page sent audio before starting the session.',
  frame_too_big: 'The page sent an audio frame larger than the server accepts.',
  message_too_big: 'The page sent a message larger than the server accepts.',
  unavailable: 'The server lost its message broker or session store. Reconnecting will resume the conversation once it is back.',
  start_timeout: 'The session did not start in time.',
  too_many_connections: 'Too many connections from this address: close another tab or device first.',
  too_many_errors: 'The server closed the connection after too many bad messages from this page.',
  audio_too_fast: 'The page sent audio faster than real time.',
  slow_client: 'This page did not keep up with the audio the server was sending.',
  unsupported_language: 'The server does not recognize speech in that language.',
  unknown_voice: 'The server does not have that voice.',
};

function onServerError(m) {
  const entry = { t: now(), code: m.code || 'unknown', message: m.message || '' };
  vf.errors.push(entry);
  lastServerError = entry;
  if (m.code === 'session_expired') forgetSession();
  const friendly = ERROR_TEXT[m.code] || 'Server error.';
  const detail = m.message ? ` (${m.code}: ${m.message})` : ` (${m.code})`;
  // Turn-level failures keep the session open: show them in the log, not as a blocking notice.
  if (['stt_unavailable', 'llm_failed', 'tts_failed', 'bad_frame', 'bad_message', 'unknown_type', 'already_started'].includes(m.code)) {
    addSystemLine(friendly + detail, 'warn');
  } else {
    showNotice(friendly + detail);
  }
}

const CLOSE_TEXT = {
  1000: 'normal closure',
  1001: 'server going away',
  1003: 'unsupported data',
  1005: 'no status code',
  1006: 'connection lost or server unreachable',
  1008: 'policy violation',
  1009: 'message too big',
  1011: 'server internal error',
  1012: 'server restarting',
  1013: 'try again later',
};

function onClose(e) {
  const entry = { t: now(), code: e.code, reason: e.reason || '', wasClean: e.wasClean };
  vf.closes.push(entry);
  recordEvent({ type: 'close', ...entry });
  clearTimeout(stopTimer);
  const wasUserStop = userStopped;
  const hadReady = readyReceived;
  ws = null;
  generation++;
  teardownAudio();
  resetConnectionState();
  if (wasUserStop && (e.code === 1000 || e.code === 1005)) {
    setState('idle', 'Session ended');
    return;
  }
  const what = CLOSE_TEXT[e.code] ? `${e.code}, ${CLOSE_TEXT[e.code]}` : `${e.code}`;
  let msg = hadReady || e.code !== 1006
    ? `The connection closed (code ${what}${e.reason ? `: ${e.reason}` : ''}).`
    : `Could not connect to the server at ${vf.wsUrl} (code ${what}).`;
  if (lastServerError && !wasUserStop) {
    const friendly = ERROR_TEXT[lastServerError.code] ? `${ERROR_TEXT[lastServerError.code]} ` : '';
    msg += ` ${friendly}Server said: ${lastServerError.code}${lastServerError.message ? ` — ${lastServerError.message}` : ''}.`;
  }
  if (wasUserStop) {
    setState('idle', 'Session ended');
    if (e.code !== 1000) showNotice(msg, 'info');
    return;
  }
  const canRetry = RETRYABLE_CLOSES.has(e.code) && (hadReady || e.code !== 1006);
  if (canRetry && retries < MAX_RETRIES) {
    const delay = Math.min(1000 * 2 ** retries, 8000) * (0.75 + Math.random() / 2);
    retries++;
    setState('closed');
    showNotice(`${msg} Reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${retries} of ${MAX_RETRIES})…`, 'info');
    retryTimer = setTimeout(() => { retryTimer = null; start(); }, delay);
    return;
  }
  setState('closed');
  showNotice(msg);
  ui.reconnect.hidden = false;
  ui.reconnect.textContent = sessionStorage.getItem(SESSION_KEY) ? 'Reconnect (resume conversation)' : 'Reconnect';
}

function resetConnectionState() {
  readyReceived = false;
  pendingFrames = [];
  audioTurn = null;
  userStopped = false;
  ui.partial.hidden = true;
  pendingFinal = null;
}

// ---------------------------------------------------------------------------------------------
// Start / stop
function failStart(message) {
  generation++;
  if (ws) {
    const s = ws;
    ws = null;
    try { s.close(1000); } catch { /* ignore */ }
  }
  teardownAudio();
  resetConnectionState();
  setState('error', 'Error');
  showNotice(message);
}

async function start() {
  if (['starting', 'connecting', 'ready', 'stopping'].includes(vf.state)) return;
  clearTimeout(retryTimer);
  retryTimer = null;
  const gen = ++generation;
  clearNotice();
  lastServerError = null;
  userStopped = false;
  ui.reconnect.hidden = true;

  if (!window.isSecureContext) {
    failStart(`The microphone needs a secure page: open this client over https:// or on http://localhost (this page is ${location.origin}).`);
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    failStart('This browser cannot capture the microphone (no navigator.mediaDevices.getUserMedia).');
    return;
  }
  if (typeof AudioWorkletNode === 'undefined') {
    failStart('This browser does not support AudioWorklet; use a current Chromium or Firefox.');
    return;
  }
  setState('starting');
  try {
    // Create and resume the context synchronously within the click, before any await.
    ctx = new AudioContext({ latencyHint: 'interactive' });
  } catch (err) {
    failStart(`Could not start audio: ${err.message || err}`);
    return;
  }
  const resumed = ctx.resume().catch(() => {});
  try {
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: {
        echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1,
      },
      video: false,
    });
  } catch (err) {
    if (gen !== generation) return;
    failStart(describeMicError(err));
    return;
  }
  if (gen !== generation) { if (micStream) for (const tr of micStream.getTracks()) tr.stop(); return; }
  const track = micStream.getAudioTracks()[0];
  if (track) {
    track.onended = () => {
      if (vf.state === 'ready' || vf.state === 'connecting') {
        showNotice('The microphone was disconnected.');
        stop();
      }
    };
  }
  try {
    await setupAudio();
  } catch (err) {
    if (gen !== generation) return;
    failStart(`Could not set up audio processing: ${err.message || err}`);
    return;
  }
  if (gen !== generation) return;
  await resumed;
  if (!(await resumeAudio())) {
    showNotice('Audio is paused by the browser until you interact with the page: click anywhere (or press Start).', 'info');
    const kick = () => { resumeAudio().then((ok) => { if (ok) clearNotice(); }); };
    document.addEventListener('pointerdown', kick, { once: true });
    document.addEventListener('keydown', kick, { once: true });
  }
  if (gen !== generation) return;
  connect(gen);
}

function stop() {
  if (retryTimer !== null) {
    // Stop while waiting to reconnect: give up on reconnecting.
    clearTimeout(retryTimer);
    retryTimer = null;
    retries = 0;
    setState('idle', 'Session ended');
    return;
  }
  if (!['starting', 'connecting', 'ready'].includes(vf.state)) return;
  userStopped = true;
  vf.sent.stops++;
  const sock = ws;
  if (!sock) {
    generation++;
    teardownAudio();
    resetConnectionState();
    setState('idle');
    return;
  }
  setState('stopping');
  // Stop the microphone and playback right away; the server closes with 1000 after "stop".
  if (micStream) for (const tr of micStream.getTracks()) tr.stop();
  if (playbackNode) playbackNode.port.postMessage({ type: 'clear' });
  if (sock.readyState === WebSocket.OPEN) {
    try { sock.send(JSON.stringify({ type: 'stop' })); } catch { /* closing anyway */ }
  }
  clearTimeout(stopTimer);
  stopTimer = setTimeout(() => {
    if (ws === sock) {
      try { sock.close(1000, 'client stop'); } catch { /* ignore */ }
      // If the close handshake hangs, finish locally.
      setTimeout(() => { if (ws === sock) onClose({ code: 1000, reason: 'client stop (timeout)', wasClean: false }); }, 1000);
    }
  }, 3000);
}

function newConversation() {
  if (['starting', 'connecting', 'ready', 'stopping'].includes(vf.state)) return;
  forgetSession();
  vf.sessionId = null;
  showSessionId(null);
  ui.reconnect.hidden = true;
  clearNotice();
  addSystemLine('New conversation: the next Start opens a fresh session.');
}

ui.start.addEventListener('click', () => {
  if (['starting', 'connecting', 'ready'].includes(vf.state)) stop();
  else start();
});
ui.reconnect.addEventListener('click', () => start());
ui.newSession.addEventListener('click', () => newConversation());
window.addEventListener('pagehide', () => {
  if (ws && ws.readyState === WebSocket.OPEN) {
    try { ws.send(JSON.stringify({ type: 'stop' })); } catch { /* ignore */ }
  }
});

setState('idle');
refreshTts();
// The voice can be changed only between sessions: refresh what is on offer while idle.
setInterval(() => { if (!['starting', 'connecting', 'ready', 'stopping'].includes(vf.state)) refreshTts(); }, TTS_REFRESH_MS);
if (!window.isSecureContext) {
  showNotice(`The microphone needs a secure page: open this client over https:// or on http://localhost (this page is ${location.origin}).`);
}
if (params.get('autostart') === '1') start();
