// A Node.js buyer that completes a paid task on an agentmarket marketplace, written from
// protos/ and PROTOCOL.md alone: it funds a wallet, discovers a seller, negotiates with a
// counter-offer, signs the agreement with a fresh PayWord chain, opens escrow, pays each call
// with a voucher, checks every receipt and the receipt chain, finishes and confirms.
//
//     node client.js MARKETPLACE_ADDRESS [SKILL] [CALLS]
//
// The skill takes {"text": ...} and answers {"text": ...} in upper case (the Python seller in
// tests/processes/seller.py). Prints a JSON summary of the task on stdout.
"use strict";

const crypto = require("crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const p = require("./protocol");

const [marketplace, skill = "upper", callsArg = "17"] = process.argv.slice(2);
const CALLS = Number(callsArg);
const QUANTITY = CALLS + 3;
const DEADLINE_MS = 10_000;
const definitions = protoLoader.loadSync(p.PROTO_FILES, p.LOADER_OPTIONS);
const clients = new Map();

function client(address) {
  if (!clients.has(address)) {
    clients.set(address, new grpc.Client(address, grpc.credentials.createInsecure()));
  }
  return clients.get(address);
}

// One unary call, signed with the agent's key over the exact bytes sent (PROTOCOL.md,
// "Request signatures"). `extra` is more metadata (the voucher of a paid call).
function call(key, address, service, method, request, extra = {}) {
  const rpc = definitions[service][method];
  const body = rpc.requestSerialize(request);
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries({ ...p.signedMetadata(key, rpc.path, body), ...extra })) {
    metadata.set(k, v);
  }
  return new Promise((resolve, reject) => {
    client(address).makeUnaryRequest(rpc.path, (bytes) => bytes, rpc.responseDeserialize, body,
      metadata, { deadline: Date.now() + DEADLINE_MS }, (error, response) => {
        if (error) {
          reject(new Error(`${method}: ${grpc.status[error.code]} ${error.details}`));
        } else {
          resolve(response);
        }
      });
  });
}

function expect(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

async function main() {
  const key = p.newKey();
  const me = key.agentId;
  const market = (service, method, request) => call(key, marketplace, service, method, request);
  const summary = { buyer: me };

  // 1. A wallet with money in it (the currency's sandbox rail).
  const wallet = await market("wallets.v1.WalletService", "OpenAccount", {
    idempotency_key: `open:${me}:USD`, owner: me, currency: "USD", kind: "ACCOUNT_KIND_WALLET" });
  await market("wallets.v1.WalletService", "Deposit", { idempotency_key: `fund:${me}`,
    account_id: wallet.account_id, amount: { amount_atomic: "1000000000", currency: "USD" } });

  // 2. Discovery: the cheapest live listing of the skill in USD.
  const found = await market("marketplace.v1.RegistryService", "Discover",
    { skill, currency: "USD", limit: 5 });
  expect(found.listings.length > 0, `a listing sells ${skill}`);
  const listing = found.listings[0];
  const listed = listing.skills.find((s) => s.name === skill).prices.find((x) => x.currency === "USD");
  const seller = (method, request, extra) => call(key, listing.endpoint, "agents.v1.AgentService",
    method, request, extra);
  summary.seller = listing.agent_id;
  summary.listed_atomic = listed.amount_atomic;

  // 3. Negotiation: RFQ, the seller's offer, our counter-offer, the seller's answer.
  const rfq = { rfq_id: crypto.randomBytes(16).toString("hex"), buyer_id: me, skill,
    expected_quantity: String(QUANTITY), currency: "USD", max_rounds: 6,
    max_budget_atomic: (BigInt(listed.amount_atomic) * BigInt(QUANTITY)).toString(),
    deadline_ms: String(Date.now() + 30_000), verification: "VERIFICATION_METHOD_SCHEMA" };
  let reply = await seller("Negotiate", { rfq });
  expect(reply.kind === "offer", `the seller offers (${reply.reject_reason})`);
  const first = reply.offer;
  expect(first.round === 1 && first.from_id === listing.agent_id, "round 1 is the seller's");
  expect(BigInt(first.terms.max_total_atomic) === BigInt(first.terms.unit_price_atomic) * BigInt(QUANTITY),
    "a per-call offer's maximum is price x quantity");
  const counterPrice = BigInt(first.terms.unit_price_atomic) * 8n / 10n;  // 80% of the ask
  const counter = { ...first, round: 2, from_id: me,
    expires_at_ms: String(Math.min(Number(first.expires_at_ms), Date.now() + 30_000)),
    terms: { ...first.terms, unit_price_atomic: counterPrice.toString(),
      max_total_atomic: (counterPrice * BigInt(QUANTITY)).toString() } };
  reply = await seller("Negotiate", { offer: counter });
  expect(reply.kind === "offer", `the seller answers the counter-offer (${reply.reject_reason})`);
  const offer = reply.offer;
  expect(offer.round === 3 && offer.from_id === listing.agent_id, "round 3 is the seller's");
  expect(BigInt(offer.terms.unit_price_atomic) <= BigInt(first.terms.unit_price_atomic),
    "the seller does not raise its price");
  summary.offers_atomic = [first.terms.unit_price_atomic, counterPrice.toString(),
    offer.terms.unit_price_atomic];

  // 4. Acceptance: the agreement body with a fresh PayWord chain, signed by us, countersigned.
  const price = BigInt(offer.terms.unit_price_atomic);
  const chain = p.paywordChain(QUANTITY);  // one word per call, each worth the price
  const body = p.encode("marketplace.v1.AgreementBody", { rfq_id: rfq.rfq_id, buyer_id: me,
    seller_id: listing.agent_id, seller_endpoint: listing.endpoint, terms: offer.terms,
    payword_root: chain.words[0], payword_length: QUANTITY, link_value_atomic: price.toString(),
    created_at_ms: String(Date.now()), nonce: crypto.randomBytes(16),
    offer_expires_at_ms: offer.expires_at_ms });
  const agreementId = p.agreementId(body);
  reply = await seller("Negotiate", { agreement: { body,
    buyer_signature: p.sign(key, p.agreementText(body)) } });
  expect(reply.kind === "agreement", `the seller countersigns (${reply.reject_reason})`);
  const signed = reply.agreement;
  expect(Buffer.from(signed.body).equals(body), "the seller signed our body unchanged");
  expect(p.verify(listing.agent_id, p.agreementText(body), Buffer.from(signed.seller_signature)),
    "the seller's signature verifies");
  summary.agreement_id = agreementId;

  // 5. Escrow: the marketplace holds the agreement's maximum from our wallet.
  let escrow = await market("marketplace.v1.SettlementService", "OpenEscrow",
    { idempotency_key: `escrow:${agreementId}`, agreement: signed });
  expect(escrow.state === "AGREEMENT_STATE_ACTIVE", "the escrow is active");
  expect(escrow.held_atomic === offer.terms.max_total_atomic, "it holds the maximum total");

  // 6. Paid calls: call n reveals PayWord word n; every receipt is checked as it comes.
  const receipts = [];
  let previous = p.GENESIS;
  for (let n = 1; n <= CALLS; n++) {
    const text = `word ${n}`;
    const response = await seller("Invoke", { agreement_id: agreementId,
      input_json: JSON.stringify({ text }), call_id: `call-${n}` },
    { "agentmarket-voucher-bin": p.voucher(agreementId, n, chain, n, price) });
    const r = response.receipt;
    expect(JSON.parse(response.output_json).text === text.toUpperCase(), `call ${n}'s answer`);
    expect(r.output_json === response.output_json && r.agreement_id === agreementId
      && Number(r.sequence) === n, `receipt ${n} is this call's`);
    expect(BigInt(r.charged_atomic) === p.chargeAtomic(offer.terms)
      && r.charged_atomic === response.usage.charged_atomic, `receipt ${n} charges the price`);
    expect(p.receiptProblem(r, listing.agent_id) === "", `receipt ${n} checks`);
    expect(Number(r.chain_index) === n && Buffer.from(r.previous_sha256).equals(previous),
      `receipt ${n} follows receipt ${n - 1}`);
    previous = Buffer.from(r.chain_sha256);
    receipts.push(r);
  }
  const chainProblem = p.chainProblem(receipts, listing.agent_id);
  expect(chainProblem === "", `the receipt chain: ${chainProblem}`);
  summary.calls = receipts.length;
  summary.signed_receipts = receipts.filter((r) => r.seller_signature.length).map((r) => Number(r.chain_index));
  summary.charged_atomic = receipts.reduce((sum, r) => sum + BigInt(r.charged_atomic), 0n).toString();

  // 7. Finish (the seller redeems), then confirm: the seller is paid now, the rest returns.
  const finished = await seller("Finish", { agreement_id: agreementId,
    buyer_signature: p.sign(key, p.actionText("finish", agreementId)) });
  expect(finished.escrow.state === "AGREEMENT_STATE_VERIFIED", `verified (${finished.escrow.state})`);
  expect(finished.escrow.earned_atomic === summary.charged_atomic, "it earned what was charged");
  escrow = await market("marketplace.v1.SettlementService", "Confirm", {
    idempotency_key: `confirm:${agreementId}`, agreement_id: agreementId,
    buyer_signature: p.sign(key, p.actionText("confirm", agreementId)) });
  expect(escrow.state === "AGREEMENT_STATE_SETTLED", `settled (${escrow.state})`);
  const balance = await market("wallets.v1.WalletService", "GetBalance", { account_id: wallet.account_id });
  summary.state = escrow.state;
  summary.captured_atomic = escrow.captured_atomic;
  summary.fee_atomic = escrow.fee_atomic;
  summary.refunded_atomic = escrow.refunded_atomic;
  summary.balance_atomic = balance.available_atomic;
  console.log(JSON.stringify(summary));
}

main().then(() => {
  for (const c of clients.values()) c.close();
}, (error) => {
  console.error(error.message);
  process.exit(1);
});
