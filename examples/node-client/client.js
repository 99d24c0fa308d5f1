// A Node.js buyer that completes a paid task on an agentmarket marketplace, written from
// protos/ and PROTOCOL.md alone: it funds a wallet, discovers a seller, negotiates with a
// counter-offer, signs the agreement with a fresh PayWord chain, opens escrow, pays each call
// with a voucher, checks every receipt and the receipt chain, finishes and confirms; then it
// hires the seller's streamed skill for one InvokeStream call.
//
//     node client.js MARKETPLACE_ADDRESS [SKILL] [CALLS] [STREAMED_SKILL]
//
// SKILL takes {"text": ...} and answers {"text": ...} in upper case; STREAMED_SKILL streams
// the upper-case text (both sold by the Python seller in examples/node-client/seller.py). Prints a
// JSON summary of the task on stdout.
"use strict";

const crypto = require("crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const p = require("./protocol");

const [marketplace, skillName = "upper", callsArg = "17", streamedName = "spell"] = process.argv.slice(2);
const CALLS = Number(callsArg);
const DEADLINE_MS = 10_000;
const definitions = protoLoader.loadSync(p.PROTO_FILES, p.LOADER_OPTIONS);
const clients = new Map();
const key = p.newKey();
const me = key.agentId;

function client(address) {
  if (!clients.has(address)) {
    clients.set(address, new grpc.Client(address, grpc.credentials.createInsecure()));
  }
  return clients.get(address);
}

// The request's bytes and its metadata: signed with our key over exactly those bytes
// (PROTOCOL.md, "Request signatures"), unless `signed` is false; `extra` is more metadata (a
// paid call's voucher).
function prepare(service, method, request, { signed = true, extra = {} } = {}) {
  const rpc = definitions[service][method];
  const body = rpc.requestSerialize(request);
  const metadata = new grpc.Metadata();
  const entries = { ...(signed ? p.signedMetadata(key, rpc.path, body) : {}), ...extra };
  for (const [k, v] of Object.entries(entries)) metadata.set(k, v);
  return { rpc, body, metadata, options: { deadline: Date.now() + DEADLINE_MS } };
}

function call(address, service, method, request, how) {
  const { rpc, body, metadata, options } = prepare(service, method, request, how);
  return new Promise((resolve, reject) => {
    client(address).makeUnaryRequest(rpc.path, (bytes) => bytes, rpc.responseDeserialize, body,
      metadata, options, (error, response) => {
        if (error) {
          const info = p.errorInfo(error.metadata) || {};
          reject(Object.assign(new Error(`${method}: ${grpc.status[error.code]} ${info.reason} `
            + `${error.details}`), { code: grpc.status[error.code], reason: info.reason,
            domain: info.domain }));
        } else {
          resolve(response);
        }
      });
  });
}

// A server-streaming call: every message, and the trailing metadata.
function stream(address, service, method, request, how) {
  const { rpc, body, metadata, options } = prepare(service, method, request, how);
  const messages = [];
  return new Promise((resolve, reject) => {
    const call = client(address).makeServerStreamRequest(rpc.path, (bytes) => bytes,
      rpc.responseDeserialize, body, metadata, options);
    call.on("data", (message) => messages.push(message));
    call.on("error", (error) => reject(new Error(`${method}: ${grpc.status[error.code]} ${error.details}`)));
    call.on("status", (status) => {
      if (status.code === grpc.status.OK) resolve({ messages, trailers: status.metadata });
    });
  });
}

const market = (service, method, request) => call(marketplace, service, method, request);
const seller = (listing, method, request, how) => call(listing.endpoint, "agents.v1.AgentService",
  method, request, how);

function expect(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

// Negotiate for `quantity` calls of a skill: RFQ, the seller's offer, and (with `counterPercent`)
// our counter-offer at that share of its price and the seller's answer.
async function negotiate(listing, skill, quantity, counterPercent) {
  const listed = listing.skills.find((s) => s.name === skill).prices.find((x) => x.currency === "USD");
  const rfq = { rfq_id: crypto.randomBytes(16).toString("hex"), buyer_id: me, skill,
    expected_quantity: String(quantity), currency: "USD", max_rounds: 6,
    max_budget_atomic: (BigInt(listed.amount_atomic) * BigInt(quantity)).toString(),
    deadline_ms: String(Date.now() + 30_000), verification: "VERIFICATION_METHOD_SCHEMA" };
  let reply = await seller(listing, "Negotiate", { rfq });
  const offers = [];
  for (;;) {
    expect(reply.kind === "offer", `the seller offers (${reply.reject_reason})`);
    const offer = reply.offer;
    expect(offer.round === offers.length + 1 && offer.from_id === listing.agent_id,
      `round ${offer.round} is the seller's`);
    expect(BigInt(offer.terms.max_total_atomic) === BigInt(offer.terms.unit_price_atomic) * BigInt(quantity),
      "a per-call offer's maximum is price x quantity");
    expect(BigInt(offer.terms.unit_price_atomic) <= BigInt(listed.amount_atomic), "at most the list price");
    offers.push(offer);
    if (!counterPercent || offers.length > 1) break;
    const price = BigInt(offer.terms.unit_price_atomic) * BigInt(counterPercent) / 100n;
    const counter = { ...offer, round: offer.round + 1, from_id: me,
      expires_at_ms: String(Math.min(Number(offer.expires_at_ms), Date.now() + 30_000)),
      terms: { ...offer.terms, unit_price_atomic: price.toString(),
        max_total_atomic: (price * BigInt(quantity)).toString() } };
    offers.push(counter);
    reply = await seller(listing, "Negotiate", { offer: counter });
  }
  return { rfq, offers, listed };
}

// Accept the seller's last offer: the agreement body with a fresh PayWord chain (one word per
// call, each worth the price), signed by us, countersigned by the seller; then escrow.
async function hire(listing, rfq, offer, quantity) {
  const price = BigInt(offer.terms.unit_price_atomic);
  const chain = p.paywordChain(quantity);
  const body = p.encode("marketplace.v1.AgreementBody", { rfq_id: rfq.rfq_id, buyer_id: me,
    seller_id: listing.agent_id, seller_endpoint: listing.endpoint, terms: offer.terms,
    payword_root: chain.words[0], payword_length: quantity, link_value_atomic: price.toString(),
    created_at_ms: String(Date.now()), nonce: crypto.randomBytes(16),
    offer_expires_at_ms: offer.expires_at_ms });
  const id = p.agreementId(body);
  const reply = await seller(listing, "Negotiate", { agreement: { body,
    buyer_signature: p.sign(key, p.agreementText(body)) } });
  expect(reply.kind === "agreement", `the seller countersigns (${reply.reject_reason})`);
  expect(Buffer.from(reply.agreement.body).equals(body), "the seller signed our body unchanged");
  expect(p.verify(listing.agent_id, p.agreementText(body), Buffer.from(reply.agreement.seller_signature)),
    "the seller's signature verifies");
  const escrow = await market("marketplace.v1.SettlementService", "OpenEscrow",
    { idempotency_key: `escrow:${id}`, agreement: reply.agreement });
  expect(escrow.state === "AGREEMENT_STATE_ACTIVE", "the escrow is active");
  expect(escrow.held_atomic === offer.terms.max_total_atomic, "it holds the maximum total");
  expect(escrow.proof && escrow.proof.length > 0, "the node signs an escrow proof");
  return { id, chain, price, terms: offer.terms, receipts: [], proof: Buffer.from(escrow.proof) };
}

// Check a receipt as it arrives, and that it comes next in the agreement's chain.
function take(deal, receipt, outputJson, charged, sellerId) {
  const n = deal.receipts.length + 1;
  const previous = n === 1 ? p.GENESIS : Buffer.from(deal.receipts[n - 2].chain_sha256);
  expect(receipt.output_json === outputJson && receipt.agreement_id === deal.id, `receipt ${n} is this call's`);
  expect(BigInt(receipt.charged_atomic) === p.chargeAtomic(deal.terms) && receipt.charged_atomic === charged,
    `receipt ${n} charges the price`);
  expect(p.receiptProblem(receipt, sellerId) === "", `receipt ${n} checks`);
  expect(Number(receipt.chain_index) === n && Buffer.from(receipt.previous_sha256).equals(previous),
    `receipt ${n} follows the one before`);
  deal.receipts.push(receipt);
}

// Finish at the seller (it redeems), then confirm at the marketplace: paid now.
async function settle(listing, deal) {
  const problem = p.chainProblem(deal.receipts, listing.agent_id);
  expect(problem === "", `the receipt chain: ${problem}`);
  const finished = await seller(listing, "Finish", { agreement_id: deal.id,
    buyer_signature: p.sign(key, p.actionText("finish", deal.id)) });
  const charged = deal.receipts.reduce((sum, r) => sum + BigInt(r.charged_atomic), 0n).toString();
  expect(finished.escrow.state === "AGREEMENT_STATE_VERIFIED", `verified (${finished.escrow.state})`);
  expect(finished.escrow.earned_atomic === charged, "it earned what was charged");
  const escrow = await market("marketplace.v1.SettlementService", "Confirm", {
    idempotency_key: `confirm:${deal.id}`, agreement_id: deal.id,
    buyer_signature: p.sign(key, p.actionText("confirm", deal.id)) });
  expect(escrow.state === "AGREEMENT_STATE_SETTLED", `settled (${escrow.state})`);
  return escrow;
}

async function main() {
  const summary = { buyer: me };

  // A wallet with money in it (the currency's sandbox rail).
  const wallet = await market("wallets.v1.WalletService", "OpenAccount", {
    idempotency_key: `open:${me}:USD`, owner: me, currency: "USD", kind: "ACCOUNT_KIND_WALLET" });
  await market("wallets.v1.WalletService", "Deposit", { idempotency_key: `fund:${me}`,
    account_id: wallet.account_id, amount: { amount_atomic: "1000000000", currency: "USD" } });

  // Discovery: the cheapest live listing of the skill in USD.
  const found = await market("marketplace.v1.RegistryService", "Discover",
    { skill: skillName, currency: "USD", limit: 5 });
  expect(found.listings.length > 0, `a listing sells ${skillName}`);
  const listing = found.listings[0];
  summary.seller = listing.agent_id;

  // Negotiation with a counter-offer at 80% of the seller's first price; escrow.
  const quantity = CALLS + 3;
  const { rfq, offers, listed } = await negotiate(listing, skillName, quantity, 80);
  summary.listed_atomic = listed.amount_atomic;
  summary.offers_atomic = offers.map((o) => o.terms.unit_price_atomic);
  const deal = await hire(listing, rfq, offers[offers.length - 1], quantity);
  summary.agreement_id = deal.id;

  // Paid calls: call n reveals PayWord word n. A new word is its own proof, so the odd calls
  // go unsigned; the even ones are signed too.
  for (let n = 1; n <= CALLS; n++) {
    const text = `word ${n}`;
    const response = await seller(listing, "Invoke", { agreement_id: deal.id,
      input_json: JSON.stringify({ text }), call_id: `call-${n}` }, { signed: n % 2 === 0,
      extra: { "agentmarket-voucher-bin": p.voucher(deal.id, n, deal.chain, n, deal.price),
        // the first call hands the seller the node's escrow proof (PROTOCOL.md, section 5)
        ...(n === 1 ? { "agentmarket-escrow-proof-bin": deal.proof } : {}) } });
    expect(JSON.parse(response.output_json).text === text.toUpperCase(), `call ${n}'s answer`);
    take(deal, response.receipt, response.output_json, response.usage.charged_atomic, listing.agent_id);
  }
  // Refusals carry a status and an ErrorInfo reason, and change nothing: the last voucher
  // again (a replay), and a call with no voucher at all.
  const last = p.voucher(deal.id, CALLS, deal.chain, CALLS, deal.price);
  summary.refusals = [];
  for (const extra of [{ "agentmarket-voucher-bin": last }, {}]) {
    const refused = await seller(listing, "Invoke", { agreement_id: deal.id,
      input_json: JSON.stringify({ text: "again" }), call_id: `refused-${summary.refusals.length}` },
    { extra }).then(() => null, (error) => error);
    expect(refused && refused.domain === "agentmarket.dev", "the call is refused with an ErrorInfo");
    summary.refusals.push(`${refused.code} ${refused.reason}`);
  }
  summary.calls = deal.receipts.length;
  summary.signed_receipts = deal.receipts.filter((r) => r.seller_signature.length).map((r) => Number(r.chain_index));
  summary.charged_atomic = deal.receipts.reduce((sum, r) => sum + BigInt(r.charged_atomic), 0n).toString();
  const escrow = await settle(listing, deal);
  summary.state = escrow.state;
  summary.captured_atomic = escrow.captured_atomic;
  summary.fee_atomic = escrow.fee_atomic;
  summary.refunded_atomic = escrow.refunded_atomic;

  // A streamed call under its own agreement (the seller's offer accepted as made): text
  // pieces as they come, then the bill with the receipt for what was delivered.
  const streamed = await negotiate(listing, streamedName, 1, 0);
  const streamDeal = await hire(listing, streamed.rfq, streamed.offers[0], 1);
  const { messages, trailers } = await stream(listing.endpoint, "agents.v1.AgentService",
    "InvokeStream", { agreement_id: streamDeal.id, input_json: JSON.stringify({ text: "node" }),
      call_id: "stream-1" },
    { extra: { "agentmarket-voucher-bin": p.voucher(streamDeal.id, 1, streamDeal.chain, 1, streamDeal.price) } });
  const end = messages[messages.length - 1].end;
  const pieces = messages.slice(0, -1).map((m) => m.text_delta);
  expect(end && end.stop_reason === "STOP_REASON_COMPLETE", "the stream completes");
  expect(trailers.get("agentmarket-stop-reason")[0] === "complete", "its trailer says so");
  expect(JSON.parse(end.output_json).text === pieces.join(""), "the receipt bills what was delivered");
  take(streamDeal, end.receipt, end.output_json, end.usage.charged_atomic, listing.agent_id);
  const streamEscrow = await settle(listing, streamDeal);
  summary.stream = { pieces, captured_atomic: streamEscrow.captured_atomic };

  const balance = await market("wallets.v1.WalletService", "GetBalance", { account_id: wallet.account_id });
  summary.balance_atomic = balance.available_atomic;
  console.log(JSON.stringify(summary));
}

main().then(() => {
  for (const c of clients.values()) c.close();
}, (error) => {
  console.error(error.message);
  process.exit(1);
});
