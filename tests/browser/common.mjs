// What the browser tests share: reading their environment, failing with a reason, and starting
// the system's Chromium through playwright-core (installed by tests/browser/install).

import { createRequire } from "node:module";
import path from "node:path";

const LAUNCH_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** The environment variable `name`; the script stops (exit 2) when it is not set. */
export function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${path.basename(process.argv[1])}: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Headless Chromium (`PAYRAIL_CHROMIUM`) driven by playwright-core from `PAYRAIL_BROWSER_MODULES`. */
export async function launch() {
  const executablePath = need("PAYRAIL_CHROMIUM");
  const modules = need("PAYRAIL_BROWSER_MODULES");
  const require = createRequire(path.join(modules, "package.json"));
  const { chromium } = require("playwright-core");
  return chromium.launch({ executablePath, headless: true, args: LAUNCH_ARGS });
}
