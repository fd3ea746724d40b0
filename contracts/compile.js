#!/usr/bin/env node
// Compiles every Solidity source under contracts/src with the pinned solc-js and writes one
// artifact per contract to contracts/artifacts/<ContractName>.json:
//
//   { "contractName", "abi", "bytecode": "0x…", "deployedBytecode": "0x…", "compiler" }
//
// The output depends only on the sources and the settings below (no metadata hash, no CBOR
// trailer, fixed JSON formatting), so compiling twice gives byte-identical files.
//
//   node contracts/compile.js [--solc <node_modules dir>]           write the artifacts
//   node contracts/compile.js [--solc <node_modules dir>] --check   compare, write nothing;
//                                                                   exit 1 listing what differs
//
// solc is resolved from --solc <dir> (the directory that contains solc/), else via NODE_PATH.
'use strict';

const fs = require('fs');
const path = require('path');

const COMPILER_VERSION = '0.8.37';
const CONTRACTS_DIR = __dirname;
const SRC_DIR = path.join(CONTRACTS_DIR, 'src');
const ARTIFACTS_DIR = path.join(CONTRACTS_DIR, 'artifacts');

const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  metadata: { bytecodeHash: 'none', appendCBOR: false },
  outputSelection: {
    '*': { '': ['ast'], '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] },
  },
};

function usage(code) {
  process.stderr.write('usage: node contracts/compile.js [--solc <node_modules dir>] [--check]\n');
  process.exit(code);
}

function parseArgs(argv) {
  const opts = { check: false, solcDir: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--check') opts.check = true;
    else if (a === '--solc') {
      if (i + 1 >= argv.length) usage(2);
      opts.solcDir = argv[++i];
    } else if (a.startsWith('--solc=')) opts.solcDir = a.slice('--solc='.length);
    else if (a === '-h' || a === '--help') usage(0);
    else {
      process.stderr.write(`compile.js: unknown argument ${a}\n`);
      usage(2);
    }
  }
  return opts;
}

function loadSolc(solcDir) {
  let solc;
  try {
    solc = solcDir ? require(path.resolve(solcDir, 'solc')) : require('solc');
  } catch (e) {
    process.stderr.write(
      `compile.js: cannot load solc (${e.message.split('\n')[0]}); ` +
        'run scripts/tools and pass --solc "$(scripts/tools solc-dir)" or set NODE_PATH\n',
    );
    process.exit(2);
  }
  const version = solc.version();
  if (!version.startsWith(COMPILER_VERSION + '+')) {
    process.stderr.write(`compile.js: solc ${version} found, ${COMPILER_VERSION} required\n`);
    process.exit(2);
  }
  return solc;
}

// Every .sol file under dir, as '/'-separated paths relative to CONTRACTS_DIR, sorted.
function findSources(dir) {
  const out = [];
  const walk = (d) => {
    for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) walk(p);
      else if (entry.isFile() && entry.name.endsWith('.sol')) {
        out.push(path.relative(CONTRACTS_DIR, p).split(path.sep).join('/'));
      }
    }
  };
  walk(dir);
  return out.sort();
}

function compile(solc) {
  const files = findSources(SRC_DIR);
  if (files.length === 0) {
    process.stderr.write(`compile.js: no .sol files under ${SRC_DIR}\n`);
    process.exit(1);
  }
  const sources = {};
  for (const f of files) sources[f] = { content: fs.readFileSync(path.join(CONTRACTS_DIR, f), 'utf8') };

  // Imports are relative ("./lib/X.sol"), so every unit they name is among `sources`; anything
  // else is refused rather than read from disk.
  const findImports = (p) => ({ error: `import not found under contracts/src: ${p}` });
  const input = { language: 'Solidity', sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

  const diagnostics = output.errors || [];
  const errors = diagnostics.filter((d) => d.severity === 'error');
  for (const d of diagnostics) {
    process.stderr.write((d.formattedMessage || `${d.severity}: ${d.message}`).trimEnd() + '\n');
  }
  if (errors.length > 0) {
    process.stderr.write(`compile.js: ${errors.length} compiler error(s)\n`);
    process.exit(1);
  }

  // Only deployable contracts get an artifact: not interfaces, libraries or abstract contracts
  // (their ABIs are part of the contracts that use them).
  const deployable = new Set();
  for (const file of Object.keys(output.sources || {})) {
    for (const node of output.sources[file].ast.nodes) {
      if (node.nodeType === 'ContractDefinition' && node.contractKind === 'contract' && !node.abstract) {
        deployable.add(`${file}:${node.name}`);
      }
    }
  }

  const artifacts = new Map();
  for (const file of Object.keys(output.contracts || {}).sort()) {
    for (const name of Object.keys(output.contracts[file]).sort()) {
      if (!deployable.has(`${file}:${name}`)) continue;
      if (artifacts.has(name)) {
        process.stderr.write(`compile.js: contract name ${name} is defined twice (${artifacts.get(name).file}, ${file})\n`);
        process.exit(1);
      }
      const c = output.contracts[file][name];
      const bytecode = '0x' + c.evm.bytecode.object;
      const deployedBytecode = '0x' + c.evm.deployedBytecode.object;
      if (bytecode.includes('__$') || deployedBytecode.includes('__$')) {
        process.stderr.write(`compile.js: ${name} needs library linking, which is not supported\n`);
        process.exit(1);
      }
      const artifact = {
        contractName: name,
        abi: c.abi,
        bytecode,
        deployedBytecode,
        compiler: COMPILER_VERSION,
      };
      artifacts.set(name, { file, text: JSON.stringify(artifact, null, 2) + '\n' });
    }
  }
  return artifacts;
}

function existingArtifacts() {
  if (!fs.existsSync(ARTIFACTS_DIR)) return [];
  return fs
    .readdirSync(ARTIFACTS_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort();
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const solc = loadSolc(opts.solcDir);
  const artifacts = compile(solc);
  const wanted = new Set([...artifacts.keys()].map((n) => `${n}.json`));
  const stale = existingArtifacts().filter((f) => !wanted.has(f));

  if (opts.check) {
    const problems = [];
    for (const [name, { text }] of artifacts) {
      const p = path.join(ARTIFACTS_DIR, `${name}.json`);
      if (!fs.existsSync(p)) problems.push(`missing: contracts/artifacts/${name}.json`);
      else if (fs.readFileSync(p, 'utf8') !== text) problems.push(`differs: contracts/artifacts/${name}.json`);
    }
    for (const f of stale) problems.push(`stale (no such contract): contracts/artifacts/${f}`);
    if (problems.length > 0) {
      for (const p of problems) process.stdout.write(p + '\n');
      process.stderr.write('compile.js: artifacts are out of date; run scripts/contracts build\n');
      process.exit(1);
    }
    process.stdout.write(`compile.js: ${artifacts.size} artifacts up to date (solc ${COMPILER_VERSION})\n`);
    return;
  }

  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  let written = 0;
  for (const [name, { text }] of artifacts) {
    const p = path.join(ARTIFACTS_DIR, `${name}.json`);
    if (fs.existsSync(p) && fs.readFileSync(p, 'utf8') === text) continue;
    fs.writeFileSync(p, text);
    written++;
  }
  for (const f of stale) fs.unlinkSync(path.join(ARTIFACTS_DIR, f));
  process.stdout.write(
    `compile.js: ${artifacts.size} artifacts (${written} written, ${stale.length} removed) in contracts/artifacts (solc ${COMPILER_VERSION})\n`,
  );
}

main();
