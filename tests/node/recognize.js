// Recognizes a WAV file with Microsoft's JavaScript Speech SDK against a daemon, for
// tests/test_azure_js_sdk.py: prints one JSON object, the SDK's results as it reports them.
// Usage: node recognize.js once|twice|continuous URL KEY WAV [host|endpoint]
//   twice: recognizeOnce, then recognizeOnce again on the same recognizer
//   host:     SpeechConfig.fromHost(URL, KEY), URL the daemon's ws://HOST:PORT
//   endpoint: SpeechConfig.fromEndpoint(URL, KEY), URL a full ws:// address with its path
"use strict";
const fs = require("fs");
const sdk = require("microsoft-cognitiveservices-speech-sdk");

const [mode, url, key, wav, how = "host"] = process.argv.slice(2);
const config = how === "endpoint" ? sdk.SpeechConfig.fromEndpoint(new URL(url), key) : sdk.SpeechConfig.fromHost(new URL(url), key);
config.speechRecognitionLanguage = "en-US";
const audio = sdk.AudioConfig.fromWavFileInput(fs.readFileSync(wav));
const recognizer = new sdk.SpeechRecognizer(config, audio);

const out = { finals: [], partials: [], cancelled: [] };

// a canceled event's errorCode, or a result's CancellationDetails' ErrorCode
function cancellation(event) {
  const code = event.errorCode ?? event.ErrorCode;
  return { reason: sdk.CancellationReason[event.reason], code: sdk.CancellationErrorCode[code], details: event.errorDetails };
}

function done() {
  // the path it connected to: the query holds the key
  const connected = recognizer.properties.getProperty(sdk.PropertyId.SpeechServiceConnection_Url);
  out.path = connected ? new URL(connected).pathname : null;
  recognizer.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}

// one recognizeOnce, its result kept; `then` after it
function once(then) {
  recognizer.recognizeOnceAsync(
    (result) => {
      out.reason = sdk.ResultReason[result.reason];
      out.finals.push(result.text || "");
      if (result.reason === sdk.ResultReason.Canceled) {
        out.cancelled.push(cancellation(sdk.CancellationDetails.fromResult(result)));
      }
      then();
    },
    (error) => { out.error = String(error); done(); },
  );
}

if (mode === "once") {
  once(done);
} else if (mode === "twice") {
  once(() => once(done));
} else {
  recognizer.recognizing = (_, event) => out.partials.push(event.result.text);
  recognizer.recognized = (_, event) => { if (event.result.text) out.finals.push(event.result.text); };
  const stop = () => recognizer.stopContinuousRecognitionAsync(done, (error) => { out.error = String(error); done(); });
  // an error ends recognition without sessionStopped
  recognizer.canceled = (_, event) => {
    out.cancelled.push(cancellation(event));
    if (event.reason === sdk.CancellationReason.Error) stop();
  };
  recognizer.sessionStopped = stop;
  recognizer.startContinuousRecognitionAsync(() => {}, (error) => { out.error = String(error); done(); });
}
