// The small command-line helpers the Node programs share: options, errors, reading an export.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";

// argv -> {positional, options}; "--name value" for names in `values`, "--name" for `flags`.
export function parseArgs(argv, { flags = [], values = [], usage }) {
  const positional = [];
  const options = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h" || arg === "--help") {
      console.log(`usage: ${usage}`);
      process.exit(0);
    }
    if (arg.startsWith("--")) {
      const [name, inline] = arg.slice(2).split(/=(.*)/s, 2);
      if (flags.includes(name)) options[name] = true;
      else if (values.includes(name)) {
        const value = inline ?? argv[++i];
        if (value === undefined) fail(`--${name} needs a value\nusage: ${usage}`);
        options[name] = value;
      } else fail(`unknown option --${name}\nusage: ${usage}`);
    } else {
      positional.push(arg);
    }
  }
  return { positional, options };
}

export function fail(message) {
  console.error(`error: ${message}`);
  process.exit(2);
}

// MODEL.onnx -> {meta (the sidecar), tokenizerJSON}: what course_lib.export.to_onnx wrote beside it.
export function readExport(modelPath, task) {
  if (!existsSync(modelPath)) {
    fail(`${modelPath}: no such file; export one in Python with course_lib.export.to_onnx(model, path, tokenizer=...)`);
  }
  const sidecar = `${modelPath}.json`;
  if (!existsSync(sidecar)) fail(`${sidecar} is missing: to_onnx writes it beside the graph; export again`);
  const meta = JSON.parse(readFileSync(sidecar, "utf8"));
  if (meta.format !== "course_lib.onnx/1") {
    fail(`${sidecar}: format ${meta.format}, this program reads course_lib.onnx/1: export again with to_onnx`);
  }
  if (meta.task !== task) fail(`${modelPath} is a ${meta.task} model (${meta.model_type}); this program runs ${task}`);
  if (!meta.tokenizer) {
    fail(`${modelPath} was exported without its tokenizer: pass tokenizer= to to_onnx (a tokenizer.json path)`);
  }
  const tokenizerJSON = readFileSync(join(dirname(modelPath), meta.tokenizer), "utf8");
  return { meta, tokenizerJSON };
}

// The ONNX Runtime binding, with a clear message when `npm ci` has not been run.
export async function loadOrt() {
  try {
    return await import("onnxruntime-node");
  } catch (err) {
    fail(`onnxruntime-node is not installed (${err.code ?? err.message}): run \`npm ci\` in serving/node ` +
      `(or \`make serving\` at the top of the course)`);
  }
}
