// Runs on the audio thread: mixes the microphone to mono, resamples it to 16 kHz and hands the
// page frames of 100 ms (1600 float32 samples). Doing it here keeps the main thread free and
// means every sample the microphone delivered is sent, in order, whatever the page is doing.
// `StreamingResampler` comes from resampler.js, added to the same worklet scope just before.

const OUTPUT_RATE = 16000;
const FRAME_SAMPLES = OUTPUT_RATE / 10;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new globalThis.StreamingResampler(sampleRate, OUTPUT_RATE);
    this.frame = new Float32Array(FRAME_SAMPLES);
    this.filled = 0;
    this.peak = 0;
    this.flushed = false;
    this.port.onmessage = (event) => {
      if (event.data === "flush") this.flush();
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (this.flushed) return false;
    if (!channels || channels.length === 0) return true; // no input connected yet
    let mono = channels[0];
    if (channels.length > 1) {
      mono = new Float32Array(mono.length);
      for (const channel of channels) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
    }
    this.push(this.resampler.process(mono));
    return true;
  }

  push(samples) {
    let offset = 0;
    while (offset < samples.length) {
      const n = Math.min(samples.length - offset, FRAME_SAMPLES - this.filled);
      for (let i = 0; i < n; i++) {
        const value = samples[offset + i];
        this.frame[this.filled + i] = value;
        this.peak = Math.max(this.peak, Math.abs(value));
      }
      this.filled += n;
      offset += n;
      if (this.filled === FRAME_SAMPLES) this.post();
    }
  }

  post() {
    const samples = this.filled === FRAME_SAMPLES ? this.frame : this.frame.slice(0, this.filled);
    this.port.postMessage({ type: "frame", samples, peak: this.peak }, [samples.buffer]);
    this.frame = new Float32Array(FRAME_SAMPLES);
    this.filled = 0;
    this.peak = 0;
  }

  /** Stop: send what the resampler and the current frame still hold, then say so. */
  flush() {
    this.push(this.resampler.flush());
    if (this.filled > 0) this.post();
    this.flushed = true;
    this.port.postMessage({ type: "flushed" });
  }
}

registerProcessor("satellite-asr-capture", CaptureProcessor);
