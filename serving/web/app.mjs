// Chapter 11's page: MiniLM sentence similarity and tiny GPT-2 generation with onnxruntime-web (WebAssembly).
//
// The models, their sidecars and tokenizer.json files come from /models/ (course_lib.serve_web exports
// them), onnxruntime-web from /ort/ (serving/web/node_modules, no CDN), the tokenizers and the loops
// from /js/ (the same files Node.js runs). What the page computes is also written into data- attributes
// as JSON, so a test (tests/test_serving_web.py) can read the numbers instead of the pixels:
//   #status[data-ready]            "1" once both models are loaded ("error" if loading failed)
//   #heatmap[data-similarities]    the (N, N) cosine similarities; data-ids: each sentence's token ids;
//                                  data-run: how many comparisons so far; data-timings: {ms, sentences}
//   #output[data-ids]              prompt + generated ids; data-prompt-ids, data-new-ids; data-done "1" at
//                                  the end; data-run; data-timings {tokensPerSecond, decodeTokensPerSecond...}
//   #output .token[data-id]        one span per generated token, added as soon as it is generated
import { TextStream, Tokenizer } from "/js/tokenizer.mjs";
import { checkSidecar, cosineMatrix, embedSentences, greedyGenerate, rates } from "/js/models.mjs";

const $ = (id) => document.getElementById(id);
const status = $("status");
const state = { ort: null, encoder: null, decoder: null, busy: false };

// Give the browser a turn (paint, input) between tokens without setTimeout's 4 ms clamp.
const channel = new MessageChannel();
const yieldToBrowser = () => new Promise((resolve) => {
  channel.port1.onmessage = () => resolve();
  channel.port2.postMessage(null);
});

async function fetchJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} — is serve-web running and the model exported?`);
  return response.json();
}

async function loadModel(ort, url, task) {
  const meta = checkSidecar(await fetchJSON(`${url}.json`), task, `${url}.json`);
  if (!meta.tokenizer) throw new Error(`${url} was exported without its tokenizer (to_onnx(..., tokenizer=...))`);
  const base = url.slice(0, url.lastIndexOf("/") + 1);
  const tokenizer = Tokenizer.fromJSON(await fetchJSON(base + meta.tokenizer));
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(url, {
    executionProviders: ["wasm"], graphOptimizationLevel: "all",
  });
  return { meta, tokenizer, session, loadMs: performance.now() - t0 };
}

async function main() {
  const config = await fetchJSON("/config.json");
  const ort = await import(`${config.ort}ort.wasm.min.mjs`);
  ort.env.wasm.wasmPaths = config.ort; // the .wasm files from this server, never a CDN
  ort.env.wasm.numThreads = 1; // threads need cross-origin isolation; one is enough for these small models
  state.ort = ort;
  [state.encoder, state.decoder] = await Promise.all([
    loadModel(ort, config.models.encoder, "feature-extraction"),
    loadModel(ort, config.models.decoder, "causal-lm"),
  ]);
  status.textContent = `Ready: all-MiniLM-L6-v2 (${state.encoder.loadMs.toFixed(0)} ms to load) and tiny GPT-2 ` +
    `(${state.decoder.loadMs.toFixed(0)} ms) in onnxruntime-web ${ort.env.versions?.web ?? ""}, WebAssembly, 1 thread.`;
  status.dataset.ready = "1";
  $("embed").disabled = false;
  $("generate").disabled = false;
}

function colour(value) {
  // -1 blue .. 0 white .. 1 red
  const v = Math.max(-1, Math.min(1, value));
  const [r, g, b] = v >= 0 ? [255, 255 - 170 * v, 255 - 170 * v] : [255 + 170 * v, 255 + 170 * v, 255];
  return `rgb(${r.toFixed(0)}, ${g.toFixed(0)}, ${b.toFixed(0)})`;
}

function drawHeatmap(sentences, similarities) {
  const table = document.createElement("table");
  table.className = "heatmap";
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th"));
  sentences.forEach((_, j) => {
    const th = document.createElement("th");
    th.textContent = `[${j}]`;
    head.appendChild(th);
  });
  const body = table.createTBody();
  similarities.forEach((row, i) => {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.textContent = `[${i}] ${sentences[i]}`;
    th.title = sentences[i];
    tr.appendChild(th);
    row.forEach((value) => {
      const td = tr.insertCell();
      td.textContent = value.toFixed(2);
      td.style.background = colour(value);
      td.title = value.toFixed(6);
    });
  });
  return table;
}

async function onEmbed() {
  const heatmap = $("heatmap");
  const sentences = $("sentences").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!sentences.length) {
    heatmap.textContent = "Type at least one sentence.";
    return;
  }
  const { meta, tokenizer, session } = state.encoder;
  const result = await embedSentences(state.ort, session, meta, tokenizer, sentences);
  const similarities = cosineMatrix(result.embeddings);
  heatmap.replaceChildren(drawHeatmap(sentences, similarities));
  $("embed-time").textContent = `${sentences.length} sentences in ${result.ms.toFixed(1)} ms ` +
    `(${(sentences.length / (result.ms / 1000)).toFixed(1)} sentences/s)`;
  heatmap.dataset.ids = JSON.stringify(result.ids);
  heatmap.dataset.timings = JSON.stringify({ ms: result.ms, sentences: sentences.length });
  heatmap.dataset.similarities = JSON.stringify(similarities);
  heatmap.dataset.run = String(Number(heatmap.dataset.run ?? 0) + 1);
}

async function onGenerate() {
  const output = $("output");
  const prompt = $("prompt").value;
  const maxNewTokens = Number($("max-new-tokens").value);
  const { meta, tokenizer, session } = state.decoder;
  const promptIds = tokenizer.encode(prompt).ids;
  output.dataset.done = "0";
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt";
  promptSpan.textContent = prompt;
  output.replaceChildren(promptSpan);
  const stream = new TextStream(tokenizer);
  const result = await greedyGenerate(state.ort, session, meta, promptIds, {
    maxNewTokens,
    eosTokenId: $("stop-at-eos").checked ? undefined : null, // undefined: the sidecar's end-of-text id
    onToken: async (id) => {
      const span = document.createElement("span");
      span.className = "token";
      span.dataset.id = String(id);
      span.textContent = stream.push(id);
      output.appendChild(span);
      await yieldToBrowser(); // let the page show it now: streamed, not all at the end
    },
  });
  const r = rates(result);
  $("generate-time").textContent = `${r.newTokens} tokens: ${r.decodeTokensPerSecond?.toFixed(1) ?? "-"} tok/s ` +
    `decode steps, prompt ${r.prefillMs.toFixed(1)} ms`;
  output.dataset.promptIds = JSON.stringify(promptIds);
  output.dataset.newIds = JSON.stringify(result.newIds);
  output.dataset.ids = JSON.stringify(result.ids);
  output.dataset.text = tokenizer.decode(result.ids);
  output.dataset.timings = JSON.stringify({ ...r, totalMs: result.timings.totalMs });
  output.dataset.run = String(Number(output.dataset.run ?? 0) + 1);
  output.dataset.done = "1";
}

// One action at a time; an error is shown on the page (and in data-error for the test), never swallowed.
function guarded(action, where) {
  return async () => {
    if (state.busy) return;
    state.busy = true;
    $("embed").disabled = $("generate").disabled = true;
    try {
      delete where.dataset.error;
      await action();
    } catch (err) {
      where.dataset.error = String(err?.message ?? err);
      const message = Object.assign(document.createElement("p"), { className: "error", textContent: String(err) });
      where.replaceChildren(message);
      console.error(err);
    } finally {
      state.busy = false;
      $("embed").disabled = $("generate").disabled = false;
    }
  };
}

$("embed").addEventListener("click", guarded(onEmbed, $("heatmap")));
$("generate").addEventListener("click", guarded(onGenerate, $("output")));
main().catch((err) => {
  status.textContent = `Could not load the models: ${err?.message ?? err}`;
  status.className = "error";
  status.dataset.ready = "error";
  console.error(err);
});
