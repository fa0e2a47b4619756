"""`satellite-asr`: serve the daemon, transcribe files offline, stream a file or the microphone, benchmark."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from satellite_asr import __version__
from satellite_asr.audio import MAX_RATE, MIN_RATE
from satellite_asr.clients import OutputClosed, reader_may_leave
from satellite_asr.config import ConfigError, Settings, load_settings, setting_default, setting_fields
from satellite_asr.engines.base import EngineError

log = logging.getLogger("satellite_asr")

DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fixtures.json"
"""bench's files when no --manifest is given: the checkout's, whatever the working directory."""


def _websocket_url(text: str) -> str:
    """Checked while parsing, so a mistyped URL is a usage error rather than a failed connection."""
    from websockets.exceptions import InvalidURI
    from websockets.uri import parse_uri

    try:
        parse_uri(text)
    except InvalidURI as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _at_least(minimum: int) -> Any:
    """An argparse type: a whole number of at least `minimum` (a bench of 0 clients reports nothing)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


TRANSCRIBE_SETTINGS = frozenset(
    {
        # the engine and how it decodes (partials aside: transcribe asks for none)
        *("engine", "model", "language", "context", "decode_concurrency"),
        *("whisper_compute_type", "whisper_device", "whisper_threads", "whisper_beam_size", "whisper_short_context"),
        *("vllm_dtype", "vllm_gpu_memory_utilization", "vllm_max_model_len", "vllm_max_num_seqs"),
        *("vllm_enforce_eager", "vllm_kv_cache_bytes", "qwen_max_new_tokens"),
        *("remote_urls", "remote_api_key", "remote_timeout_s", "remote_health_interval_s", "remote_max_concurrency"),
        # where the file is cut into utterances
        *("vad_threshold", "min_speech_ms", "turn_detection", "min_silence_ms", "silence_ms", "speech_pad_ms"),
        "max_utterance_s",
        # the household's names, which bias the decodes and correct the transcripts
        *("household_names", "ha_url", "ha_token", "ha_token_file", "ha_names_limit"),
        "log_level",
    }
)
"""The settings that change a local transcription: `transcribe` runs no server, so it has flags for
these alone. Its config file and SATELLITE_ASR_ variables may hold any setting (one file serves
both commands); the server's are unused."""


def _add_setting_flags(parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    """One flag per setting (or per setting in `only`), derived from `Settings` (defaults shown are
    the built-in ones)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see config.example.yaml).")
    for f in setting_fields():
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = setting_default(f)
        help_text = f"{f.metadata['help']} (default: {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, action="append", default=None, metavar="VALUE", help=help_text)
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(
                flag, dest=f.name, default=None, metavar="|".join(choices) if choices else "VALUE", help=help_text
            )


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in setting_fields()}  # None: not a flag of the command
    return load_settings(args.config, overrides=overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level != "DEBUG":
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every decode at INFO


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="satellite-asr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"satellite-asr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="Run the daemon (WebSocket, HTTP, Wyoming, zeroconf).",
        description="Run the daemon: Wyoming on wyoming_uri (Home Assistant), the browser page, WebSocket, "
        "OpenAI-compatible APIs, /health and /metrics on http_port. Every setting below is also a key of the "
        "--config file (silence_ms) and an environment variable (SATELLITE_ASR_SILENCE_MS); a flag wins over "
        "the environment, which wins over the file. Exit status: 2 for a bad setting or an address it cannot "
        "listen on, 1 when the engine cannot load, 0 after SIGTERM or SIGINT.",
    )
    _add_setting_flags(serve)

    transcribe = commands.add_parser(
        "transcribe",
        help="Transcribe audio files offline (wav, flac, mp3, ogg/opus, m4a, ...), one line per utterance.",
        description="Each file is cut into utterances as a live stream of it would be, with the\n"
        "settings below (turn_detection adaptive by default). An upload to\n"
        "/v1/audio/transcriptions is always cut with turn_detection fixed:\n"
        "--turn-detection fixed gives its segments. Each line: the file, the\n"
        "utterance's start and end (seconds) and its text, tab-separated; a file\n"
        "with no speech has none (stderr says so). Files are decoded as an upload\n"
        "is (FFmpeg: any format it reads), with no limit on their length\n"
        "(max_upload_audio_s is the server's). A file that cannot be read or is\n"
        "not audio is named on stderr, the others are still transcribed, and the\n"
        "exit status is then 2; one the engine failed on is named so too, with\n"
        "exit status 1. Only the settings that change a transcription are\n"
        "flags here; a --config file may hold the server's too, left unused.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the flag unbroken at its dash
    )
    transcribe.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="Audio files in any format FFmpeg reads, as /v1/audio/transcriptions takes them (docs/openai.md).",
    )
    _add_setting_flags(transcribe, TRANSCRIBE_SETTINGS)

    stream = commands.add_parser(
        "stream",
        help="Stream a WAV file or the microphone to a running daemon and print transcripts.",
        description="Ctrl-C sends what was captured, then `end`, and waits for the last final; twice quits at once.",
    )
    source = stream.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "file",
        nargs="?",
        metavar="FILE.wav",
        help=f"16-bit PCM WAV file to stream ({MIN_RATE} to {MAX_RATE} Hz; several channels are mixed to mono).",
    )
    source.add_argument("--mic", action="store_true", help="Stream the microphone (needs the 'mic' extra).")
    stream.add_argument("--device", help="Input device for --mic, by name or index (list: python -m sounddevice).")
    stream.add_argument(
        "--url",
        type=_websocket_url,
        default="ws://127.0.0.1:10301/v1/stream",
        help="Daemon WebSocket URL (default: ws://127.0.0.1:10301/v1/stream; wss:// with TLS).",
    )
    stream.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("SATELLITE_ASR_API_KEY", ""),
        help="The daemon's api_key, sent as Authorization: Bearer (default: $SATELLITE_ASR_API_KEY).",
    )
    stream.add_argument("--cafile", metavar="PEM", help="Certificate to trust for wss:// (e.g. a self-signed one).")
    stream.add_argument("--fast", action="store_true", help="Send a file as fast as possible, not at real-time pace.")
    stream.add_argument("--json", action="store_true", help="Print every server message as a JSON line.")
    stream.add_argument("--language", help="Language code to ask for.")
    stream.add_argument("--context", help="Biasing context (names, terms).")
    stream.add_argument("--silence-ms", type=int, help="End-of-speech silence for this session.")

    bench = commands.add_parser(
        "bench",
        help="Load test: concurrent real-time clients; latency, CPU and WER.",
        description="Without --url the daemon runs in-process from the settings below, on loopback ports of its "
        "own and not advertised (its host, http_port, wyoming_uri and zeroconf settings are not used), so it can "
        "run beside a daemon already serving. The api_key (--api-key, --api-key-file or $SATELLITE_ASR_API_KEY) "
        "is the key the clients send, to that daemon or to the one at --url (Wyoming asks for none).",
    )
    bench.add_argument("--clients", type=_at_least(1), default=1, help="Concurrent clients (default 1).")
    bench.add_argument(
        "--rounds", type=_at_least(1), default=4, help="Files each client streams, one after another (default 4)."
    )
    bench.add_argument(
        "--manifest",
        default=None,
        help="JSON mapping WAV files (beside it) to their expected utterances (default: the checkout's "
        "tests/fixtures/fixtures.json), or to one command with its measured voice "
        "(tests/fixtures/turns/manifest.json).",
    )
    bench.add_argument(
        "--split",
        help="Only the manifest's files of this split: any split the manifest names "
        "(tests/fixtures/turns/make_turns.py says what each of its splits is for).",
    )
    bench.add_argument("--category", help="Only the manifest's files of this category (turns: complete, paused, hard).")
    bench.add_argument(
        "--protocol",
        choices=(
            "websocket",
            "openai-realtime",
            "deepgram",
            "deepgram-flux",
            "assemblyai",
            "elevenlabs",
            "cartesia",
            "soniox",
            "speechmatics",
            "gladia",
            "mistral",
            "xai",
            "gradium",
            "meta",
            "sarvam",
            "zoom",
            "sarvam-realtime",
            "azure",
            "smallest",
            "baseten",
            "simplismart",
            "fireworks",
            "telnyx",
            "inworld",
            "wyoming",
            "rest",
        ),
        default="websocket",
        help="websocket: /v1/stream clients; openai-realtime: /v1/realtime clients (OpenAI's Realtime API); "
        "deepgram: /v1/listen clients (Deepgram's live API); deepgram-flux: /v2/listen clients (Deepgram's Flux); "
        "assemblyai: /v3/ws clients (AssemblyAI's Universal-Streaming); "
        "elevenlabs: /v1/speech-to-text/realtime clients (ElevenLabs' realtime API); "
        "cartesia: /stt/websocket clients (Cartesia's streaming API); "
        "soniox: /transcribe-websocket clients (Soniox's real-time API); "
        "speechmatics: /v2 clients (Speechmatics' real-time API, in English: the fixtures' language); "
        "gladia: POST /v2/live then its WebSocket (Gladia's live API); "
        "mistral: /v1/audio/transcriptions/realtime clients (Mistral's realtime API); "
        "xai: /v1/stt clients (xAI's real-time speech-to-text API); "
        "gradium: /api/speech/asr clients (Gradium's real-time speech-to-text API); "
        "meta: /v1/asr/realtime clients (Meta's real-time speech recognition API); "
        "sarvam: /speech-to-text/ws clients (Sarvam AI's streaming speech-to-text API, no partials); "
        "zoom: /v2/aiservices/scribe/live clients (Zoom's Scribe Live API, no partials); "
        "sarvam-realtime: /speech-to-text-realtime/ws clients (Sarvam AI's realtime API, with partials); "
        "azure: /speech/recognition/conversation/cognitiveservices/v1 clients (Azure AI Speech's real-time API, USP); "
        "smallest: /waves/v1/stt/live clients (Smallest AI's Pulse real-time API); "
        "baseten: /environments/production/websocket clients (Baseten's streaming transcription API); "
        "simplismart: /ws/audio clients (Simplismart's streaming API, no partials); "
        "fireworks: /v1/audio/transcriptions/streaming clients (Fireworks AI's streaming transcription API); "
        "telnyx: /v2/speech-to-text/transcription clients (Telnyx's speech-to-text WebSocket, a WAV header first); "
        "inworld: /stt/v1/transcribe:streamBidirectional clients (Inworld's streaming speech-to-text API); "
        "wyoming: Home Assistant's flow, one command per round; rest: each client uploads one recording (the "
        "manifest's files --rounds times, with silence) to /v1/audio/transcriptions at once.",
    )
    bench.add_argument(
        "--url",
        help="Benchmark a running server (ws://HOST:PORT/v1/stream, /v1/realtime, /v1/listen, /v2/listen, /v3/ws, "
        "/v1/speech-to-text/realtime, /stt/websocket, /transcribe-websocket, /v2 or /v1/audio/transcriptions/realtime, "
        "tcp://HOST:PORT for wyoming (any Wyoming STT server works), http://HOST:PORT for rest) instead of "
        "starting one in-process.",
    )
    bench.add_argument(
        "--wyoming-end",
        choices=("endpoint", "ha-vad", "speech-end-wait"),
        default="endpoint",
        help="wyoming: wait for the server's own endpoint; ha-vad: send audio-stop where Home Assistant's "
        "pipeline would for a server that needs external VAD (its microVAD and segmenter; needs the ha-vad "
        "extra); speech-end-wait: send it --ha-wait after the true end of speech (a VAD with no lag).",
    )
    bench.add_argument(
        "--ha-wait",
        type=float,
        default=0.7,
        help="Home Assistant's silence_seconds (s): 0.7 default, 0.25 aggressive, 1.25 relaxed. ha-vad counts "
        "it on microVAD's verdicts, which lag the voice; speech-end-wait from the true end of speech.",
    )
    bench.add_argument(
        "--flooders",
        type=_at_least(0),
        default=0,
        help="websocket: extra clients sending the files as fast as the daemon takes them, beside the measured ones.",
    )
    bench.add_argument("--json", action="store_true", help="Print the full report as JSON.")
    _add_setting_flags(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(_settings_from(args))
        if args.command == "transcribe":
            return _transcribe(_settings_from(args), args.files)
        if args.command == "stream":
            return _stream(args)
        if args.command == "bench":
            return _bench(_settings_from(args), args)
    except ConfigError as exc:
        print(f"satellite-asr: configuration error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:  # transcribe and bench run the engine themselves: its error says what failed
        print(f"satellite-asr: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"satellite-asr: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before serve's own handler (start-up), or in transcribe and bench
        return 130
    except OutputClosed:  # quiet, as Unix tools are; the interpreter's last flush would fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    raise AssertionError(args.command)


def _serve(settings: Settings) -> int:
    _setup_logging(settings.log_level)
    from satellite_asr.server import Daemon

    async def run() -> int:
        daemon = Daemon(settings)
        try:  # a start that fails halfway (the Wyoming port taken) stops what it started
            await daemon.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            stopping = asyncio.create_task(stop.wait())
            failing = asyncio.create_task(daemon.core.wait_failed())
            await asyncio.wait([stopping, failing], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            failing.cancel()
            code = 0
            if failing.done():  # in the daemon's log, where a service's failure is read; exit 2 as for any setting
                error = failing.result()
                refused = isinstance(error, ConfigError)  # a setting the loaded model refuses (`language`)
                what = "configuration error" if refused else "failed to load"
                log.error("engine %s %s: %s", daemon.core.engine_info.name, what, error)
                code = 2 if refused else 1
            log.info("shutting down")
            return code
        finally:
            await daemon.stop()

    return asyncio.run(run())


def _transcribe(settings: Settings, files: list[str]) -> int:
    _setup_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    from satellite_asr.audio_files import FileRefused
    from satellite_asr.clients.transcribe import OfflineTranscriber
    from satellite_asr.recording import TranscriptionFailed

    async def run() -> int:
        unreadable = failed = 0
        async with OfflineTranscriber(settings) as transcriber:
            for path in files:
                heard = 0
                try:  # each utterance printed as it is decoded: what came before a failure is kept
                    async for final in transcriber.finals(path):
                        _print_out(f"{path}\t{final.start:.2f}\t{final.end:.2f}\t{final.text}")
                        heard += 1
                except FileRefused as exc:  # said, and the other files are still transcribed
                    print(f"satellite-asr: {exc}", file=sys.stderr, flush=True)
                    unreadable += 1
                    continue
                except TranscriptionFailed as exc:  # a decode failed (a remote server down): the same
                    print(f"satellite-asr: {path}: {exc.message}", file=sys.stderr, flush=True)
                    failed += 1
                    continue
                if not heard:  # not a line on stdout, which holds utterances only; said, so silence is not a mystery
                    print(f"satellite-asr: {path}: no speech heard", file=sys.stderr, flush=True)
        return 1 if failed else 2 if unreadable else 0

    return asyncio.run(run())


def _stream(args: argparse.Namespace) -> int:
    from satellite_asr.clients.audio_source import AudioSource, MicrophoneSource, MicrophoneUnavailable, WavSource
    from satellite_asr.clients.stream_client import StreamClosed, StreamRefused, TranscriptPrinter, stream_source

    if args.mic and args.fast:
        print("satellite-asr: --fast applies to files; a microphone delivers audio as it is spoken", file=sys.stderr)
        return 2
    if args.device is not None and not args.mic:
        print("satellite-asr: --device picks the microphone of --mic; a file is streamed without one", file=sys.stderr)
        return 2
    config: dict[str, Any] = {}
    if args.language:
        config["language"] = args.language
    if args.context:
        config["context"] = args.context
    if args.silence_ms is not None:  # 0 too: the daemon says what it takes
        config["vad"] = {"silence_ms": args.silence_ms}
    try:
        ssl_context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    except OSError as exc:  # ssl.SSLError included: a file that holds no certificate
        print(f"satellite-asr: cannot use --cafile {args.cafile}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        source: AudioSource
        if args.mic:
            device = int(args.device) if args.device and args.device.isdigit() else args.device
            source = MicrophoneSource(device)
            print(f"Listening on {source.name!r} at {source.sample_rate} Hz; Ctrl-C to finish.", file=sys.stderr)
        else:
            source = WavSource(args.file, realtime=not args.fast)
        main = asyncio.current_task()
        assert main is not None
        interrupts = 0

        def interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:
                main.cancel()
                return
            print("\nFinishing: waiting for the last transcript (Ctrl-C again to quit now).", file=sys.stderr)
            source.stop()

        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, interrupt)
        printer = TranscriptPrinter(sys.stdout, args.json)
        await stream_source(
            source, args.url, config=config, on_message=printer, ssl_context=ssl_context, api_key=args.api_key
        )
        if isinstance(source, MicrophoneSource) and source.overflows:
            print(f"warning: the microphone dropped input {source.overflows} time(s) (system busy)", file=sys.stderr)

    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        return 130
    except MicrophoneUnavailable as exc:
        print(f"satellite-asr: {exc}", file=sys.stderr)
        return 2
    except StreamClosed as exc:
        print(f"satellite-asr: {exc}", file=sys.stderr)
        return 1
    except StreamRefused as exc:
        hint = "; give the key with --api-key or SATELLITE_ASR_API_KEY" if exc.status == 401 else ""
        if exc.status == 401 and args.api_key and len(args.api_key.split()) > 1:  # "Bearer KEY"
            hint = "; give the key alone (no key holds a space): this client sends it as Authorization: Bearer KEY"
        print(f"satellite-asr: {args.url}: {exc}{hint}", file=sys.stderr)
        return 1
    except ssl.SSLCertVerificationError as exc:
        hint = "" if args.cafile else "; for a self-signed certificate, pass it with --cafile"
        print(f"satellite-asr: {args.url} is not trusted: {exc.verify_message}{hint}", file=sys.stderr)
        return 1
    except ssl.SSLError as exc:  # wss:// to a daemon without TLS: "wrong version number"
        print(f"satellite-asr: {args.url}: {tls_failure(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"satellite-asr: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0


PLAIN_ANSWER_REASONS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
"""OpenSSL's reasons for a handshake answered by plain HTTP: a daemon without TLS."""


def tls_failure(exc: OSError) -> str:
    """A TLS handshake that failed other than on the certificate, with the likely cause when
    OpenSSL's reason says plain HTTP answered (not for a cut connection: a daemon over its cap)."""
    reason = getattr(exc, "reason", None)
    said = f"the TLS handshake failed ({reason or exc})"
    if reason in PLAIN_ANSWER_REASONS:
        said += "; a daemon without tls_cert takes ws:// and http://, not wss:// or https://"
    return said


def _print_out(text: str) -> None:
    """`text` on stdout now, to a reader that may have gone (`| head` had its lines)."""
    with reader_may_leave():
        print(text, flush=True)


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    from satellite_asr.clients.rest_bench import UploadRefused
    from satellite_asr.clients.stream_client import StreamRefused, handshake_failure

    try:
        return _run_bench(settings, args)
    except (InvalidHandshake, UploadRefused, StreamRefused) as exc:
        if isinstance(exc, InvalidHandshake):
            status = exc.response.status_code if isinstance(exc, InvalidStatus) else None
            said = handshake_failure(exc)
        else:
            status, said = exc.status, str(exc)
        hint = "; give the key with --api-key, --api-key-file or SATELLITE_ASR_API_KEY" if status == 401 else ""
        print(f"satellite-asr: {args.url or 'the in-process daemon'}: {said}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        if args.url is None:  # the in-process daemon's own trouble
            raise
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLCertVerificationError):
            print(f"satellite-asr: {args.url}: {tls_failure(exc)}", file=sys.stderr)
            return 1
        print(f"satellite-asr: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


def _run_bench(settings: Settings, args: argparse.Namespace) -> int:
    _setup_logging("WARNING" if settings.log_level == "INFO" else settings.log_level)
    import json
    from dataclasses import asdict

    from satellite_asr.clients.bench import load_manifest

    manifest = Path(args.manifest) if args.manifest is not None else DEFAULT_MANIFEST
    if args.manifest is None and not manifest.exists():  # an installed wheel has no tests/
        raise ValueError(
            "bench's default manifest, tests/fixtures/fixtures.json, is in the satellite-asr checkout and not "
            "beside this installation: give one with --manifest"
        )
    files = load_manifest(manifest, args.split, args.category)
    if args.protocol == "wyoming":
        from satellite_asr.clients.wyoming_bench import one_command_files, run_wyoming_bench

        wyoming_report = asyncio.run(
            run_wyoming_bench(
                settings,
                one_command_files(files),
                clients=args.clients,
                rounds=args.rounds,
                uri=args.url,
                mode=args.wyoming_end,
                ha_wait=args.ha_wait,
            )
        )
        _print_out(json.dumps(asdict(wyoming_report), indent=2) if args.json else wyoming_report.summary())
        return 0

    from satellite_asr.clients.bench import run_bench

    if args.protocol == "rest":
        from satellite_asr.clients.rest_bench import run_rest_bench

        rest_report = asyncio.run(
            run_rest_bench(settings, files, clients=args.clients, rounds=args.rounds, url=args.url)
        )
        _print_out(json.dumps(asdict(rest_report), indent=2) if args.json else rest_report.summary())
        return 0
    report = asyncio.run(
        run_bench(
            settings,
            files,
            clients=args.clients,
            rounds=args.rounds,
            url=args.url,
            protocol=args.protocol,
            flooders=args.flooders,
        )
    )
    _print_out(json.dumps(asdict(report), indent=2) if args.json else report.summary())
    return 0
