#!/usr/bin/env node
// Greedy text generation from an exported GPT-2 in Node.js: onnxruntime-node + the course's JS tokenizer.
//
//   node generate.mjs MODEL.onnx "prompt" [--max-new-tokens N] [--threads N] [--no-eos] [--json] [--warmup N]
//
// --warmup N: N untimed generations first (for timings: the first run pays for one-off set-up).
// MODEL.onnx is what course_lib.export.to_onnx(model, path, tokenizer=...) wrote, with its sidecar
// MODEL.onnx.json and MODEL.onnx.tokenizer.json beside it. Without --json the text is streamed as it
// comes; with --json one line: {"prompt_ids", "ids", "new_ids", "text", "timings": {...}}.
import { Tokenizer, TextStream } from "../js/tokenizer.mjs";
import { greedyGenerate, rates } from "../js/models.mjs";
import { fail, loadOrt, parseArgs, readExport } from "./cli.mjs";

const usage = 'node generate.mjs MODEL.onnx "prompt" [--max-new-tokens N] [--threads N] [--no-eos] [--json] ' +
  "[--warmup N]";
const { positional, options } = parseArgs(process.argv.slice(2), {
  flags: ["json", "no-eos"], values: ["max-new-tokens", "threads", "warmup"], usage,
});
if (positional.length !== 2) {
  fail(`expected MODEL.onnx and one quoted prompt, got ${positional.length} words\nusage: ${usage}`);
}
const [modelPath, prompt] = positional;
const maxNewTokens = Number(options["max-new-tokens"] ?? 20);
if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) fail(`--max-new-tokens must be an integer >= 1`);
const threads = Number(options.threads ?? 1);
if (!Number.isInteger(threads) || threads < 0) fail(`--threads must be an integer >= 0 (0: onnxruntime picks)`);
const warmup = Number(options.warmup ?? 0);
if (!Number.isInteger(warmup) || warmup < 0) fail(`--warmup must be an integer >= 0`);

const { meta, tokenizerJSON } = readExport(modelPath, "causal-lm");
const tokenizer = Tokenizer.fromJSON(tokenizerJSON);
const ort = await loadOrt();
const session = await ort.InferenceSession.create(modelPath, {
  executionProviders: ["cpu"], graphOptimizationLevel: "all", intraOpNumThreads: threads, interOpNumThreads: 1,
});
const promptIds = tokenizer.encode(prompt).ids;
const eosTokenId = options["no-eos"] ? null : undefined; // undefined: the sidecar's end-of-text id
try {
  for (let i = 0; i < warmup; i++) await greedyGenerate(ort, session, meta, promptIds, { maxNewTokens, eosTokenId });
} catch (err) {
  fail(err.message);
}
const stream = new TextStream(tokenizer);
if (!options.json) process.stdout.write(prompt);
let result;
try {
  result = await greedyGenerate(ort, session, meta, promptIds, {
    maxNewTokens,
    eosTokenId,
    onToken: options.json ? undefined : (id) => process.stdout.write(stream.push(id)),
  });
} catch (err) {
  fail(err.message);
}
if (options.json) {
  console.log(JSON.stringify({
    prompt, prompt_ids: promptIds, ids: result.ids, new_ids: result.newIds, text: tokenizer.decode(result.ids),
    new_text: tokenizer.decode(result.newIds), timings: { ...rates(result), totalMs: result.timings.totalMs, threads },
    runtime: `onnxruntime-node ${ort.env.versions?.common ?? ""}`.trim(),
  }));
} else {
  const r = rates(result);
  process.stdout.write("\n");
  console.error(`[${r.newTokens} tokens, ${r.tokensPerSecond.toFixed(1)} tok/s whole call, ` +
    `${r.decodeTokensPerSecond?.toFixed(1) ?? "-"} tok/s decode steps, prefill ${r.prefillMs.toFixed(1)} ms]`);
}
