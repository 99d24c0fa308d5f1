// Recompute the wire protocol's test vectors (tests/vectors/protocol.json) with Node.js:
//
//     node vectors.js [path/to/protocol.json]
//
// Prints {"checked": n, "failures": [...]} and exits 1 when any vector differs.
"use strict";

const fs = require("fs");
const path = require("path");
const p = require("./protocol");

const file = process.argv[2] || path.resolve(__dirname, "..", "..", "tests", "vectors", "protocol.json");
const V = JSON.parse(fs.readFileSync(file, "utf8"));
const failures = [];
let checked = 0;

function check(name, ok) {
  checked += 1;
  if (!ok) failures.push(name);
}
const hex = (b) => Buffer.from(b).toString("hex");
const unhex = (s) => Buffer.from(s, "hex");

const keys = {};
for (const [role, k] of Object.entries(V.keys)) {
  keys[role] = p.keyFromSeed(unhex(k.seed_hex));
  check(`key ${role}`, keys[role].agentId === k.agent_id);
}

// Request signature: deterministic ed25519 over the method, body digest, timestamp and nonce.
const r = V.request_signature;
const body = unhex(r.request_hex);
check("request encoding", hex(p.encode("marketplace.v1.DiscoverRequest", r.request)) === r.request_hex);
check("request text", p.requestText(r.method, body, r.timestamp_ms, r.nonce) === r.signed_text);
const metadata = p.signedMetadata(keys.buyer, r.method, body, r.timestamp_ms, r.nonce);
check("request signature", hex(metadata["agentmarket-signature-bin"]) === r.signature_hex);
check("request metadata", Object.entries(r.metadata).every(([k, v]) =>
  (Buffer.isBuffer(metadata[k]) ? hex(metadata[k]) : metadata[k]) === v));

// Negotiation messages: the same bytes from their fields.
for (const [i, m] of V.negotiation.entries()) {
  check(`negotiation ${i + 1}`, hex(p.encode("agents.v1.NegotiationMessage", m.message)) === m.message_hex);
}

// The agreement: body bytes from its fields, the id, both signatures.
const a = V.agreement;
const agreementBody = p.encode("marketplace.v1.AgreementBody", a.body);
check("agreement body", hex(agreementBody) === a.body_hex);
check("agreement id", p.agreementId(agreementBody) === a.agreement_id);
check("buyer signature", hex(p.sign(keys.buyer, p.agreementText(agreementBody))) === a.buyer_signature_hex);
check("seller signature", p.verify(keys.seller.agentId, p.agreementText(agreementBody),
  unhex(a.seller_signature_hex)));
const accepted = { agreement: { body: agreementBody, buyer_signature: unhex(a.buyer_signature_hex) } };
check("acceptance message", hex(p.encode("agents.v1.NegotiationMessage", accepted)) === a.acceptance_message_hex);

// The PayWord chain and one voucher per call.
const chain = p.paywordChain(V.payword.length, unhex(V.payword.seed_hex));
check("payword words", chain.words.map(hex).join() === V.payword.words_hex.join());
const link = a.body.link_value_atomic;
const receipts = [];
for (const [i, call] of V.calls.entries()) {
  const n = i + 1;
  check(`voucher ${n}`, hex(p.voucher(a.agreement_id, n, chain, n, link)) === call.voucher_hex);
  const receipt = p.decode("marketplace.v1.Receipt", unhex(call.receipt_hex));
  receipts.push(receipt);
  check(`receipt ${n} text`, p.receiptText(receipt) === call.receipt_text);
  check(`receipt ${n} chain text`, p.chainText(receipt) === call.chain_text);
  check(`receipt ${n}`, p.receiptProblem(receipt, keys.seller.agentId) === "");
  if (call.signed) {
    check(`receipt ${n} signature`, hex(p.sign(keys.seller, p.chainText(receipt)))
      === hex(receipt.seller_signature));
  }
  check(`receipt ${n} encoding`, hex(p.encode("marketplace.v1.Receipt", receipt)) === call.receipt_hex);
}
check("receipt chain", p.chainProblem(receipts, keys.seller.agentId) === "");

// Redeem, finish, confirm, dispute, verdict, resolution.
const last = p.decode("marketplace.v1.Voucher", unhex(V.calls[V.calls.length - 1].voucher_hex));
check("receipts digest", p.receiptsDigest(receipts) === V.redeem.receipts_digest);
check("redeem text", p.redeemText(a.agreement_id, last, receipts) === V.redeem.signed_text);
check("redeem signature", hex(p.sign(keys.seller, V.redeem.signed_text)) === V.redeem.seller_signature_hex);
for (const action of ["finish", "confirm"]) {
  const text = p.actionText(action, a.agreement_id);
  check(`${action} text`, text === V[action].signed_text);
  check(`${action} signature`, hex(p.sign(keys.buyer, text)) === V[action].buyer_signature_hex);
}
const evidence = V.dispute.evidence.map((e) => ({ kind: e.kind || "", description: e.description || "",
  content: Buffer.from(e.content || "", "base64") }));
check("evidence digest", p.evidenceDigest(evidence) === V.dispute.evidence_digest);
const disputeText = p.disputeText(a.agreement_id, V.dispute.reason, evidence);
check("dispute text", disputeText === V.dispute.signed_text);
check("dispute signature", hex(p.sign(keys.buyer, disputeText)) === V.dispute.buyer_signature_hex);
const judged = V.verdict.receipt_sequences.map((s) => receipts[s - 1]);
check("verdict digest", p.receiptsDigest(judged) === V.verdict.receipts_digest);
const verdicts = V.verdict.verdicts.map((v) => ({ sequence: v.sequence, passed: Boolean(v.passed) }));
const verdictText = p.verdictText(a.agreement_id, judged, verdicts);
check("verdict text", verdictText === V.verdict.signed_text);
check("verdict signature", hex(p.sign(keys.verifier, verdictText)) === V.verdict.verifier_signature_hex);
const resolveText = p.resolveText(a.agreement_id, V.resolve.outcome, V.resolve.seller_atomic, V.resolve.note);
check("resolve text", resolveText === V.resolve.signed_text);
check("resolve signature", hex(p.sign(keys.arbiter, resolveText)) === V.resolve.arbiter_signature_hex);

for (const [i, c] of V.charges.entries()) {
  check(`charge ${i + 1}`, p.chargeAtomic(c, c).toString() === c.charged_atomic);
}

// A wallet mandate: its terms' bytes, its id, the owner's grant and revocation signatures.
const m = V.mandate;
const terms = p.encode("wallets.v1.MandateTerms", m.terms);
check("mandate terms", hex(terms) === m.terms_hex);
check("mandate id", p.mandateId(terms) === m.mandate_id);
check("mandate signature", hex(p.sign(keys.buyer, p.mandateText(terms))) === m.owner_signature_hex);
check("mandate revocation", hex(p.sign(keys.buyer, p.revokeText(m.mandate_id))) === m.revoke_signature_hex);

// Near misses: each must be refused.
const bad = V.invalid;
check("tampered body refused", !p.verify(keys.buyer.agentId, p.agreementText(unhex(bad.agreement_body.body_hex)),
  unhex(a.buyer_signature_hex)));
const parsedBody = p.decode("marketplace.v1.AgreementBody", agreementBody);
for (const c of bad.vouchers) {
  const v = p.decode("marketplace.v1.Voucher", unhex(c.voucher_hex));
  check(`voucher refused: ${c.why}`, p.voucherProblem(v, parsedBody) === c.why);
}
for (const c of bad.receipts) {
  check(`receipt refused: ${c.why}`, p.receiptProblem(p.decode("marketplace.v1.Receipt",
    unhex(c.receipt_hex)), keys.seller.agentId) !== "");
}
check("broken chain refused", p.chainProblem(bad.chain_without_receipt_5.map((r) =>
  p.decode("marketplace.v1.Receipt", unhex(r))), keys.seller.agentId) !== "");
for (const [i, call] of V.calls.entries()) {
  check(`voucher ${i + 1} proves payment`, p.voucherProblem(p.decode("marketplace.v1.Voucher",
    unhex(call.voucher_hex)), parsedBody) === "");
}

console.log(JSON.stringify({ checked, failures }));
process.exit(failures.length ? 1 : 0);
