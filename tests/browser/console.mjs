// The console in headless Chromium, against a running `payrail dev`, with each role:
// - the merchant signs in (sent to the sign-in page first), sees its invoices, filters them,
//   downloads the CSV, opens a paid invoice (payments, ledger entries, webhook events), sends an
//   event again, cannot open another merchant's invoice by its URL, and signs out;
// - finance sees the chains, starts a reconciliation run over a range of blocks and watches it
//   finish, and reads the trial balance;
// - the creator sees its earnings.
// Screenshots of each main view are taken. Scripts never run on the console's pages: any page
// error or console error (a refused resource) fails the test.
//
// Run by tests/it/console.rs, which starts the dev stack, prepares the data and passes:
//   PAYRAIL_CHROMIUM          the Chromium binary (Debian's chromium)
//   PAYRAIL_BROWSER_MODULES   the directory where tests/browser/install put playwright-core
//   PAYRAIL_API               the daemon's base URL
//   PAYRAIL_API_KEY           the merchant's API key
//   PAYRAIL_FINANCE_KEY       a finance key
//   PAYRAIL_CREATOR_KEY       a creator's key (the creator has a share of the paid invoice)
//   PAYRAIL_PAID_INVOICE      an invoice of the merchant, paid in ETH on Ethereum
//   PAYRAIL_OPEN_INVOICE      an open invoice of the merchant
//   PAYRAIL_OTHER_INVOICE     another merchant's invoice
//   PAYRAIL_SCREENSHOT_DIR    where screenshots go
// Exits non-zero with a reason when anything is not as it should be.

import { readFileSync } from "node:fs";
import path from "node:path";

import { check, launch, need } from "./common.mjs";

const RUN_TIMEOUT_MS = 120_000;

const api = need("PAYRAIL_API");
const merchantKey = need("PAYRAIL_API_KEY");
const financeKey = need("PAYRAIL_FINANCE_KEY");
const creatorKey = need("PAYRAIL_CREATOR_KEY");
const paid = need("PAYRAIL_PAID_INVOICE");
const open = need("PAYRAIL_OPEN_INVOICE");
const other = need("PAYRAIL_OTHER_INVOICE");
const shots = need("PAYRAIL_SCREENSHOT_DIR");

async function screenshot(page, name) {
  const file = path.join(shots, `console-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
}

const browser = await launch();
const problems = [];
const refusedOnPurpose = new Set();

/** A fresh browser signed in with `key`, starting from `start` (the sign-in page comes first). */
async function signIn(key, start, landing) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1, acceptDownloads: true });
  const page = await context.newPage();
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // The refused pages this test opens on purpose report their status as a console error.
    if (message.type() === "error" && !refusedOnPurpose.has(page.url())) problems.push(`console error on ${page.url()}: ${message.text()}`);
  });
  await page.goto(`${api}${start}`);
  check(new URL(page.url()).pathname === "/console/login", `not sent to sign in: ${page.url()}`);
  await page.fill("#api_key", key);
  await Promise.all([page.waitForURL(`${api}${landing}`), page.click("main.login button[type=submit]")]);
  return { context, page };
}

async function text(page, selector) {
  return (await page.locator(selector).innerText()).trim();
}

/** The cells of a table's rows, by the table's section id. */
async function rows(page, id) {
  return page.locator(`#${id} tbody tr`).evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.innerText.trim())));
}

try {
  // ---- the merchant ----
  const merchant = await signIn(merchantKey, "/console/invoices", "/console/invoices");
  let page = merchant.page;
  check((await text(page, "h1")) === "Invoices", "the invoices page after signing in");
  let list = await rows(page, "invoices");
  const ids = list.map((r) => r[1]);
  check(ids.includes(paid) && ids.includes(open), `the merchant's invoices are listed: ${ids}`);
  check(!ids.includes(other), "another merchant's invoice is listed");
  await screenshot(page, "invoices");

  await page.selectOption("select[name=status]", "paid");
  await Promise.all([page.waitForURL((u) => u.searchParams.get("status") === "paid"), page.click("form.filters button[type=submit]")]);
  list = await rows(page, "invoices");
  check(list.length >= 1 && list.every((r) => r[5] === "paid"), `filtered by status: ${JSON.stringify(list)}`);
  check(list.some((r) => r[1] === paid) && !list.some((r) => r[1] === open), "the filter kept the paid invoice only");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#invoices a.csv")]);
  const csv = readFileSync(await download.path(), "utf8");
  check(csv.startsWith("Created,Invoice,Order,Amount,Paid,Status,Rails\r\n"), `the CSV's header: ${csv.slice(0, 80)}`);
  check(csv.includes(paid) && !csv.includes(open), "the CSV holds what the filtered page shows");
  console.log(`console.mjs: csv ${download.suggestedFilename()} ${csv.split("\r\n").length - 2} rows`);

  await Promise.all([page.waitForURL(`${api}/console/invoices/${paid}`), page.click(`a[href="/console/invoices/${paid}"]`)]);
  const payments = await rows(page, "payments");
  check(payments.length >= 1 && payments[0][1] === "Ethereum" && payments[0][5] === "confirmed", `the payment: ${JSON.stringify(payments)}`);
  const ledger = await rows(page, "ledger");
  check(ledger.length >= 2, `the payment's ledger entry has its postings: ${JSON.stringify(ledger)}`);
  let events = await rows(page, "events");
  check(events.length >= 1, "the invoice's webhook events");
  await screenshot(page, "invoice");
  const pendingBefore = Number(events[0][4]);
  await Promise.all([page.waitForURL(`${api}/console/invoices/${paid}`), page.locator("#events tbody tr").first().locator("button").click()]);
  events = await rows(page, "events");
  const delivered = Number(events[0][3]) + Number(events[0][4]) + Number(events[0][5]);
  check(delivered >= 1 && (Number(events[0][4]) >= pendingBefore || Number(events[0][5]) >= 1), `the event was queued again: ${JSON.stringify(events[0])}`);
  console.log(`console.mjs: replayed ${events[0][0]}`);

  refusedOnPurpose.add(`${api}/console/invoices/${other}`);
  const response = await page.goto(`${api}/console/invoices/${other}`);
  check(response.status() === 404, `another merchant's invoice by URL answered ${response.status()}`);
  check(!(await page.content()).includes("Payments"), "another merchant's invoice was shown");

  await page.goto(`${api}/console`);
  check((await page.locator("#volume-usd-chart svg rect").count()) >= 1, "the volume chart has bars");
  check((await page.locator("#conversion-chart svg title").first().textContent()).length > 0, "the chart has a title");
  await screenshot(page, "overview");
  await page.goto(`${api}/console/balances`);
  await screenshot(page, "balances");
  await page.goto(`${api}/console/webhooks`);
  await Promise.all([page.waitForURL(`${api}/console/login`), page.click("header form button")]);
  check((await page.goto(`${api}/console/invoices`)) && new URL(page.url()).pathname === "/console/login", "signed out");
  await merchant.context.close();

  // ---- finance ----
  const finance = await signIn(financeKey, "/console", "/console");
  page = finance.page;
  check((await text(page, "h1")) === "Finance overview", "finance's overview");
  await screenshot(page, "finance");
  await page.goto(`${api}/console/chains`);
  const chains = await rows(page, "chains");
  check(chains.length >= 6, `every dev chain is followed: ${JSON.stringify(chains)}`);
  const ethereum = chains.find((r) => r[1] === "eip155:1");
  check(ethereum && ethereum[2] === "ok", `Ethereum's watcher is healthy: ${JSON.stringify(ethereum)}`);
  await screenshot(page, "chains");
  const tip = Number(ethereum[4]);
  await page.goto(`${api}/console/reconciliation`);
  await page.selectOption("select[name=chain]", "eip155:1");
  await page.fill("input[name=from_block]", "0");
  await page.fill("input[name=to_block]", String(tip));
  await Promise.all([page.waitForURL(/\/console\/reconciliation\/rec_/), page.click("form.filters button[type=submit]")]);
  const run = new URL(page.url()).pathname.split("/").pop();
  console.log(`console.mjs: run ${run} over blocks 0–${tip}`);
  // The page reloads itself while the run scans; wait for the finished report.
  await page.locator("dl.figures", { hasText: "Result" }).waitFor({ timeout: RUN_TIMEOUT_MS });
  const result = await text(page, "dl.figures");
  check(result.includes("finished"), `the run finished: ${result}`);
  console.log(`console.mjs: run finished: ${result.replace(/\s+/g, " ")}`);
  await screenshot(page, "reconciliation");
  await page.goto(`${api}/console/reconciliation`);
  const runs = await rows(page, "runs");
  check(runs.some((r) => r[1] === run && r[5] === "finished"), "the run is listed as finished");
  await page.goto(`${api}/console/trial_balance`);
  const totals = await rows(page, "totals");
  check(totals.length >= 1 && totals.every((r) => r[3] === "yes"), `the trial balance balances: ${JSON.stringify(totals)}`);
  await screenshot(page, "trial-balance");
  refusedOnPurpose.add(`${api}/console/invoices/${paid}`);
  const forbidden = await page.goto(`${api}/console/invoices/${paid}`);
  check(forbidden.status() === 403, `finance opening a merchant's invoice page answered ${forbidden.status()}`);
  await finance.context.close();

  // ---- the creator ----
  const creator = await signIn(creatorKey, "/console", "/console");
  page = creator.page;
  check((await text(page, "h1")).endsWith("earnings"), "the creator's page");
  const earnings = await rows(page, "balances");
  check(earnings.length >= 1, `the creator's share of the paid invoice: ${JSON.stringify(earnings)}`);
  await screenshot(page, "creator");
  await creator.context.close();

  check(problems.length === 0, `the pages reported problems:\n${problems.join("\n")}`);
  console.log("console.mjs: done");
} finally {
  await browser.close();
}
