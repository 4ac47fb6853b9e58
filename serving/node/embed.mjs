#!/usr/bin/env node
// Sentence embeddings from an exported encoder (all-MiniLM-L6-v2) in Node.js.
//
//   node embed.mjs MODEL.onnx "first sentence" "second" ... [--max-length N] [--threads N] [--json]
//
// Prints the cosine similarity of every pair; with --json one line:
// {"sentences", "ids", "embeddings": [[...]], "similarities": [[...]], "ms"}.
import { Tokenizer } from "../js/tokenizer.mjs";
import { cosineMatrix, embedSentences } from "../js/models.mjs";
import { fail, loadOrt, parseArgs, readExport } from "./cli.mjs";

const usage = 'node embed.mjs MODEL.onnx "sentence" ["sentence" ...] [--max-length N] [--threads N] [--json]';
const { positional, options } = parseArgs(process.argv.slice(2), {
  flags: ["json"], values: ["max-length", "threads"], usage,
});
if (positional.length < 2) fail(`expected MODEL.onnx and at least one sentence\nusage: ${usage}`);
const [modelPath, ...sentences] = positional;
const maxLength = Number(options["max-length"] ?? 256);
if (!Number.isInteger(maxLength) || maxLength < 3) fail(`--max-length must be an integer >= 3`);
const threads = Number(options.threads ?? 1);
if (!Number.isInteger(threads) || threads < 0) fail(`--threads must be an integer >= 0 (0: onnxruntime picks)`);

const { meta, tokenizerJSON } = readExport(modelPath, "feature-extraction");
const tokenizer = Tokenizer.fromJSON(tokenizerJSON);
const ort = await loadOrt();
const session = await ort.InferenceSession.create(modelPath, {
  executionProviders: ["cpu"], graphOptimizationLevel: "all", intraOpNumThreads: threads, interOpNumThreads: 1,
});
let result;
try {
  result = await embedSentences(ort, session, meta, tokenizer, sentences, { maxLength });
} catch (err) {
  fail(err.message);
}
const similarities = cosineMatrix(result.embeddings);
if (options.json) {
  console.log(JSON.stringify({
    sentences, ids: result.ids, embeddings: result.embeddings.map((e) => Array.from(e)), similarities, ms: result.ms,
  }));
} else {
  sentences.forEach((s, i) => console.log(`[${i}] ${s}`));
  console.log(`cosine similarity (${result.ms.toFixed(1)} ms for ${sentences.length} sentences):`);
  console.log("     " + sentences.map((_, j) => `[${j}]`.padStart(7)).join(""));
  similarities.forEach((row, i) => console.log(`[${i}]  ` + row.map((v) => v.toFixed(3).padStart(7)).join("")));
}
