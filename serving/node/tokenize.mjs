#!/usr/bin/env node
// Tokenize with serving/js/tokenizer.mjs from the command line (the tests compare it with Python's).
//
//   node tokenize.mjs TOKENIZER.json "some text" ["more text" ...] [--no-special] [--max-length N]
//   echo '["text", "more"]' | node tokenize.mjs TOKENIZER.json --stdin
//
// Prints one JSON line per text: {"text", "ids", "tokens", "decoded"}; with --stdin, one JSON array.
import { readFileSync } from "node:fs";
import { Tokenizer } from "../js/tokenizer.mjs";
import { parseArgs, fail } from "./cli.mjs";

const { positional, options } = parseArgs(process.argv.slice(2), {
  flags: ["no-special", "stdin"], values: ["max-length"],
  usage: "node tokenize.mjs TOKENIZER.json TEXT... [--no-special] [--max-length N] [--stdin]",
});
if (positional.length < 1) fail("give the tokenizer.json path first");
let tokenizer;
try {
  tokenizer = Tokenizer.fromJSON(readFileSync(positional[0], "utf8"));
} catch (err) {
  fail(`${positional[0]}: ${err.message}`);
}
const texts = options.stdin ? JSON.parse(readFileSync(0, "utf8")) : positional.slice(1);
const maxLength = options["max-length"] === undefined ? null : Number(options["max-length"]);
const results = texts.map((text) => {
  const { ids, tokens } = tokenizer.encode(text, { addSpecialTokens: !options["no-special"], maxLength });
  return { text, ids, tokens, decoded: tokenizer.decode(ids) };
});
if (options.stdin) console.log(JSON.stringify(results));
else for (const r of results) console.log(JSON.stringify(r));
