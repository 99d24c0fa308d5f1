// The agentmarket wire protocol in plain Node.js, written from PROTOCOL.md: keys, request
// signatures, agreements, PayWord chains and vouchers, receipt chains and the signed texts of
// finish, confirm, dispute, verdict and resolution. Node's own crypto (ed25519, SHA-256) only;
// protobufjs (the library @grpc/proto-loader is built on) encodes the messages that are signed
// or travel as bytes.
"use strict";

const crypto = require("crypto");
const path = require("path");
const protobuf = require("protobufjs");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const PROTO_FILES = ["agents/v1/agent.proto", "marketplace/v1/registry.proto",
  "marketplace/v1/agreement.proto", "marketplace/v1/settlement.proto",
  "marketplace/v1/dispute.proto", "marketplace/v1/verifier.proto", "wallets/v1/wallet.proto"];
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true,
  oneofs: true, includeDirs: [PROTOS] };
const RECEIPT_SIGN_EVERY = 16;
const GENESIS = Buffer.alloc(32);

// ---- messages encoded by hand (signed bytes and binary metadata) ---------------------------

let root = null;
function types() {
  if (root === null) {
    root = new protobuf.Root();
    root.resolvePath = (_origin, target) => path.join(PROTOS, target);
    root.loadSync(PROTO_FILES, { keepCase: true });
  }
  return root;
}
const type = (name) => types().lookupType(name);

// Drop fields holding their default value, by the field's type (proto3 encoders leave them
// out, so the bytes are the ones any other encoder makes; the receiver parses them either way).
function pruned(t, value) {
  const out = {};
  for (const field of t.fieldsArray) {
    const v = value[field.name];
    if (v === undefined || v === null) continue;
    field.resolve();
    const message = field.resolvedType instanceof protobuf.Type ? field.resolvedType : null;
    if (field.repeated) {
      if (v.length) out[field.name] = message ? v.map((item) => pruned(message, item)) : v;
    } else if (message) {
      out[field.name] = pruned(message, v);
    } else if (field.resolvedType instanceof protobuf.Enum) {
      if ((typeof v === "string" ? field.resolvedType.values[v] : v) !== 0) out[field.name] = v;
    } else if (field.type === "bytes") {
      if (v.length) out[field.name] = v;
    } else if (field.type === "string") {
      if (v !== "") out[field.name] = v;
    } else if (field.type === "bool") {
      if (v) out[field.name] = v;
    } else if (BigInt(v) !== 0n) {
      out[field.name] = v;
    }
  }
  return out;
}

function encode(name, fields) {
  const t = type(name);
  return Buffer.from(t.encode(t.fromObject(pruned(t, fields))).finish());
}

function decode(name, bytes) {
  const t = type(name);
  return t.toObject(t.decode(bytes), { longs: String, enums: String, bytes: Buffer, defaults: true });
}

// The google.rpc.ErrorInfo of a refused call (its reason and domain), from the status details
// trailer `grpc-status-details-bin`: a google.rpc.Status whose details hold it as an Any.
const RPC_TYPES = protobuf.Root.fromJSON({ nested: {
  Status: { fields: { code: { type: "int32", id: 1 }, message: { type: "string", id: 2 },
    details: { rule: "repeated", type: "Any", id: 3 } } },
  Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } },
  ErrorInfo: { fields: { reason: { type: "string", id: 1 }, domain: { type: "string", id: 2 },
    metadata: { keyType: "string", type: "string", id: 3 } } } } });

function errorInfo(metadata) {
  const [details] = metadata ? metadata.get("grpc-status-details-bin") : [];
  if (!details) return null;
  const status = RPC_TYPES.lookupType("Status").decode(details);
  const any = status.details.find((d) => d.type_url.endsWith("/google.rpc.ErrorInfo"));
  return any ? RPC_TYPES.lookupType("ErrorInfo").toObject(
    RPC_TYPES.lookupType("ErrorInfo").decode(any.value)) : null;
}

// ---- keys and signatures -------------------------------------------------------------------

const sha256 = (...parts) => crypto.createHash("sha256").update(Buffer.concat(parts.map(
  (p) => (Buffer.isBuffer(p) ? p : Buffer.from(p, "utf8"))))).digest();

function keyFromSeed(seed) {  // a 32-byte ed25519 seed (RFC 8032 private key)
  const privateKey = crypto.createPrivateKey({ format: "der", type: "pkcs8", key: Buffer.concat([
    Buffer.from("302e020100300506032b657004220420", "hex"), seed]) });
  const spki = crypto.createPublicKey(privateKey).export({ format: "der", type: "spki" });
  return { privateKey, agentId: spki.subarray(spki.length - 32).toString("hex") };
}

const newKey = () => keyFromSeed(crypto.randomBytes(32));
const sign = (key, text) => crypto.sign(null, Buffer.isBuffer(text) ? text : Buffer.from(text, "utf8"),
  key.privateKey);

function verify(agentId, text, signature) {
  const publicKey = crypto.createPublicKey({ format: "der", type: "spki", key: Buffer.concat([
    Buffer.from("302a300506032b6570032100", "hex"), Buffer.from(agentId, "hex")]) });
  return signature.length === 64 && crypto.verify(null, Buffer.isBuffer(text) ? text
    : Buffer.from(text, "utf8"), publicKey, signature);
}

// What a request's signature covers: the full method path, the hex SHA-256 of the request's
// serialized bytes, the millisecond timestamp and the nonce, joined by newlines.
const requestText = (method, body, timestampMs, nonce) =>
  `${method}\n${sha256(body).toString("hex")}\n${timestampMs}\n${nonce}`;

function signedMetadata(key, method, body, timestampMs = Date.now(),
  nonce = crypto.randomBytes(16).toString("hex")) {
  return { "agentmarket-agent": key.agentId, "agentmarket-timestamp-ms": String(timestampMs),
    "agentmarket-nonce": nonce,
    "agentmarket-signature-bin": sign(key, requestText(method, body, timestampMs, nonce)) };
}

// ---- agreements and PayWord ----------------------------------------------------------------

const agreementId = (body) => sha256(body).toString("hex");
const agreementText = (body) => Buffer.concat([Buffer.from("agreement|"), body]);

function paywordChain(length, seed = crypto.randomBytes(32)) {
  const words = [seed];  // words[length] is the seed, words[0] the root
  for (let i = 0; i < length; i++) words.push(sha256(words[words.length - 1]));
  return { seed, length, words: words.reverse() };
}

function voucher(agreement, sequence, chain, index, linkValueAtomic) {
  return encode("marketplace.v1.Voucher", { agreement_id: agreement, sequence: String(sequence),
    cumulative_atomic: (BigInt(index) * BigInt(linkValueAtomic)).toString(),
    payword_index: index, payword: chain.words[index] });
}

// Why a voucher does not prove payment under an agreement body (checked from the root, as
// the marketplace does at redeem; a seller checks from the last word it accepted instead).
function voucherProblem(v, body) {
  const index = Number(v.payword_index);
  if (index > Number(body.payword_length)) return "index past the chain";
  if (BigInt(v.cumulative_atomic) !== BigInt(index) * BigInt(body.link_value_atomic)) {
    return "cumulative is not index x link value";
  }
  let word = Buffer.from(v.payword);
  for (let i = 0; i < index; i++) word = sha256(word);
  return word.equals(Buffer.from(body.payword_root)) ? "" : "forged word";
}

// ---- receipts ------------------------------------------------------------------------------

const receiptText = (r) => `receipt|${r.agreement_id}|${r.sequence}|${r.output_sha256}|` +
  `${r.charged_atomic}|${r.units}|${r.input_tokens}|${r.output_tokens}`;
const chainText = (r) => `receipt-chain|${r.agreement_id}|${r.chain_index}|` +
  `${Buffer.from(r.chain_sha256).toString("hex")}`;

// One receipt on its own: output hash, chain digest, and the seller's signature where present.
function receiptProblem(r, sellerId) {
  if (sha256(r.output_json).toString("hex") !== r.output_sha256) return "output hash";
  if (!sha256(Buffer.from(r.previous_sha256), receiptText(r)).equals(Buffer.from(r.chain_sha256))) {
    return "chain digest";
  }
  if (r.seller_signature.length && !verify(sellerId, chainText(r), Buffer.from(r.seller_signature))) {
    return "seller signature";
  }
  return "";
}

// A whole chain 1..n: each receipt checks, links to the one before, and every 16th is signed.
function chainProblem(receipts, sellerId) {
  let previous = GENESIS;
  for (const [i, r] of receipts.entries()) {
    const problem = receiptProblem(r, sellerId);
    if (problem) return `receipt ${i + 1}: ${problem}`;
    if (Number(r.chain_index) !== i + 1) return `receipt ${i + 1}: chain position ${r.chain_index}`;
    if (!Buffer.from(r.previous_sha256).equals(previous)) return `receipt ${i + 1}: not linked`;
    if ((i + 1) % RECEIPT_SIGN_EVERY === 0 && !r.seller_signature.length) {
      return `receipt ${i + 1}: not signed`;
    }
    previous = Buffer.from(r.chain_sha256);
  }
  return "";
}

const receiptsDigest = (receipts) => sha256(...receipts.map((r) => Buffer.from(r.chain_sha256)))
  .toString("hex");
const redeemText = (agreement, v, receipts) => `redeem|${agreement}|${v.sequence}|` +
  `${v.payword_index}|${Buffer.from(v.payword).toString("hex")}|${receiptsDigest(receipts)}`;

// ---- wallet mandates ----------------------------------------------------------------------

const MANDATE_CONTEXT = Buffer.from("agentmarket.wallets.mandate.v1\0", "utf8");
const REVOKE_CONTEXT = Buffer.from("agentmarket.wallets.mandate-revoke.v1\0", "utf8");
const mandateText = (terms) => Buffer.concat([MANDATE_CONTEXT, terms]);
const mandateId = (terms) => sha256(mandateText(terms)).toString("hex");
const revokeText = (id) => Buffer.concat([REVOKE_CONTEXT, Buffer.from(id, "utf8")]);

// ---- after the calls -----------------------------------------------------------------------

const actionText = (action, ...parts) => [action, ...parts].join("|");

function evidenceDigest(evidence) {
  const hash = crypto.createHash("sha256");
  for (const e of evidence) {
    for (const part of [Buffer.from(e.kind, "utf8"), Buffer.from(e.description, "utf8"),
      Buffer.from(e.content || [])]) {
      const size = Buffer.alloc(8);
      size.writeBigUInt64BE(BigInt(part.length));
      hash.update(Buffer.concat([size, part]));
    }
  }
  return hash.digest("hex");
}

const disputeText = (agreement, reason, evidence) =>
  actionText("dispute", agreement, reason, evidenceDigest(evidence));
const verdictText = (agreement, receipts, verdicts) => `verdict|${agreement}|` +
  `${receiptsDigest(receipts)}|${verdicts.map((v) => `${v.sequence}:${v.passed ? 1 : 0}|`).join("")}`;
const resolveText = (agreement, outcomeNumber, sellerAtomic, note) =>
  actionText("resolve", agreement, String(outcomeNumber), String(sellerAtomic), note);

// What one call may charge under the terms (integers; tokens round up once per call).
function chargeAtomic(terms, { units = 0, input_tokens = 0, output_tokens = 0 } = {}) {
  const price = BigInt(terms.unit_price_atomic);
  if (terms.unit === "PRICE_UNIT_UNIT") return price * BigInt(units);
  if (terms.unit === "PRICE_UNIT_1K_TOKENS") {
    const total = BigInt(input_tokens) * price
      + BigInt(output_tokens) * BigInt(terms.output_unit_price_atomic);
    return (total + 999n) / 1000n;
  }
  return price;
}

module.exports = { PROTOS, PROTO_FILES, LOADER_OPTIONS, RECEIPT_SIGN_EVERY, GENESIS, encode,
  decode, pruned, sha256, voucherProblem, keyFromSeed, newKey, sign, verify, requestText, signedMetadata,
  agreementId, agreementText, paywordChain, voucher, receiptText, chainText, receiptProblem,
  chainProblem, receiptsDigest, redeemText, actionText, evidenceDigest, disputeText,
  verdictText, resolveText, chargeAtomic, mandateText, mandateId, revokeText, errorInfo };
