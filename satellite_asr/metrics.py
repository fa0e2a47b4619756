"""Prometheus metrics of one daemon (own registry, so several daemons can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("satellite_asr_sessions_active", "Open sessions.", ["protocol"], registry=r)
        self.sessions = Counter("satellite_asr_sessions", "Sessions opened.", ["protocol"], registry=r)
        self.endpoints = Counter(
            "satellite_asr_endpoints",
            "Utterance ends by reason: complete (short silence after a complete command), silence, forced.",
            ["reason"],
            registry=r,
        )
        self.endpoint_silence = Histogram(
            "satellite_asr_endpoint_silence_seconds",
            "Silence waited after the speech before an utterance ended (complete and silence endpoints).",
            registry=r,
            buckets=(0.064, 0.128, 0.192, 0.256, 0.32, 0.4, 0.5, 0.64, 0.8, 1.0, 1.6, 3.2),
        )
        self.final_rewrites = Counter(
            "satellite_asr_final_rewrites",
            "Finals whose words do not start with the stable text streamed before them (the final wins).",
            registry=r,
        )
        self.realtime_delta_mismatches = Counter(
            "satellite_asr_realtime_delta_mismatches",
            "OpenAI Realtime items whose completed transcript does not start with the deltas sent before it "
            "(the transcript wins; the deltas do not add up to it).",
            registry=r,
        )
        self.partial_latency = Histogram(
            "satellite_asr_partial_latency_seconds",
            "From a partial becoming due to its event being sent.",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.final_latency = Histogram(
            "satellite_asr_final_latency_seconds",
            "From the end of the utterance being detected (endpoint, flush, cap) to the final being sent.",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.decode_seconds = Histogram(
            "satellite_asr_decode_seconds", "Engine time per decode.", ["kind"], registry=r, buckets=LATENCY_BUCKETS
        )
        self.engine_batch_size = Histogram(
            "satellite_asr_engine_batch_size",
            "Decodes the engine ran together in one model step (qwen3-vllm: vLLM's running requests).",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.engine_redecodes = Counter(
            "satellite_asr_engine_redecodes",
            "Decodes run again on audio already decoded, by reason: second_look (whisper, a final with "
            "none of the session's names, decoded with the few near its text or nearly written), longer_window "
            "and full_window (whisper, a short-window decode that ran away or wrote its text twice, redone on a "
            "longer window or on 30 s).",
            ["reason"],
            registry=r,
        )
        self.partials_skipped = Counter(
            "satellite_asr_partials_skipped", "Partials not decoded because newer audio superseded them.", registry=r
        )
        self.frame_seconds = Histogram(
            "satellite_asr_frame_seconds",
            "Server time to take one client audio frame (decode, resample, VAD, endpointing; not transcription).",
            ["protocol"],
            registry=r,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
        )
        self.vad_seconds = Counter("satellite_asr_vad_seconds", "Wall seconds spent in Silero VAD.", registry=r)
        self.audio_seconds = Counter(
            "satellite_asr_audio_seconds", "Seconds of audio received.", ["protocol"], registry=r
        )
        self.invalid_samples = Counter(
            "satellite_asr_invalid_samples", "NaN/Inf samples replaced by silence.", registry=r
        )
        self.errors = Counter(
            "satellite_asr_errors",
            "Errors sent to clients, and connections refused before any request.",
            ["code"],
            registry=r,
        )
        self.engine_restarts = Counter(
            "satellite_asr_engine_restarts",
            "Times a broken engine was closed and started again.",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
