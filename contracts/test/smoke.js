#!/usr/bin/env node
// Smoke test of the contracts against a running anvil, with nothing but node's built-in fetch
// and raw JSON-RPC (anvil's unlocked default accounts sign). Reads contracts/artifacts/.
//
//   node contracts/test/smoke.js [http://127.0.0.1:18600]
//
// `scripts/contracts smoke` starts a throw-away anvil and runs this against it.
// Prints one line per check and exits non-zero on the first failure.
'use strict';

const fs = require('fs');
const path = require('path');
const assert = require('assert');

const RPC = process.argv[2] || 'http://127.0.0.1:18600';
const ARTIFACTS = path.join(__dirname, '..', 'artifacts');

// ---------------------------------------------------------------- JSON-RPC

let rpcId = 0;
class RpcError extends Error {
  constructor(method, error) {
    super(`${method}: ${error.message}`);
    this.code = error.code;
    this.data = error.data;
  }
}

async function rpc(method, params = []) {
  const res = await fetch(RPC, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: ++rpcId, method, params }),
  });
  const body = await res.json();
  if (body.error) throw new RpcError(method, body.error);
  return body.result;
}

const hashCache = new Map();
async function keccak(hexData) {
  if (!hashCache.has(hexData)) hashCache.set(hexData, await rpc('web3_sha3', [hexData]));
  return hashCache.get(hexData);
}
const utf8hex = (s) => '0x' + Buffer.from(s, 'utf8').toString('hex');

// ---------------------------------------------------------------- ABI (the subset these contracts use)

const strip = (h) => (h.startsWith('0x') ? h.slice(2) : h);
const word = (hex) => strip(hex).padStart(64, '0');
const isDynamic = (t) => t === 'string' || t === 'bytes' || t.endsWith('[]');

function encodeStatic(type, v) {
  if (type === 'address') return word(v.toLowerCase());
  if (type === 'bool') return word(v ? '1' : '0');
  if (type === 'bytes32') return strip(v).padEnd(64, '0');
  if (/^uint\d*$/.test(type)) return word(BigInt(v).toString(16));
  throw new Error(`unsupported static type ${type}`);
}

function encodeDynamic(type, v) {
  if (type === 'string' || type === 'bytes') {
    const hex = type === 'string' ? Buffer.from(v, 'utf8').toString('hex') : strip(v);
    const len = hex.length / 2;
    return word(len.toString(16)) + hex.padEnd(Math.ceil(len / 32) * 64, '0');
  }
  const inner = type.slice(0, -2);
  if (isDynamic(inner)) throw new Error(`unsupported nested type ${type}`);
  return word(v.length.toString(16)) + v.map((x) => encodeStatic(inner, x)).join('');
}

function encode(types, values) {
  assert.strictEqual(types.length, values.length, 'argument count');
  let head = '';
  let tail = '';
  const headSize = 32 * types.length;
  types.forEach((t, i) => {
    if (isDynamic(t)) {
      head += word((headSize + tail.length / 2).toString(16));
      tail += encodeDynamic(t, values[i]);
    } else {
      head += encodeStatic(t, values[i]);
    }
  });
  return head + tail;
}

function decodeStatic(type, w) {
  if (type === 'address') return '0x' + w.slice(24);
  if (type === 'bool') return BigInt('0x' + w) !== 0n;
  const fixed = /^bytes(\d+)$/.exec(type);
  if (fixed) return '0x' + w.slice(0, 2 * Number(fixed[1]));
  if (/^u?int\d*$/.test(type)) return BigInt('0x' + w);
  throw new Error(`unsupported type ${type}`);
}

function decode(types, hex) {
  const d = strip(hex);
  const at = (byteOffset) => d.slice(byteOffset * 2, byteOffset * 2 + 64);
  return types.map((t, i) => {
    if (!isDynamic(t)) return decodeStatic(t, at(32 * i));
    const off = Number(BigInt('0x' + at(32 * i)));
    const len = Number(BigInt('0x' + at(off)));
    if (t === 'bytes') return '0x' + d.slice((off + 32) * 2, (off + 32 + len) * 2);
    if (t === 'string') return Buffer.from(d.slice((off + 32) * 2, (off + 32 + len) * 2), 'hex').toString('utf8');
    const inner = t.slice(0, -2);
    return Array.from({ length: len }, (_, k) => decodeStatic(inner, at(off + 32 + 32 * k)));
  });
}

const signature = (item) => `${item.name}(${item.inputs.map((i) => i.type).join(',')})`;

// ---------------------------------------------------------------- contracts

const ACCOUNT_GAS = '0x1c9c380'; // 30M: used only where a failing transaction must be mined

class Contract {
  constructor(name, address) {
    this.name = name;
    this.artifact = JSON.parse(fs.readFileSync(path.join(ARTIFACTS, `${name}.json`), 'utf8'));
    this.address = address;
  }

  item(type, name) {
    const found = this.artifact.abi.filter((x) => x.type === type && x.name === name);
    if (found.length !== 1) throw new Error(`${this.name}: ${found.length} ${type}s named ${name}`);
    return found[0];
  }

  async calldata(fn, args) {
    const f = this.item('function', fn);
    const selector = (await keccak(utf8hex(signature(f)))).slice(0, 10);
    return selector + encode(f.inputs.map((i) => i.type), args);
  }

  async call(fn, args = [], from) {
    const f = this.item('function', fn);
    const out = await rpc('eth_call', [{ from, to: this.address, data: await this.calldata(fn, args) }, 'latest']);
    const values = decode(f.outputs.map((o) => o.type), out);
    return values.length === 1 ? values[0] : values;
  }

  async send(fn, args, from, extra = {}) {
    return sendTx({ from, to: this.address, data: await this.calldata(fn, args), ...extra });
  }

  // The custom error a call reverts with: { name, args } (null when it does not revert).
  async revertOf(fn, args, from, extra = {}) {
    try {
      await rpc('eth_call', [{ from, to: this.address, data: await this.calldata(fn, args), ...extra }, 'latest']);
      return null;
    } catch (e) {
      if (!(e instanceof RpcError)) throw e;
      return decodeError(typeof e.data === 'string' ? e.data : (e.data && e.data.data) || '0x', e.message);
    }
  }

  async events(receipt) {
    const out = [];
    for (const log of receipt.logs) {
      if (log.address.toLowerCase() !== this.address.toLowerCase()) continue;
      for (const ev of this.artifact.abi.filter((x) => x.type === 'event')) {
        if ((await keccak(utf8hex(signature(ev)))) !== log.topics[0]) continue;
        const indexed = ev.inputs.filter((i) => i.indexed);
        const plain = ev.inputs.filter((i) => !i.indexed);
        const data = decode(plain.map((i) => i.type), log.data);
        const args = {};
        indexed.forEach((inp, k) => (args[inp.name] = decodeStatic(inp.type, strip(log.topics[k + 1]))));
        plain.forEach((inp, k) => (args[inp.name] = data[k]));
        out.push({ event: ev.name, args });
      }
    }
    return out;
  }
}

// Every custom error of every artifact, by selector.
const errorsBySelector = new Map();
async function loadErrors() {
  for (const f of fs.readdirSync(ARTIFACTS)) {
    const abi = JSON.parse(fs.readFileSync(path.join(ARTIFACTS, f), 'utf8')).abi;
    for (const e of abi.filter((x) => x.type === 'error')) {
      const sel = (await keccak(utf8hex(signature(e)))).slice(0, 10);
      errorsBySelector.set(sel, e);
    }
  }
}

function decodeError(data, message) {
  if (!data || data === '0x') return { name: `<no data: ${message}>`, args: [] };
  const e = errorsBySelector.get(data.slice(0, 10));
  if (!e) return { name: `<unknown ${data.slice(0, 10)}>`, args: [] };
  return { name: e.name, args: decode(e.inputs.map((i) => i.type), data.slice(10)) };
}

async function sendTx(tx) {
  const hash = await rpc('eth_sendTransaction', [tx]);
  for (let i = 0; i < 200; i++) {
    const receipt = await rpc('eth_getTransactionReceipt', [hash]);
    if (receipt) return receipt;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no receipt for ${hash}`);
}

async function deploy(name, types, args, from) {
  const c = new Contract(name, null);
  const receipt = await sendTx({ from, data: c.artifact.bytecode + encode(types, args) });
  assert.strictEqual(receipt.status, '0x1', `deploy ${name}`);
  c.address = receipt.contractAddress;
  return c;
}

// ---------------------------------------------------------------- helpers

const ZERO = '0x0000000000000000000000000000000000000000';
const ETH = 10n ** 18n;
const USD6 = 10n ** 6n;
const hex = (n) => '0x' + BigInt(n).toString(16);
const lc = (a) => a.toLowerCase();
const nativeBalance = async (a) => BigInt(await rpc('eth_getBalance', [a, 'latest']));
const code = (a) => rpc('eth_getCode', [a, 'latest']);
const salt = (s) => keccak(utf8hex(s));
const mustOk = (r, what) => assert.strictEqual(r.status, '0x1', `${what}: status ${r.status}`);

let checks = 0;
function ok(what) {
  checks++;
  console.log(`ok ${checks} - ${what}`);
}

async function expectRevert(contract, fn, args, from, errorName, extra = {}) {
  const err = await contract.revertOf(fn, args, from, extra);
  assert.ok(err, `${contract.name}.${fn} should revert with ${errorName}`);
  assert.strictEqual(err.name, errorName, `${contract.name}.${fn} reverted with ${err.name}, expected ${errorName}`);
  return err;
}

function expectEvents(events, expected, what) {
  const norm = (e) =>
    JSON.stringify({ event: e.event, args: Object.fromEntries(Object.entries(e.args).map(([k, v]) => [k, typeof v === 'string' ? lc(v) : String(v)])) });
  assert.deepStrictEqual(events.map(norm), expected.map(norm), what);
}

// ---------------------------------------------------------------- the test

async function main() {
  const chainId = BigInt(await rpc('eth_chainId'));
  const client = await rpc('web3_clientVersion');
  console.log(`# ${client}, chain id ${chainId}, ${RPC}`);
  await loadErrors();

  const [deployer, treasury, operator, creator1, creator2, payer, stranger] = await rpc('eth_accounts');

  // --- deployment
  const usdt = await deploy('TestUSDT', [], [], deployer);
  const usdc = await deploy('TestToken', ['string', 'string', 'uint8'], ['USD Coin (test)', 'USDC', 6], deployer);
  const dai = await deploy('TestToken', ['string', 'string', 'uint8'], ['Dai Stablecoin (test)', 'DAI', 18], deployer);
  const factory = await deploy('ForwarderFactory', ['address', 'address'], [deployer, treasury], deployer);
  const batcher = await deploy('PayoutBatcher', ['address'], [deployer], deployer);
  mustOk(await factory.send('setOperator', [operator, true], deployer), 'factory.setOperator');
  mustOk(await batcher.send('setOperator', [operator, true], deployer), 'batcher.setOperator');
  assert.strictEqual(await usdt.call('decimals'), 6n);
  assert.strictEqual(await usdc.call('symbol'), 'USDC');
  assert.strictEqual(await dai.call('decimals'), 18n);
  assert.strictEqual(lc(await factory.call('owner')), lc(deployer));
  assert.strictEqual(lc(await factory.call('treasury')), lc(treasury));
  assert.ok(await factory.call('isOperator', [operator]));
  assert.ok(await factory.call('isOperator', [deployer]), 'the owner is an operator');
  assert.ok(!(await factory.call('isOperator', [stranger])));
  ok('deployed TestUSDT, USDC-like and DAI-like TestTokens, ForwarderFactory, PayoutBatcher; roles set');

  const impl = await factory.call('implementation');
  const forwarderImpl = new Contract('Forwarder', impl);
  assert.notStrictEqual(await code(impl), '0x');
  assert.strictEqual(lc(await forwarderImpl.call('factory')), lc(factory.address));
  ok(`implementation ${impl} deployed by the factory, factory() = factory`);

  // --- predict: the standard EIP-1167 CREATE2 address
  const s1 = await salt('inv_smoke_0001');
  const deposit = await factory.call('predict', [s1]);
  const initCode = '0x3d602d80600a3d3981f3363d3d373d3d3d363d73' + strip(lc(impl)) + '5af43d82803e903d91602b57fd5bf3';
  assert.strictEqual(strip(initCode).length / 2, 55);
  const initHash = await keccak(initCode);
  assert.strictEqual(await factory.call('cloneCodeHash'), initHash);
  const local = '0x' + (await keccak('0xff' + strip(lc(factory.address)) + strip(s1) + strip(initHash))).slice(-40);
  assert.strictEqual(lc(deposit), local);
  assert.strictEqual(await code(deposit), '0x');
  ok(`predict(salt) = ${deposit} = keccak256(0xff ++ factory ++ salt ++ keccak256(55-byte clone code))[12:], no code yet`);

  // --- test tokens: batchTransfer emits one Transfer per recipient
  mustOk(await usdc.send('mint', [deployer, 3n * USD6], deployer), 'mint USDC to deployer');
  const rb = await usdc.send('batchTransfer', [[creator1, creator2, stranger], [1n, 2n, 3n]], deployer);
  mustOk(rb, 'batchTransfer');
  expectEvents(
    await usdc.events(rb),
    [
      { event: 'Transfer', args: { from: deployer, to: creator1, value: 1n } },
      { event: 'Transfer', args: { from: deployer, to: creator2, value: 2n } },
      { event: 'Transfer', args: { from: deployer, to: stranger, value: 3n } },
    ],
    'batchTransfer events',
  );
  const rbu = await usdt.send('batchTransfer', [[creator1], [0n]], deployer);
  mustOk(rbu, 'USDT batchTransfer');
  ok('TestToken/TestUSDT batchTransfer emits one Transfer per recipient from the sender');

  // --- payments arrive before anything is deployed
  mustOk(await usdt.send('mint', [payer, 1000n * USD6], deployer), 'mint USDT');
  mustOk(await usdc.send('mint', [payer, 1000n * USD6], deployer), 'mint USDC');
  const usdtPaid = 125_500_000n; // 125.5 USDT
  const usdcPaid = 10n * USD6;
  const nativePaid = 75n * 10n ** 16n; // 0.75
  mustOk(await usdt.send('transfer', [deposit, usdtPaid], payer), 'USDT transfer (returns nothing)');
  mustOk(await usdc.send('transfer', [deposit, usdcPaid], payer), 'USDC transfer');
  mustOk(await sendTx({ from: payer, to: deposit, value: hex(nativePaid) }), 'native payment');
  assert.strictEqual(await usdt.call('balanceOf', [deposit]), usdtPaid);
  assert.strictEqual(await nativeBalance(deposit), nativePaid);
  ok('the predicted address received 125.5 TestUSDT, 10 USDC-like and 0.75 native before deployment');

  // --- only operators sweep; only the factory flushes
  await expectRevert(factory, 'sweep', [s1, [usdt.address]], stranger, 'NotOperator');
  await expectRevert(factory, 'sweep', [s1, [usdt.address, usdt.address]], operator, 'DuplicateToken');
  await expectRevert(factory, 'sweep', [s1, [ZERO]], operator, 'InvalidToken');
  ok('sweep refuses a non-operator (NotOperator), a repeated token (DuplicateToken), the zero token (InvalidToken)');

  // --- first sweep: deploys the clone and moves everything
  const tUsdt0 = await usdt.call('balanceOf', [treasury]);
  const tUsdc0 = await usdc.call('balanceOf', [treasury]);
  const tNative0 = await nativeBalance(treasury);
  const opNative0 = await nativeBalance(operator);
  const r1 = await factory.send('sweep', [s1, [usdt.address, usdc.address, dai.address]], operator);
  mustOk(r1, 'first sweep');
  expectEvents(
    await factory.events(r1),
    [
      { event: 'ForwarderDeployed', args: { salt: s1, forwarder: deposit } },
      { event: 'Swept', args: { salt: s1, forwarder: deposit, token: usdt.address, amount: usdtPaid, treasury } },
      { event: 'Swept', args: { salt: s1, forwarder: deposit, token: usdc.address, amount: usdcPaid, treasury } },
      { event: 'Swept', args: { salt: s1, forwarder: deposit, token: ZERO, amount: nativePaid, treasury } },
    ],
    'first sweep events',
  );
  const cloneRuntime = '0x363d3d373d3d3d363d73' + strip(lc(impl)) + '5af43d82803e903d91602b57fd5bf3';
  assert.strictEqual(lc(await code(deposit)), cloneRuntime);
  assert.strictEqual(await usdt.call('balanceOf', [deposit]), 0n);
  assert.strictEqual(await usdc.call('balanceOf', [deposit]), 0n);
  assert.strictEqual(await nativeBalance(deposit), 0n);
  assert.strictEqual((await usdt.call('balanceOf', [treasury])) - tUsdt0, usdtPaid);
  assert.strictEqual((await usdc.call('balanceOf', [treasury])) - tUsdc0, usdcPaid);
  assert.strictEqual((await nativeBalance(treasury)) - tNative0, nativePaid);
  const gas1 = BigInt(r1.gasUsed) * BigInt(r1.effectiveGasPrice);
  assert.strictEqual(opNative0 - (await nativeBalance(operator)), gas1, 'the operator only pays gas');
  const clone = new Contract('Forwarder', deposit);
  assert.strictEqual(lc(await clone.call('factory')), lc(factory.address));
  ok(`sweep deployed the EIP-1167 clone (gas ${BigInt(r1.gasUsed)}), moved 125.5 USDT + 10 USDC + 0.75 native to the treasury; events ForwarderDeployed + 3x Swept (none for the empty DAI)`);

  await expectRevert(clone, 'flush', [[usdt.address], operator], operator, 'OnlyFactory');
  await expectRevert(forwarderImpl, 'flush', [[], operator], operator, 'OnlyFactory');
  ok('flush on the clone and on the implementation refuses anyone but the factory (OnlyFactory)');

  // --- second sweep of the deployed forwarder
  mustOk(await usdt.send('transfer', [deposit, 5n * USD6], payer), 'second USDT payment');
  mustOk(await sendTx({ from: payer, to: deposit, value: hex(ETH / 10n) }), 'second native payment to the deployed clone');
  const r2 = await factory.send('sweep', [s1, [usdt.address, usdc.address]], operator);
  mustOk(r2, 'second sweep');
  expectEvents(
    await factory.events(r2),
    [
      { event: 'Swept', args: { salt: s1, forwarder: deposit, token: usdt.address, amount: 5n * USD6, treasury } },
      { event: 'Swept', args: { salt: s1, forwarder: deposit, token: ZERO, amount: ETH / 10n, treasury } },
    ],
    'second sweep events',
  );
  assert.strictEqual((await usdt.call('balanceOf', [treasury])) - tUsdt0, usdtPaid + 5n * USD6);
  assert.strictEqual(await nativeBalance(deposit), 0n);
  ok(`second sweep of the deployed forwarder (gas ${BigInt(r2.gasUsed)}): no redeploy, 5 USDT + 0.1 native swept`);

  const r3 = await factory.send('sweep', [s1, [usdt.address]], operator);
  mustOk(r3, 'empty sweep');
  assert.deepStrictEqual(await factory.events(r3), []);
  ok('sweeping an empty forwarder succeeds and emits nothing');

  // --- sweepMany
  const s2 = await salt('inv_smoke_0002');
  const s3 = await salt('inv_smoke_0003');
  const d2 = await factory.call('predict', [s2]);
  const d3 = await factory.call('predict', [s3]);
  mustOk(await dai.send('mint', [d2, 3n * ETH], deployer), 'DAI to d2');
  mustOk(await sendTx({ from: payer, to: d3, value: hex(ETH / 4n) }), 'native to d3');
  const rm = await factory.send('sweepMany', [[s2, s3], [dai.address]], operator);
  mustOk(rm, 'sweepMany');
  expectEvents(
    await factory.events(rm),
    [
      { event: 'ForwarderDeployed', args: { salt: s2, forwarder: d2 } },
      { event: 'Swept', args: { salt: s2, forwarder: d2, token: dai.address, amount: 3n * ETH, treasury } },
      { event: 'ForwarderDeployed', args: { salt: s3, forwarder: d3 } },
      { event: 'Swept', args: { salt: s3, forwarder: d3, token: ZERO, amount: ETH / 4n, treasury } },
    ],
    'sweepMany events',
  );
  ok('sweepMany deployed and swept two forwarders (DAI-like and native)');

  // --- a failing token reverts the whole sweep: nothing half-swept
  const broken = await deploy('BrokenToken', ['uint8'], [1], deployer); // RETURN_FALSE
  const s4 = await salt('inv_smoke_0004');
  const d4 = await factory.call('predict', [s4]);
  mustOk(await usdt.send('transfer', [d4, 7n * USD6], payer), 'USDT to d4');
  mustOk(await broken.send('mint', [d4, 1n], deployer), 'broken token to d4');
  mustOk(await sendTx({ from: payer, to: d4, value: hex(ETH / 5n) }), 'native to d4');
  await expectRevert(factory, 'sweep', [s4, [usdt.address, broken.address]], operator, 'TokenCallFailed');
  const rf = await factory.send('sweep', [s4, [usdt.address, broken.address]], operator, { gas: ACCOUNT_GAS });
  assert.strictEqual(rf.status, '0x0');
  assert.strictEqual(await code(d4), '0x');
  assert.strictEqual(await usdt.call('balanceOf', [d4]), 7n * USD6);
  assert.strictEqual(await nativeBalance(d4), ETH / 5n);
  mustOk(await broken.send('setMode', [2], deployer), 'broken: revert mode'); // REVERT
  await expectRevert(factory, 'sweep', [s4, [usdt.address, broken.address]], operator, 'TokenCallFailed');
  await expectRevert(factory, 'sweep', [s4, [usdt.address, stranger]], operator, 'TokenCallFailed');
  mustOk(await factory.send('sweep', [s4, [usdt.address]], operator), 'sweep without the broken token');
  assert.strictEqual(await usdt.call('balanceOf', [d4]), 0n);
  ok('a token that returns false, reverts, or is not a contract reverts the whole sweep (TokenCallFailed): a mined failing sweep left USDT and native in place; sweeping without it works');

  // --- treasury and ownership
  await expectRevert(factory, 'setTreasury', [stranger], operator, 'NotOwner');
  const rt = await factory.send('setTreasury', [stranger], deployer);
  mustOk(rt, 'setTreasury');
  expectEvents(await factory.events(rt), [{ event: 'TreasuryChanged', args: { previousTreasury: treasury, newTreasury: stranger } }], 'TreasuryChanged');
  mustOk(await factory.send('setTreasury', [treasury], deployer), 'setTreasury back');
  ok('setTreasury is owner-only (NotOwner for an operator) and emits TreasuryChanged');

  // --- PayoutBatcher: funded by the treasury, called by the operator
  mustOk(await sendTx({ from: treasury, to: batcher.address, value: hex(3n * ETH) }), 'fund batcher native');
  mustOk(await usdt.send('transfer', [batcher.address, 100n * USD6], treasury), 'fund batcher USDT');
  const b1 = await salt('po_smoke_native_1');
  const b2 = await salt('po_smoke_usdt_1');
  const c1n0 = await nativeBalance(creator1);
  const c2n0 = await nativeBalance(creator2);
  const opB0 = await nativeBalance(operator);
  await expectRevert(batcher, 'payout', [b1, ZERO, [creator1, creator2], [ETH, ETH / 2n]], stranger, 'NotOperator');
  const p1 = await batcher.send('payout', [b1, ZERO, [creator1, creator2], [ETH, ETH / 2n]], operator);
  mustOk(p1, 'native payout');
  expectEvents(
    await batcher.events(p1),
    [
      { event: 'PayoutSent', args: { batchId: b1, recipient: creator1, token: ZERO, amount: ETH } },
      { event: 'PayoutSent', args: { batchId: b1, recipient: creator2, token: ZERO, amount: ETH / 2n } },
      { event: 'BatchPaid', args: { batchId: b1, token: ZERO, total: (3n * ETH) / 2n, count: 2n } },
    ],
    'native payout events',
  );
  assert.strictEqual((await nativeBalance(creator1)) - c1n0, ETH);
  assert.strictEqual((await nativeBalance(creator2)) - c2n0, ETH / 2n);
  assert.strictEqual(await nativeBalance(batcher.address), (3n * ETH) / 2n);
  assert.strictEqual(opB0 - (await nativeBalance(operator)), BigInt(p1.gasUsed) * BigInt(p1.effectiveGasPrice), 'the operator only pays gas');
  assert.ok(await batcher.call('isBatchPaid', [b1]));
  ok(`native payout of 1 + 0.5 to two creators from the batcher's balance (gas ${BigInt(p1.gasUsed)}); PayoutSent x2 + BatchPaid; the hot wallet only paid gas`);

  const p2 = await batcher.send('payout', [b2, usdt.address, [creator1, creator2], [60n * USD6, 40n * USD6]], operator);
  mustOk(p2, 'USDT payout');
  expectEvents(
    await batcher.events(p2),
    [
      { event: 'PayoutSent', args: { batchId: b2, recipient: creator1, token: usdt.address, amount: 60n * USD6 } },
      { event: 'PayoutSent', args: { batchId: b2, recipient: creator2, token: usdt.address, amount: 40n * USD6 } },
      { event: 'BatchPaid', args: { batchId: b2, token: usdt.address, total: 100n * USD6, count: 2n } },
    ],
    'USDT payout events',
  );
  assert.strictEqual(await usdt.call('balanceOf', [creator1]), 60n * USD6);
  assert.strictEqual(await usdt.call('balanceOf', [creator2]), 40n * USD6);
  assert.strictEqual(await usdt.call('balanceOf', [batcher.address]), 0n);
  ok(`TestUSDT payout (no return value) of 60 + 40 to two creators (gas ${BigInt(p2.gasUsed)}); PayoutSent x2 + BatchPaid`);

  // --- a reused batch id is refused, for any token
  const reused = await expectRevert(batcher, 'payout', [b1, ZERO, [creator1], [1n]], operator, 'BatchAlreadyPaid');
  assert.strictEqual(reused.args[0], b1);
  await expectRevert(batcher, 'payout', [b2, ZERO, [creator1], [1n]], operator, 'BatchAlreadyPaid');
  const c1n1 = await nativeBalance(creator1);
  const pr = await batcher.send('payout', [b1, ZERO, [creator1, creator2], [ETH, ETH / 2n]], operator, { gas: ACCOUNT_GAS });
  assert.strictEqual(pr.status, '0x0');
  assert.strictEqual(await nativeBalance(creator1), c1n1);
  assert.strictEqual(await nativeBalance(batcher.address), (3n * ETH) / 2n);
  ok('a reused batchId is refused with BatchAlreadyPaid(batchId) (also for another token); a mined retry reverted and paid nothing');

  // --- input checks
  const b3 = await salt('po_smoke_checks');
  await expectRevert(batcher, 'payout', [b3, ZERO, [], []], operator, 'EmptyBatch');
  await expectRevert(batcher, 'payout', [b3, ZERO, [creator1, creator2], [1n]], operator, 'LengthMismatch');
  await expectRevert(batcher, 'payout', [b3, ZERO, [creator1, ZERO], [1n, 1n]], operator, 'ZeroRecipient');
  await expectRevert(batcher, 'payout', [b3, ZERO, [creator1], [0n]], operator, 'ZeroAmount');
  await expectRevert(batcher, 'payout', [b3, ZERO, [creator1], [10n * ETH]], operator, 'InsufficientBalance');
  await expectRevert(batcher, 'payout', [b3, usdt.address, [creator1], [1n]], operator, 'InsufficientBalance');
  await expectRevert(batcher, 'payout', [b3, usdt.address, [creator1], [1n]], operator, 'UnexpectedValue', { value: '0x1' });
  const many = Array.from({ length: 501 }, () => creator1);
  await expectRevert(batcher, 'payout', [b3, ZERO, many, many.map(() => 1n)], operator, 'TooManyRecipients');
  assert.strictEqual(await batcher.call('MAX_RECIPIENTS'), 500n);
  assert.ok(!(await batcher.call('isBatchPaid', [b3])));
  ok('payout refuses empty, mismatched, zero-recipient, zero-amount, underfunded, value-with-token and 501-recipient batches');

  // --- a native payout may bring its own funds
  const b4 = await salt('po_smoke_with_value');
  const pv = await batcher.send('payout', [b4, ZERO, [creator2], [ETH / 10n]], operator, { value: hex(ETH / 10n) });
  mustOk(pv, 'payout with value');
  assert.strictEqual(await nativeBalance(batcher.address), (3n * ETH) / 2n);
  ok('a native payout funded by msg.value pays and leaves the contract balance as it was');

  // --- failing and re-entering recipients
  const reverter = await deploy('Reverter', [], [], deployer);
  const b5 = await salt('po_smoke_reverter');
  await expectRevert(batcher, 'payout', [b5, ZERO, [creator1, reverter.address], [1n, 1n]], operator, 'NativeTransferFailed');
  assert.ok(!(await batcher.call('isBatchPaid', [b5])));
  const reentrant = await deploy('ReentrantReceiver', [], [], deployer);
  mustOk(await batcher.send('setOperator', [reentrant.address, true], deployer), 'reentrant receiver made operator');
  const b6 = await salt('po_smoke_reentrant');
  const b7 = await salt('po_smoke_reentrant_inner');
  mustOk(await reentrant.send('arm', [batcher.address, b7, ETH / 10n], deployer), 'arm');
  const pe = await batcher.send('payout', [b6, ZERO, [reentrant.address], [ETH / 10n]], operator);
  mustOk(pe, 'payout to the re-entering receiver');
  assert.strictEqual(await reentrant.call('attempts'), 1n);
  assert.strictEqual(await reentrant.call('reentered'), false);
  const inner = decodeError(await reentrant.call('lastError'), '');
  assert.strictEqual(inner.name, 'Reentrancy');
  assert.ok(!(await batcher.call('isBatchPaid', [b7])));
  assert.strictEqual(await nativeBalance(reentrant.address), ETH / 10n);
  mustOk(await batcher.send('setOperator', [reentrant.address, false], deployer), 'revoke');
  ok('a recipient that refuses native coin fails the whole batch (NativeTransferFailed, id stays unpaid); re-entering payout from a recipient hits Reentrancy');

  // --- rescue
  await expectRevert(batcher, 'withdraw', [ZERO, operator, 1n], operator, 'NotOwner');
  const tn = await nativeBalance(treasury);
  const rw = await batcher.send('withdraw', [ZERO, treasury, ETH / 2n], deployer);
  mustOk(rw, 'withdraw');
  expectEvents(await batcher.events(rw), [{ event: 'Withdrawn', args: { token: ZERO, to: treasury, amount: ETH / 2n } }], 'Withdrawn');
  assert.strictEqual((await nativeBalance(treasury)) - tn, ETH / 2n);
  ok('the owner (only) can withdraw from the batcher');

  // --- ownership
  mustOk(await batcher.send('transferOwnership', [stranger], deployer), 'transferOwnership');
  assert.strictEqual(lc(await batcher.call('owner')), lc(stranger));
  await expectRevert(batcher, 'setOperator', [payer, true], deployer, 'NotOwner');
  assert.ok(await batcher.call('isOperator', [stranger]));
  ok('transferOwnership moves the owner role (and its operator right)');

  console.log(`${checks} passed, 0 failed`);
}

main().catch((e) => {
  console.error(`not ok ${checks + 1} - ${e.stack || e}`);
  console.log(`${checks} passed, 1 failed`);
  process.exit(1);
});
