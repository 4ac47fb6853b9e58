// Chapter 11: driving the course's exported ONNX files from JavaScript, the same code for Node.js
// (onnxruntime-node) and the browser (onnxruntime-web): both packages share one API (onnxruntime-common),
// so the caller passes in whichever `ort` module it imported.
//
// What to feed is read from the sidecar <name>.onnx.json that course_lib.export.to_onnx writes (its
// format is documented in course_lib/export/onnx_export.py): input and output names, the cache's naming
// and shape, the position-ids rule, the end-of-text id. The loops mirror Python's:
//   - greedyGenerate  = course_lib.export.ort_generate_ids (prompt with an empty cache, then one token per
//                       step with the previous step's `present` as its `past`; argmax, first on a tie);
//   - embedSentences  = OnnxEncoder.embed (pad to the longest, the graph mean-pools and L2-normalises).

export const SIDECAR_FORMAT = "course_lib.onnx/1";

export function checkSidecar(meta, task, where = "the sidecar") {
  if (!meta || meta.format !== SIDECAR_FORMAT) {
    throw new Error(`${where}: format ${meta?.format}, this program reads ${SIDECAR_FORMAT}: ` +
      "export again with to_onnx");
  }
  if (meta.task !== task) throw new Error(`${where} describes a ${meta.task} model; this needs ${task}`);
  return meta;
}

function int64(ort, values, dims) {
  return new ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(v)), dims);
}

// The index of the largest value (the first one on a tie, as numpy/torch argmax).
export function argmax(values, offset = 0, length = values.length - offset) {
  let best = 0;
  let bestValue = values[offset];
  for (let i = 1; i < length; i++) {
    if (values[offset + i] > bestValue) {
      bestValue = values[offset + i];
      best = i;
    }
  }
  return best;
}

const now = () => (globalThis.performance ?? Date).now();

// Greedy decoding of one prompt with the KV cache.
//   promptIds: token ids (numbers); maxNewTokens: how many to add at most; eosTokenId: stop after it
//   (default the sidecar's; null never stops early); onToken(id, step) is awaited after every new token.
// Returns {ids (prompt + new), newIds, timings: {prefillMs, stepMs: [...], totalMs}}.
export async function greedyGenerate(ort, session, meta, promptIds, { maxNewTokens = 20, eosTokenId, onToken } = {}) {
  checkSidecar(meta, "causal-lm");
  const { num_layers: layers, num_heads: heads, head_dim: headDim, vocab_size: vocab, max_positions: maxPositions } =
    meta.config;
  if (!promptIds.length) throw new Error(`the prompt has no tokens; start from the BOS token (${meta.bos_token_id})`);
  if (promptIds.length + maxNewTokens - 1 > maxPositions) {
    throw new Error(`a prompt of ${promptIds.length} tokens + ${maxNewTokens} new tokens needs more than the model's ` +
      `${maxPositions} positions`);
  }
  const eos = eosTokenId === undefined ? meta.eos_token_id : eosTokenId;
  const names = meta.past; // {"input": "past_key_values.{layer}.{kind}", "output": "present.{layer}.{kind}", kinds}
  const cacheName = (template, layer, kind) => template.replace("{layer}", layer).replace("{kind}", kind);
  const past = {};
  for (let layer = 0; layer < layers; layer++) {
    for (const kind of names.kinds) {
      const empty = new ort.Tensor("float32", new Float32Array(0), [1, heads, 0, headDim]); // (B, H, P = 0, D)
      past[cacheName(names.input, layer, kind)] = empty;
    }
  }
  const ids = promptIds.map(Number);
  const newIds = [];
  const stepMs = [];
  let step = ids.slice(); // the prompt first, then one token at a time
  let total = 0; // tokens in the cache
  const start = now();
  let prefillMs = 0;
  for (let i = 0; i < maxNewTokens; i++) {
    const t0 = now();
    const T = step.length;
    const feeds = {
      input_ids: int64(ort, step, [1, T]),
      attention_mask: int64(ort, new Array(total + T).fill(1), [1, total + T]),
      // cumsum(mask) - 1 over the last T columns: with no padding, the positions total .. total + T - 1
      position_ids: int64(ort, Array.from({ length: T }, (_, j) => total + j), [1, T]),
      ...past,
    };
    const out = await session.run(feeds);
    const logits = out.logits.data; // (1, T, V) float32
    const next = argmax(logits, (T - 1) * vocab, vocab);
    for (let layer = 0; layer < layers; layer++) {
      for (const kind of names.kinds) {
        past[cacheName(names.input, layer, kind)] = out[cacheName(names.output, layer, kind)];
      }
    }
    total += T;
    ids.push(next);
    newIds.push(next);
    const ms = now() - t0;
    if (i === 0) prefillMs = ms;
    else stepMs.push(ms);
    if (onToken) await onToken(next, i);
    if (eos !== null && eos !== undefined && next === eos) break;
    step = [next];
  }
  return { ids, newIds, timings: { prefillMs, stepMs, totalMs: now() - start } };
}

// Tokens per second of a generation: over the whole call (prompt included), and over the one-token
// steps alone (what bench/export.py calls "decode steps").
export function rates(result) {
  const { stepMs, totalMs } = result.timings;
  const stepsTotal = stepMs.reduce((a, b) => a + b, 0);
  return {
    newTokens: result.newIds.length,
    tokensPerSecond: result.newIds.length / (totalMs / 1000),
    decodeTokensPerSecond: stepMs.length ? stepMs.length / (stepsTotal / 1000) : null,
    prefillMs: result.timings.prefillMs,
  };
}

// Sentence embeddings: sentences -> {embeddings: [Float32Array(C)], ids: [[...]], ms}. The batch is padded
// on the right to its longest sentence (attention_mask 0 there), as Python's encode_batch does.
export async function embedSentences(ort, session, meta, tokenizer, sentences, { maxLength = 256 } = {}) {
  checkSidecar(meta, "feature-extraction");
  if (!sentences.length) throw new Error("no sentences to embed");
  const t0 = now();
  const encoded = sentences.map((s) => tokenizer.encode(s, { maxLength }).ids);
  const T = Math.max(...encoded.map((ids) => ids.length));
  const B = encoded.length;
  const pad = meta.pad_token_id ?? 0;
  const ids = [];
  const mask = [];
  for (const row of encoded) {
    ids.push(...row, ...new Array(T - row.length).fill(pad));
    mask.push(...row.map(() => 1), ...new Array(T - row.length).fill(0));
  }
  const output = meta.pooling?.output ?? "sentence_embedding";
  const out = await session.run({ input_ids: int64(ort, ids, [B, T]), attention_mask: int64(ort, mask, [B, T]) });
  const flat = out[output].data; // (B, C)
  const C = flat.length / B;
  const embeddings = Array.from({ length: B }, (_, b) => flat.slice(b * C, (b + 1) * C));
  return { embeddings, ids: encoded, ms: now() - t0 };
}

// Cosine similarity of every pair: (N, N) as an array of arrays.
export function cosineMatrix(embeddings) {
  const norms = embeddings.map((e) => Math.sqrt(e.reduce((s, v) => s + v * v, 0)));
  return embeddings.map((a, i) => embeddings.map((b, j) => {
    let dot = 0;
    for (let k = 0; k < a.length; k++) dot += a[k] * b[k];
    return dot / (norms[i] * norms[j]);
  }));
}
