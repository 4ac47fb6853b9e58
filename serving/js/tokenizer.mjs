// Chapter 11: the course's two tokenizers in plain JavaScript, read from a Hugging Face tokenizer.json.
//
// One ES module, no dependencies, no bundler: Node.js (`import { Tokenizer } from "../js/tokenizer.mjs"`)
// and the browser (`<script type="module">`) load the same file. It is chapter 03's Python
// (course_lib/tokenization.py) written again, so the exported models can run where Python is not:
//
//   - GPT-2's byte-level BPE: the GPT-2 regex splits the text into words, each word's UTF-8 bytes
//     become printable characters (bytes_to_unicode), then the merges are applied lowest rank first;
//   - BERT's WordPiece: BertNormalizer (clean the text, space out CJK characters, strip accents,
//     lower-case), BertPreTokenizer (split on white space, isolate punctuation), then the longest
//     vocabulary prefix first, "##" before a piece inside a word, [UNK] for a word it cannot cover.
//
// Added tokens (<|endoftext|>, [CLS], [MASK]...) are cut out of the text before anything else, as
// the `tokenizers` library does; the post-processor adds [CLS] ... [SEP]. Token ids equal the
// Python `tokenizers` library's: tests/test_serving_node.py checks them on a set of hard strings.
//
// Usage:
//   const tok = Tokenizer.fromJSON(JSON.parse(text));   // or await Tokenizer.fromURL(url) in a browser
//   tok.encode("Hello world").ids                       // [CLS] and [SEP] added for BERT
//   tok.encode("Hello", { addSpecialTokens: false, maxLength: 256 })
//   tok.decode(ids)                                     // skips special tokens, as Python's decode

const WHITESPACE = /\p{White_Space}/u; // Rust's char::is_whitespace (JavaScript's \s also matches U+FEFF)
const CONTROL = /\p{C}/u; // Cc Cf Cs Co Cn: the `tokenizers` BertNormalizer's is_control
const NONSPACING_MARK = /\p{Mn}/gu;
const PUNCTUATION = /\p{P}/u;
const ASCII_PUNCTUATION = /[!-/:-@[-`{-~]/;

// GPT-2's pre-tokenizer regex, as the `tokenizers` ByteLevel pre-tokenizer writes it. Oniguruma's \s
// (Unicode) is the White_Space property, so it is spelt out here as \p{White_Space}.
const GPT2_PATTERN = new RegExp(
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\p{White_Space}\\p{L}\\p{N}]+" +
  "|\\p{White_Space}+(?!\\P{White_Space})|\\p{White_Space}+", "gu");

export class TokenizerError extends Error {}

// ------------------------------------------------------------------------------------------
// Byte-level: every byte 0..255 as a printable character (GPT-2's bytes_to_unicode)

function bytesToUnicode() {
  const printable = [];
  for (let b = 33; b <= 126; b++) printable.push(b); // '!'..'~'
  for (let b = 161; b <= 172; b++) printable.push(b); // '¡'..'¬'
  for (let b = 174; b <= 255; b++) printable.push(b); // '®'..'ÿ'
  const byteToChar = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    // a printable byte stands for itself; the others take the next free code points from 256 on
    byteToChar[b] = String.fromCodePoint(printable.includes(b) ? b : next++);
  }
  const charToByte = new Map(byteToChar.map((c, b) => [c, b]));
  return { byteToChar, charToByte };
}

const { byteToChar: BYTE_TO_CHAR, charToByte: CHAR_TO_BYTE } = bytesToUnicode();
const UTF8 = new TextEncoder();

function byteLevel(text) {
  let out = "";
  for (const b of UTF8.encode(text)) out += BYTE_TO_CHAR[b];
  return out;
}

// ------------------------------------------------------------------------------------------
// Models: BPE and WordPiece, each word -> ids

class BPE {
  constructor(model) {
    this.vocab = new Map(Object.entries(model.vocab));
    this.ranks = new Map();
    model.merges.forEach((merge, rank) => {
      // tokenizer.json writes a merge as ["a", "b"] (newer) or "a b" (older)
      const [a, b] = Array.isArray(merge) ? merge : merge.split(" ");
      this.ranks.set(`${a} ${b}`, rank);
    });
    this.unk = model.unk_token ?? null;
    if (model.continuing_subword_prefix || model.end_of_word_suffix) {
      throw new TokenizerError("BPE with a continuing_subword_prefix or end_of_word_suffix is not supported by " +
        "serving/js/tokenizer.mjs (GPT-2's byte-level BPE has neither)");
    }
    if (model.dropout) {
      throw new TokenizerError("BPE dropout is a training-time setting: export the tokenizer without it");
    }
    this.cache = new Map();
  }

  // One pre-tokenized word (already byte-level characters) -> token strings.
  // Repeatedly merge the adjacent pair with the lowest rank, every occurrence left to right.
  word(word) {
    const cached = this.cache.get(word);
    if (cached) return cached;
    let symbols = Array.from(word); // one symbol per character to start with
    while (symbols.length > 1) {
      let best = null;
      let bestRank = Infinity;
      for (let i = 0; i < symbols.length - 1; i++) {
        const rank = this.ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = [symbols[i], symbols[i + 1]];
        }
      }
      if (best === null) break;
      const merged = [];
      for (let i = 0; i < symbols.length; i++) {
        if (i < symbols.length - 1 && symbols[i] === best[0] && symbols[i + 1] === best[1]) {
          merged.push(best[0] + best[1]);
          i++;
        } else {
          merged.push(symbols[i]);
        }
      }
      symbols = merged;
    }
    const tokens = [];
    for (const s of symbols) {
      if (this.vocab.has(s)) tokens.push(s);
      else if (this.unk !== null) tokens.push(this.unk); // no unk token: the `tokenizers` library drops it
    }
    if (this.cache.size < 100000) this.cache.set(word, tokens);
    return tokens;
  }
}

class WordPiece {
  constructor(model) {
    this.vocab = new Map(Object.entries(model.vocab));
    this.unk = model.unk_token;
    this.prefix = model.continuing_subword_prefix ?? "##";
    this.maxChars = model.max_input_chars_per_word ?? 100;
    if (!this.vocab.has(this.unk)) {
      throw new TokenizerError(`WordPiece: unk_token ${this.unk} is not in the vocabulary`);
    }
  }

  // One word -> token strings: the longest prefix in the vocabulary, then the longest "##" piece after it...
  word(word) {
    const chars = Array.from(word); // code points, as Rust's chars
    if (chars.length > this.maxChars) return [this.unk];
    const tokens = [];
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let found = null;
      while (start < end) {
        const piece = (start > 0 ? this.prefix : "") + chars.slice(start, end).join("");
        if (this.vocab.has(piece)) {
          found = piece;
          break;
        }
        end--;
      }
      if (found === null) return [this.unk]; // one piece missing: the whole word is unknown
      tokens.push(found);
      start = end;
    }
    return tokens;
  }
}

// ------------------------------------------------------------------------------------------
// Normalizers and pre-tokenizers (the kinds these two tokenizers use)

function isChineseChar(cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

function bertNormalizer(config) {
  const stripAccents = config.strip_accents ?? config.lowercase; // null: follows lowercase, as in `tokenizers`
  return (text) => {
    let out = "";
    for (const c of text) {
      const cp = c.codePointAt(0);
      if (config.clean_text) {
        // first drop NUL, U+FFFD and control characters (tab, newline and return are not), then white space -> " "
        const tabOrNewline = c === "\t" || c === "\n" || c === "\r";
        if (cp === 0 || cp === 0xfffd || (CONTROL.test(c) && !tabOrNewline)) continue;
        if (tabOrNewline || WHITESPACE.test(c)) {
          out += " ";
          continue;
        }
      }
      out += config.handle_chinese_chars && isChineseChar(cp) ? ` ${c} ` : c;
    }
    if (stripAccents) out = out.normalize("NFD").replace(NONSPACING_MARK, "");
    // character by character, as Rust's char::to_lowercase (no final-sigma rule, unlike String.toLowerCase)
    if (config.lowercase) out = Array.from(out, (c) => c.toLowerCase()).join("");
    return out;
  };
}

function makeNormalizer(config) {
  if (!config) return (text) => text;
  switch (config.type) {
    case "BertNormalizer":
      return bertNormalizer(config);
    case "Lowercase":
      return (text) => Array.from(text, (c) => c.toLowerCase()).join("");
    case "NFD":
    case "NFC":
    case "NFKD":
    case "NFKC":
      return (text) => text.normalize(config.type);
    case "StripAccents":
      return (text) => text.replace(NONSPACING_MARK, "");
    case "Sequence": {
      const steps = config.normalizers.map(makeNormalizer);
      return (text) => steps.reduce((t, step) => step(t), text);
    }
    default:
      throw new TokenizerError(`normalizer ${config.type} is not supported by serving/js/tokenizer.mjs ` +
        `(it reads GPT-2's and BERT's tokenizer.json)`);
  }
}

function isBertPunctuation(c) {
  return ASCII_PUNCTUATION.test(c) || PUNCTUATION.test(c);
}

function bertPreTokenize(text) {
  const words = [];
  let word = "";
  for (const c of text) {
    if (WHITESPACE.test(c)) {
      if (word) words.push(word);
      word = "";
    } else if (isBertPunctuation(c)) {
      if (word) words.push(word);
      words.push(c);
      word = "";
    } else {
      word += c;
    }
  }
  if (word) words.push(word);
  return words;
}

function makePreTokenizer(config) {
  if (!config) return (text) => [text];
  switch (config.type) {
    case "BertPreTokenizer":
      return bertPreTokenize;
    case "ByteLevel":
      return (text) => {
        if (config.add_prefix_space && !text.startsWith(" ")) text = " " + text;
        const words = config.use_regex === false ? [text] : text.match(GPT2_PATTERN) ?? [];
        return words.map(byteLevel);
      };
    case "WhitespaceSplit":
      return (text) => text.split(/\p{White_Space}+/u).filter(Boolean);
    case "Sequence": {
      const steps = config.pretokenizers.map(makePreTokenizer);
      return (text) => steps.reduce((words, step) => words.flatMap(step), [text]);
    }
    default:
      throw new TokenizerError(`pre_tokenizer ${config.type} is not supported by serving/js/tokenizer.mjs`);
  }
}

// The special tokens the post-processor puts around one sequence: {before: [ids], after: [ids]}.
function makePostProcessor(config, tokenToId) {
  const none = { before: [], after: [] };
  if (!config) return none;
  const idOf = (token) => {
    const id = tokenToId(token);
    if (id === undefined) throw new TokenizerError(`post_processor names ${token}, which is not in the vocabulary`);
    return id;
  };
  switch (config.type) {
    case "ByteLevel":
      return none; // only offsets change
    case "BertProcessing":
    case "RobertaProcessing":
      return { before: [config.cls[1]], after: [config.sep[1]] };
    case "TemplateProcessing": {
      const out = { before: [], after: [] };
      let seen = false;
      for (const piece of config.single) {
        if (piece.Sequence) {
          seen = true;
        } else {
          const special = config.special_tokens[piece.SpecialToken.id];
          const ids = special ? special.ids : [idOf(piece.SpecialToken.id)];
          (seen ? out.after : out.before).push(...ids);
        }
      }
      return out;
    }
    case "Sequence": {
      const parts = config.processors.map((p) => makePostProcessor(p, tokenToId));
      return { before: parts.flatMap((p) => p.before), after: parts.flatMap((p) => p.after) };
    }
    default:
      throw new TokenizerError(`post_processor ${config.type} is not supported by serving/js/tokenizer.mjs`);
  }
}

// ------------------------------------------------------------------------------------------
// The tokenizer

export class Tokenizer {
  constructor(json) {
    if (!json || typeof json !== "object" || !json.model) {
      throw new TokenizerError("not a tokenizer.json: expected an object with a \"model\" entry");
    }
    const type = json.model.type ?? (json.model.merges ? "BPE" : "WordPiece");
    if (type === "BPE") this.model = new BPE(json.model);
    else if (type === "WordPiece") this.model = new WordPiece(json.model);
    else {
      throw new TokenizerError(`model type ${type} is not supported: serving/js/tokenizer.mjs reads BPE and WordPiece`);
    }
    this.type = type;
    this.vocab = this.model.vocab; // token -> id
    this.added = (json.added_tokens ?? []).slice();
    for (const t of this.added) this.vocab.set(t.content, t.id);
    this.idToToken = new Map([...this.vocab].map(([token, id]) => [id, token]));
    this.special = new Set(this.added.filter((t) => t.special).map((t) => t.id));
    this.normalize = makeNormalizer(json.normalizer);
    this.preTokenize = makePreTokenizer(json.pre_tokenizer);
    this.post = makePostProcessor(json.post_processor, (token) => this.vocab.get(token));
    this.decoder = json.decoder ?? null;
    this.truncation = json.truncation ?? null;
  }

  static fromJSON(json) {
    return new Tokenizer(typeof json === "string" ? JSON.parse(json) : json);
  }

  static async fromURL(url) {
    const response = await fetch(url);
    if (!response.ok) throw new TokenizerError(`${url}: HTTP ${response.status}`);
    return new Tokenizer(await response.json());
  }

  tokenToId(token) {
    return this.vocab.get(token);
  }

  idToTokenString(id) {
    return this.idToToken.get(id);
  }

  // The text cut at the added tokens: [{text, added: token or null}], leftmost match first, longest on a tie.
  // Tokens with normalized=false are matched in the raw text, the others after normalization.
  splitAdded(text, normalizedPass) {
    const tokens = this.added.filter((t) => Boolean(t.normalized) === normalizedPass);
    const pieces = [];
    let start = 0; // where the current plain text begins
    let i = 0;
    while (i < text.length && tokens.length) {
      let best = null;
      for (const t of tokens) {
        if (text.startsWith(t.content, i) && (!best || t.content.length > best.content.length)) {
          if (t.single_word && !this.isWordBoundary(text, i, i + t.content.length)) continue;
          best = t;
        }
      }
      if (!best) {
        i++;
        continue;
      }
      let from = i;
      let to = i + best.content.length;
      if (best.lstrip) while (from > start && WHITESPACE.test(text[from - 1])) from--;
      if (best.rstrip) while (to < text.length && WHITESPACE.test(text[to])) to++;
      if (from > start) pieces.push({ text: text.slice(start, from), added: null });
      pieces.push({ text: best.content, added: best });
      start = i = to;
    }
    if (start < text.length) pieces.push({ text: text.slice(start), added: null });
    return pieces;
  }

  isWordBoundary(text, from, to) {
    const word = /[\p{L}\p{N}_]/u;
    return !(from > 0 && word.test(text[from - 1])) && !(to < text.length && word.test(text[to]));
  }

  // text -> {ids, tokens}. addSpecialTokens: the post-processor's [CLS]/[SEP]; maxLength: truncate
  // (special tokens included and kept), default none.
  encode(text, { addSpecialTokens = true, maxLength = null } = {}) {
    if (typeof text !== "string") throw new TokenizerError(`encode takes a string, got ${typeof text}`);
    const tokens = [];
    for (const raw of this.splitAdded(text, false)) {
      if (raw.added) {
        tokens.push(raw.added.content);
        continue;
      }
      for (const piece of this.splitAdded(this.normalize(raw.text), true)) {
        if (piece.added) tokens.push(piece.added.content);
        else for (const word of this.preTokenize(piece.text)) tokens.push(...this.model.word(word));
      }
    }
    let ids = tokens.map((t) => this.vocab.get(t));
    const before = addSpecialTokens ? this.post.before : [];
    const after = addSpecialTokens ? this.post.after : [];
    if (maxLength !== null && maxLength !== undefined) {
      const room = maxLength - before.length - after.length;
      if (room < 1) {
        throw new TokenizerError(`maxLength ${maxLength} leaves no room for text next to the special tokens`);
      }
      ids = ids.slice(0, room);
    }
    ids = [...before, ...ids, ...after];
    return { ids, tokens: ids.map((id) => this.idToToken.get(id)) };
  }

  // ids -> text, special tokens left out (the `tokenizers` library's decode(ids) default)
  decode(ids, { skipSpecialTokens = true } = {}) {
    const tokens = [];
    for (const id of ids) {
      const n = Number(id);
      if (skipSpecialTokens && this.special.has(n)) continue;
      const token = this.idToToken.get(n);
      if (token !== undefined) tokens.push(token);
    }
    return this.decodeTokens(tokens);
  }

  decodeTokens(tokens) {
    const type = this.decoder?.type;
    if (type === "ByteLevel") {
      const bytes = [];
      for (const token of tokens) {
        for (const c of token) {
          const b = CHAR_TO_BYTE.get(c);
          if (b === undefined) bytes.push(...UTF8.encode(c)); // an added token's plain text
          else bytes.push(b);
        }
      }
      return new TextDecoder("utf-8").decode(new Uint8Array(bytes)); // invalid bytes -> U+FFFD, as from_utf8_lossy
    }
    if (type === "WordPiece") {
      // token by token, as the `tokenizers` library's decode_chain: "##" glues a piece to the one before, any
      // other token gets a space before it, and the cleanup (" ." -> ".", ...) sees one token at a time
      const prefix = this.decoder.prefix ?? "##";
      const cleanup = this.decoder.cleanup ?? true;
      return tokens.map((t, i) => {
        if (i > 0) t = t.startsWith(prefix) ? t.replace(prefix, "") : " " + t;
        return cleanup ? cleanupPiece(t) : t;
      }).join("");
    }
    return tokens.join(" ");
  }
}

function cleanupPiece(text) {
  const pairs = [[" .", "."], [" ?", "?"], [" !", "!"], [" ,", ","], [" ' ", "'"], [" n't", "n't"], [" 'm", "'m"],
    [" do not", " don't"], [" 's", "'s"], [" 've", "'ve"], [" 're", "'re"]];
  return pairs.reduce((t, [from, to]) => t.split(from).join(to), text);
}

// A streamed decoder: feed ids one at a time, get the new text each time (a multi-byte character
// split over two tokens waits for its second half instead of printing U+FFFD).
export class TextStream {
  constructor(tokenizer) {
    this.tokenizer = tokenizer;
    this.ids = [];
    this.emitted = "";
  }

  push(id) {
    this.ids.push(Number(id));
    const text = this.tokenizer.decode(this.ids);
    if (text.endsWith("\ufffd")) return "";
    const piece = text.startsWith(this.emitted) ? text.slice(this.emitted.length) : text;
    this.emitted = text;
    return piece;
  }
}
