// Streaming sample-rate converter: microphone rate (44.1 or 48 kHz, any rate really) to 16 kHz.
//
// Why windowed sinc: dropping to 16 kHz throws away everything above 8 kHz, and whatever is left
// there folds back into the speech band as aliasing. Linear interpolation does not filter at all,
// so fricatives and room noise would alias; a windowed-sinc low-pass does the filtering and the
// interpolation in one step. The ratio is used as an exact fraction (out/in = L/M, e.g. 160/441),
// so one coefficient row per output phase is precomputed and there is no drift over long streams.
// Design: cutoff 0.45 x the lower rate (7.2 kHz at 16 kHz out), 24 zero crossings each side,
// Blackman window: flat (±0.001 dB) to 6 kHz, -6 dB at 7.2 kHz, at least 69 dB down above 8 kHz.
// Cost at 48 kHz in: 160 multiply-adds per output sample, about 2.6 million a second.
// The output is delayed by half the filter (about 1.7 ms) but keeps stream time exactly: output
// sample n is the input signal at time n / outRate.

const ZERO_CROSSINGS = 24;
const CUTOFF = 0.45;

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

export class StreamingResampler {
  constructor(inRate, outRate = 16000) {
    if (!Number.isInteger(inRate) || !Number.isInteger(outRate) || inRate <= 0 || outRate <= 0) {
      throw new RangeError(`sample rates must be positive integers, got ${inRate} and ${outRate}`);
    }
    const g = gcd(inRate, outRate);
    this.up = outRate / g; // L: output phases per input sample step
    this.down = inRate / g; // M
    const perCrossing = inRate / (2 * CUTOFF * Math.min(inRate, outRate)); // input samples per sinc lobe
    this.half = Math.ceil(ZERO_CROSSINGS * perCrossing);
    this.taps = 2 * this.half;
    this.rows = [];
    for (let p = 0; p < this.up; p++) {
      const row = new Float32Array(this.taps);
      let sum = 0;
      for (let j = 0; j < this.taps; j++) {
        const d = j - (this.half - 1) - p / this.up; // distance from the output instant, input samples
        const x = d / perCrossing;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = Math.abs(d) >= this.half ? 0 : 0.42 + 0.5 * Math.cos((Math.PI * d) / this.half) + 0.08 * Math.cos((2 * Math.PI * d) / this.half);
        row[j] = sinc * w;
        sum += row[j];
      }
      for (let j = 0; j < this.taps; j++) row[j] /= sum; // unity gain at DC for every phase
      this.rows.push(row);
    }
    // Input history; starts with half-1 zeros so output sample 0 sits on input sample 0.
    this.buffer = new Float32Array(4096 + this.taps);
    this.length = this.half - 1;
    this.phase = 0;
  }

  /** Resamples the next chunk of input; returns the output samples it completes (maybe none). */
  process(input) {
    this._append(input);
    const count = this._available();
    const out = new Float32Array(count);
    let start = 0;
    for (let n = 0; n < count; n++) {
      const row = this.rows[this.phase];
      let acc = 0;
      for (let j = 0; j < this.taps; j++) acc += this.buffer[start + j] * row[j];
      out[n] = acc;
      this.phase += this.down;
      start += Math.floor(this.phase / this.up);
      this.phase %= this.up;
    }
    this.buffer.copyWithin(0, start, this.length);
    this.length -= start;
    return out;
  }

  /** End of stream: the output still held back by the filter's look-ahead. */
  flush() {
    return this.process(new Float32Array(this.half));
  }

  _available() {
    // Output samples whose whole window is in the buffer: window n starts at floor((phase + n * down) / up).
    const lastStart = this.length - this.taps;
    if (lastStart < 0) return 0;
    return Math.floor((lastStart * this.up + this.up - 1 - this.phase) / this.down) + 1;
  }

  _append(input) {
    if (this.length + input.length > this.buffer.length) {
      const grown = new Float32Array(2 * (this.length + input.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
  }
}

globalThis.StreamingResampler = StreamingResampler; // for audio-worklet.js, in the worklet's scope
