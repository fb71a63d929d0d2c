// voicefleet browser client: AudioWorklet processors (capture + playback).
//
// Loaded once with audioContext.audioWorklet.addModule(); registers two processors:
//   "vf-capture"  mono mic input at the context rate -> 16 kHz PCM16 frames (default 100 ms)
//   "vf-playback" PCM16 chunks at 24 kHz -> jitter buffer -> context rate output, gapless
//
// Both use the same streaming windowed-sinc resampler (Kaiser window, tabulated kernel), which
// low-pass filters below the lower Nyquist frequency, so downsampling 48 kHz or 44.1 kHz to 16 kHz
// does not alias, and upsampling 24 kHz to 44.1/48 kHz does not image.

/* global sampleRate, currentTime, registerProcessor, AudioWorkletProcessor */

function besselI0(x) {
  let sum = 1;
  let term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 50; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-12) break;
  }
  return sum;
}

/**
 * Streaming arbitrary-ratio resampler.
 * push(Float32Array) appends input; pull(out, offset, max) writes up to max output samples.
 * Latency: halfWidth input samples (about 1 ms at 48 kHz -> 16 kHz, 0.7 ms at 24 kHz -> 48 kHz).
 */
class Resampler {
  constructor(inRate, outRate, { zeros = 16, beta = 8.0, passband = 0.9, resolution = 512 } = {}) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate; // input samples advanced per output sample
    this.identity = inRate === outRate;
    // Cut-off in cycles per input sample: a bit below the lower of the two Nyquist frequencies.
    const fc = (passband * 0.5 * Math.min(inRate, outRate)) / inRate;
    this.halfWidth = Math.ceil(zeros / (2 * fc));
    this.resolution = resolution;
    const n = 2 * this.halfWidth * resolution + 2;
    const table = new Float32Array(n);
    const i0b = besselI0(beta);
    for (let i = 0; i < n; i++) {
      const d = i / resolution - this.halfWidth; // distance in input samples
      const r = d / this.halfWidth;
      if (Math.abs(r) > 1) { table[i] = 0; continue; }
      const x = 2 * fc * d;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = besselI0(beta * Math.sqrt(1 - r * r)) / i0b;
      table[i] = 2 * fc * sinc * w;
    }
    this.table = table;
    this.buf = new Float32Array(4096);
    this.reset();
  }

  reset() {
    this.buf.fill(0);
    // Pre-fill halfWidth zeros so the first output sample is centred on the first input sample.
    this.len = this.identity ? 0 : this.halfWidth;
    this.pos = this.identity ? 0 : this.halfWidth;
  }

  push(input) {
    const need = this.len + input.length;
    if (need > this.buf.length) {
      let cap = this.buf.length;
      while (cap < need) cap *= 2;
      const nb = new Float32Array(cap);
      nb.set(this.buf.subarray(0, this.len));
      this.buf = nb;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
  }

  pull(out, offset, max) {
    const buf = this.buf;
    let produced = 0;
    if (this.identity) {
      const n = Math.min(max, this.len - this.pos);
      out.set(buf.subarray(this.pos, this.pos + n), offset);
      this.pos += n;
      produced = n;
    } else {
      const hw = this.halfWidth;
      const res = this.resolution;
      const table = this.table;
      let pos = this.pos;
      const limit = this.len - 1 - hw;
      while (produced < max && pos <= limit) {
        const kLo = Math.ceil(pos - hw);
        const kHi = Math.floor(pos + hw);
        let acc = 0;
        // Index into the table for tap k: (pos - k + hw) * res
        let idx = (pos - kLo + hw) * res;
        for (let k = kLo; k <= kHi; k++, idx -= res) {
          const i0 = idx | 0;
          const frac = idx - i0;
          const h = table[i0] + frac * (table[i0 + 1] - table[i0]);
          acc += buf[k] * h;
        }
        out[offset + produced] = acc;
        produced++;
        pos += this.step;
      }
      this.pos = pos;
    }
    this._compact();
    return produced;
  }

  _compact() {
    // Keep the samples still needed by the next output (pos - halfWidth onwards).
    const keepFrom = this.identity ? this.pos : Math.floor(this.pos) - this.halfWidth;
    if (keepFrom > 2048 || (keepFrom > 0 && keepFrom >= this.len)) {
      const from = Math.min(keepFrom, this.len);
      this.buf.copyWithin(0, from, this.len);
      this.len -= from;
      this.pos -= from;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Capture: mic -> mono -> 16 kHz -> PCM16 frames posted to the main thread.
// processorOptions: { targetRate = 16000, frameSamples = 1600 }
// Posts { type: "frame", pcm: ArrayBuffer (Int16 LE), rms: number, peak: number } per frame.
// Accepts messages { type: "reset" } (drop the partial frame and resampler state).
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.targetRate = o.targetRate || 16000;
    this.frameSamples = o.frameSamples || 1600;
    this.resampler = new Resampler(sampleRate, this.targetRate);
    this.mono = new Float32Array(128);
    this.tmp = new Float32Array(256);
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.sumSq = 0;
    this.peak = 0;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'reset') {
        this.resampler.reset();
        this.fill = 0;
        this.sumSq = 0;
        this.peak = 0;
      }
    };
    this.port.postMessage({ type: 'info', inputRate: sampleRate, targetRate: this.targetRate,
      taps: 2 * this.resampler.halfWidth + 1 });
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || !input[0]) return true; // no source connected (yet)
    const n = input[0].length;
    if (this.mono.length < n) this.mono = new Float32Array(n);
    const mono = this.mono.subarray(0, n);
    if (input.length === 1) {
      mono.set(input[0]);
    } else {
      mono.fill(0);
      for (let c = 0; c < input.length; c++) {
        const ch = input[c];
        for (let i = 0; i < n; i++) mono[i] += ch[i];
      }
      const g = 1 / input.length;
      for (let i = 0; i < n; i++) mono[i] *= g;
    }
    this.resampler.push(mono);
    for (;;) {
      const got = this.resampler.pull(this.tmp, 0, this.tmp.length);
      if (got === 0) break;
      for (let i = 0; i < got; i++) {
        let s = this.tmp[i];
        if (s > 1) s = 1; else if (s < -1) s = -1;
        this.sumSq += s * s;
        const a = s < 0 ? -s : s;
        if (a > this.peak) this.peak = a;
        this.frame[this.fill++] = s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff);
        if (this.fill === this.frameSamples) {
          const pcm = this.frame.buffer;
          this.port.postMessage({
            type: 'frame', pcm, rms: Math.sqrt(this.sumSq / this.frameSamples), peak: this.peak,
          }, [pcm]);
          this.frame = new Int16Array(this.frameSamples);
          this.fill = 0;
          this.sumSq = 0;
          this.peak = 0;
        }
      }
      if (got < this.tmp.length) break;
    }
    return true;
  }
}

// ---------------------------------------------------------------------------------------------
// Playback: jitter-buffered, gapless output of streamed PCM16 (default 24 kHz) at the context rate.
// processorOptions: { sourceRate = 24000, prebufferMs = 80, maxPrebufferMs = 400 }
// The jitter buffer waits for prebufferMs of audio before a turn starts playing; each underrun
// (the stream ran slower than real time) raises the re-buffering target by 60 ms, up to
// maxPrebufferMs, for the rest of that turn.
// Messages in:
//   { type: "push", turn, pcm: ArrayBuffer (Int16 LE) }   queue audio of a turn
//   { type: "end", turn }                                  no more audio for this turn (flush)
//   { type: "clear" }                                      drop everything now (barge-in)
//   { type: "config", sourceRate }                         change the source rate (clears)
//   { type: "pause", turn } / { type: "resume", turn }    hold playback where it is / go on
//                                                          from that very sample (nothing dropped)
// Messages out:
//   { type: "started", turn, time }   first sample of a turn reached the output
//   { type: "drained", turn, time }   the turn's audio (after "end") has fully played
//   { type: "underrun", turn, time }  ran dry mid-turn; re-buffering
//   { type: "cleared", time, droppedMs }
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.prebufferMs = o.prebufferMs != null ? o.prebufferMs : 80;
    this.maxPrebufferMs = o.maxPrebufferMs != null ? o.maxPrebufferMs : 400;
    this.targetMs = this.prebufferMs;
    this._configure(o.sourceRate || 24000);
    this.port.onmessage = (e) => this._onMessage(e.data);
  }

  _configure(sourceRate) {
    this.sourceRate = sourceRate;
    this.resampler = new Resampler(sourceRate, sampleRate);
    this.chunks = []; // Float32Array chunks at the output rate
    this.head = 0; // read offset within chunks[0]
    this.queued = 0; // output-rate samples queued
    this.turn = null; // turn whose audio is queued / playing
    this.ended = false; // "end" received for this.turn
    this.playing = false; // false while (re)buffering
    this.startedTurn = null;
    this.paused = false; // "pause" of this.turn: output silent, queue kept, until "resume"
    this.tmp = new Float32Array(8192);
  }

  _resampleInto(float) {
    this.resampler.push(float);
    for (;;) {
      const got = this.resampler.pull(this.tmp, 0, this.tmp.length);
      if (got > 0) {
        this.chunks.push(this.tmp.slice(0, got));
        this.queued += got;
      }
      if (got < this.tmp.length) break;
    }
  }

  _clear() {
    const droppedMs = (this.queued / sampleRate) * 1000;
    this.chunks = [];
    this.head = 0;
    this.queued = 0;
    this.resampler.reset();
    this.playing = false;
    this.ended = false;
    this.paused = false;
    const turn = this.turn;
    this.turn = null;
    this.startedTurn = null;
    return { droppedMs, turn };
  }

  _onMessage(m) {
    if (!m || typeof m !== 'object') return;
    switch (m.type) {
      case 'push': {
        if (this.turn !== m.turn) {
          // A new turn: anything left of another turn is stale.
          if (this.turn !== null && this.queued > 0) this._clear();
          this.resampler.reset();
          this.turn = m.turn;
          this.ended = false;
          this.playing = false;
          this.paused = false;
          this.targetMs = this.prebufferMs;
        }
        const pcm = new Int16Array(m.pcm);
        const f = new Float32Array(pcm.length);
        for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
        this._resampleInto(f);
        break;
      }
      case 'end': {
        if (m.turn === this.turn && !this.ended) {
          this.ended = true;
          // Flush the resampler's look-ahead with silence.
          this._resampleInto(new Float32Array(this.resampler.halfWidth + 1));
          if (this.queued === 0) this._drained();
        }
        break;
      }
      case 'clear': {
        const { droppedMs, turn } = this._clear();
        this.port.postMessage({ type: 'cleared', turn, droppedMs, time: currentTime });
        break;
      }
      case 'pause': {
        if (m.turn === this.turn) this.paused = true;
        break;
      }
      case 'resume': {
        if (m.turn === this.turn) this.paused = false;
        break;
      }
      case 'config': {
        this._configure(m.sourceRate || 24000);
        break;
      }
      default:
        break;
    }
  }

  _drained() {
    this.port.postMessage({ type: 'drained', turn: this.turn, time: currentTime });
    this.turn = null;
    this.ended = false;
    this.playing = false;
    this.resampler.reset();
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    if (this.paused) return true; // output stays silent; the next sample waits for "resume"
    if (!this.playing) {
      const prebuffer = (this.targetMs / 1000) * sampleRate;
      if (this.queued > 0 && (this.queued >= prebuffer || this.ended)) {
        this.playing = true;
        if (this.startedTurn !== this.turn) {
          this.startedTurn = this.turn;
          this.port.postMessage({ type: 'started', turn: this.turn, time: currentTime });
        }
      } else {
        return true; // output stays silent
      }
    }
    let written = 0;
    while (written < n && this.chunks.length > 0) {
      const c = this.chunks[0];
      const take = Math.min(n - written, c.length - this.head);
      out.set(c.subarray(this.head, this.head + take), written);
      written += take;
      this.head += take;
      this.queued -= take;
      if (this.head >= c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);
    if (this.queued === 0) {
      if (this.ended) {
        this._drained();
      } else if (this.turn !== null) {
        this.playing = false; // underrun: wait for the jitter buffer to refill, with more margin
        this.targetMs = Math.min(this.maxPrebufferMs, this.targetMs + 60);
        this.port.postMessage({ type: 'underrun', turn: this.turn, time: currentTime });
      }
    }
    return true;
  }
}

registerProcessor('vf-capture', CaptureProcessor);
registerProcessor('vf-playback', PlaybackProcessor);
