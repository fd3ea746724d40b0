// The checkout page in headless Chromium, against a running `payrail dev`: open the page of an
// invoice, pick ETH on Ethereum, see the QR code, address and amount, pay with `payrail pay`, and
// wait until the page says the invoice is paid. Screenshots are taken before and after paying.
// The page is also read in French, Spanish and German (the browser's language) and Japanese (the
// payer's pick on the page), with screenshots of the first three. Once paid, the page offers the
// way back to the merchant (the invoice's redirect_url), which the payer follows. Then the
// merchant refunds the ETH by claim link: the payer opens the refund page, enters an address, and
// the page shows the refund paid by the payout executor.
//
// Run by tests/checkout.rs, which starts the dev stack, creates the invoice and passes:
//   PAYRAIL_CHROMIUM          the Chromium binary (Debian's chromium)
//   PAYRAIL_BROWSER_MODULES   the directory where tests/browser/install put playwright-core
//   PAYRAIL_API               the daemon's base URL
//   PAYRAIL_API_KEY           the merchant's API key (to read the invoice and to pay it)
//   PAYRAIL_INVOICE           the invoice id (created with a redirect_url)
//   PAYRAIL_BIN               the payrail binary (for `payrail pay`)
//   PAYRAIL_SCREENSHOT_DIR    where screenshots go
// Exits non-zero with a reason when anything is not as it should be.

import { execFileSync } from "node:child_process";
import path from "node:path";

import { check, launch, need } from "./common.mjs";

const ETH = "eip155:1/slip44:60";
const PAID_TIMEOUT_MS = 120_000;

const api = need("PAYRAIL_API");
const key = need("PAYRAIL_API_KEY");
const invoiceId = need("PAYRAIL_INVOICE");
const bin = need("PAYRAIL_BIN");
const shots = need("PAYRAIL_SCREENSHOT_DIR");

async function invoice() {
  const response = await fetch(`${api}/v1/invoices/${invoiceId}`, { headers: { authorization: `Bearer ${key}` } });
  check(response.ok, `GET /v1/invoices/${invoiceId} answered ${response.status}`);
  return response.json();
}

async function screenshot(page, name) {
  const file = path.join(shots, `checkout-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
}

const VIEWPORT = { width: 480, height: 900 };
const options = (await invoice()).payment_options;
const option = options.find((o) => o.asset === ETH);
check(option && option.address, "the invoice has no ETH option with an address");
// Every option asks for an amount a person can type: no more decimals than the option's display
// decimals, and never less than the exact conversion.
for (const o of options) {
  const decimals = (o.amount.split(".")[1] || "").length;
  check(decimals <= o.display_decimals, `${o.asset} asks for ${o.amount}, more than ${o.display_decimals} decimals`);
  check(BigInt(o.amount_minor) >= BigInt(o.amount_exact_minor), `${o.asset} asks for less than the exact amount`);
}

const browser = await launch();
try {
  // Without JavaScript the page still shows all a payer needs: option, QR code, address, amount.
  const plain = await browser.newContext({ javaScriptEnabled: false, viewport: VIEWPORT });
  const still = await plain.newPage();
  await still.goto(`${api}/pay/${invoiceId}?asset=${encodeURIComponent(ETH)}`);
  check(await still.locator("#qr svg").isVisible(), "no QR code without JavaScript");
  check((await still.locator("#pay-address").textContent()) === option.address, "no address without JavaScript");
  check((await still.locator("#pay-amount").textContent()) === option.amount, "no amount without JavaScript");
  check(await still.locator("#choose-submit").isVisible(), "without JavaScript the choice needs its button");
  check(!(await still.locator("button.copy").first().isVisible()), "copy buttons shown where they cannot work");
  await plain.close();

  const context = await browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1 });
  const page = await context.newPage();
  // Script errors and refused resources (a CSP violation is a console error) fail the test.
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });

  const response = await page.goto(`${api}/pay/${invoiceId}`);
  check(response && response.status() === 200, `GET /pay/${invoiceId} answered ${response && response.status()}`);
  check((await page.locator("#status-headline").textContent()) === "Awaiting payment", "the page does not await payment");

  // Pick ETH on Ethereum: the script submits the choice as ?asset=.
  await Promise.all([
    page.waitForURL((url) => url.searchParams.get("asset") === ETH),
    page.selectOption("#asset", ETH),
  ]);
  check((await page.locator("#asset").inputValue()) === ETH, "ETH is not the selected option");
  const qr = page.locator("#qr svg");
  await qr.waitFor({ state: "visible" });
  const box = await qr.boundingBox();
  check(box && box.width >= 150 && box.height >= 150, `the QR code is too small: ${JSON.stringify(box)}`);

  check((await page.locator("#pay-address").textContent()) === option.address, "the page shows another address");
  check((await page.locator("#pay-amount").textContent()) === option.amount, "the page shows another amount");
  check(await page.locator("button.copy").first().isVisible(), "the copy buttons are hidden");
  check(/^Expires in \d+:\d\d/.test(await page.locator("#countdown").textContent()), "no countdown");
  await screenshot(page, "open");

  // The browser's language chooses the page's: its words, its money, its countdown.
  const LOCALES = [
    { browser: "fr-FR", lang: "fr", headline: "En attente du paiement", total: "25,00\u00a0$US", countdown: /^Expire dans \d+:\d\d/ },
    { browser: "es-ES", lang: "es", headline: "Esperando el pago", total: "25,00\u00a0US$", countdown: /^Vence en \d+:\d\d/ },
    { browser: "de-DE", lang: "de", headline: "Warten auf Zahlung", total: "25,00\u00a0$", countdown: /^Läuft ab in \d+:\d\d/ },
  ];
  for (const l of LOCALES) {
    const localized = await browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1, locale: l.browser });
    const shown = await localized.newPage();
    shown.on("pageerror", (error) => problems.push(`${l.lang} page error: ${error.message}`));
    await shown.goto(`${api}/pay/${invoiceId}?asset=${encodeURIComponent(ETH)}`);
    check((await shown.locator("html").getAttribute("lang")) === l.lang, `${l.browser}: the page is not in ${l.lang}`);
    check((await shown.locator("#status-headline").textContent()) === l.headline, `${l.browser}: headline ${await shown.locator("#status-headline").textContent()}`);
    check((await shown.locator("#total").textContent()) === l.total, `${l.browser}: total ${await shown.locator("#total").textContent()}`);
    check((await shown.locator("#pay-amount").textContent()) === option.amount, `${l.browser}: the amount to send is written otherwise`);
    await shown.waitForFunction((re) => new RegExp(re).test(document.getElementById("countdown").textContent), l.countdown.source);
    await screenshot(shown, l.lang);
    if (l.lang === "de") {
      // The payer picks Japanese on the page: the choice is kept with the option.
      await Promise.all([shown.waitForURL((url) => url.searchParams.get("locale") === "ja"), shown.selectOption("#locale", "ja")]);
      check((await shown.locator("#status-headline").textContent()) === "お支払いをお待ちしています", "the language switch did not take");
      check(new URL(shown.url()).searchParams.get("asset") === ETH, "the language switch lost the chosen option");
    }
    await localized.close();
  }

  const paid = execFileSync(bin, ["pay", "--api", api, "--key", key, "--invoice", invoiceId, "--asset", ETH], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  process.stdout.write(paid);

  // Ethereum asks 3 confirmations for this amount and the dev chain mines a block a second, so
  // "processing" may be over before a poll sees it: show it when it is seen, do not require it.
  try {
    await page.waitForSelector("main.state-processing", { timeout: 10_000 });
    const message = await page.locator("#status-message").textContent();
    check(/Confirmations: \d+\/\d+/.test(message), `processing without confirmations: ${message}`);
    console.log(`processing: ${message}`);
    await screenshot(page, "processing");
  } catch (error) {
    if (!String(error).includes("Timeout")) throw error;
    console.log("processing: not caught between two polls");
  }

  await page.waitForSelector("main.state-paid", { timeout: PAID_TIMEOUT_MS });
  check((await page.locator("#status-headline").textContent()) === "Paid", "the headline does not say Paid");
  check(!(await page.locator("#pay").isVisible()), "the address is still offered after payment");
  check((await page.locator("#payment-list li").count()) === 1, "the payment is not listed");
  check((await page.locator("#checkout").getAttribute("data-live")) === "sse", "the page was not updated by its event stream");
  // The way back to the merchant appears with the payment, without a reload.
  const back = page.locator("#return");
  await back.waitFor({ state: "visible", timeout: 5_000 });
  const redirect = (await invoice()).redirect_url;
  check((await back.getAttribute("href")) === redirect, `the way back leads to ${await back.getAttribute("href")}, not ${redirect}`);
  await screenshot(page, "paid");
  check(problems.length === 0, problems.join("\n"));
  // The merchant's page is not the checkout's to judge (its favicon may well be missing).
  page.removeAllListeners("console");
  await Promise.all([page.waitForURL(redirect), back.click()]);
  console.log(`returned to ${page.url()}`);
  console.log("checkout.mjs: paid");

  // The merchant refunds it all by claim link; the payer claims it on the refund page.
  const refundResponse = await fetch(`${api}/v1/invoices/${invoiceId}/refunds`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ method: "crypto" }),
  });
  const refund = await refundResponse.json();
  check(refundResponse.status === 201, `POST refunds answered ${refundResponse.status}: ${JSON.stringify(refund)}`);
  check(refund.asset === ETH && refund.status === "open", `not an open ETH refund: ${JSON.stringify(refund)}`);
  const token = refund.claim_url.split("/").pop();
  const claim = await context.newPage();
  claim.on("pageerror", (error) => problems.push(`refund page error: ${error.message}`));
  const opened = await claim.goto(`${api}/refund/${token}`);
  check(opened && opened.status() === 200, `GET /refund answered ${opened && opened.status()}`);
  check((await claim.locator("#status-headline").textContent()) === "Claim your refund", "the refund page does not offer a claim");
  const owed = await claim.locator("#status-message").textContent();
  check(owed.includes(" ETH on Ethereum"), `the refund page does not say what is owed: ${owed}`);
  // A typo is refused on the page, and nothing is claimed.
  await claim.fill("#address", "0x1234");
  await Promise.all([claim.waitForLoadState("load"), claim.click("#claim-button")]);
  check(await claim.locator("#error").isVisible(), "a malformed address was not refused");
  const refundAddress = "0x00000000000000000000000000000000000beef1";
  await claim.fill("#address", `ethereum:${refundAddress}@1`);
  await screenshot(claim, "refund-claim");
  await Promise.all([claim.waitForLoadState("load"), claim.click("#claim-button")]);
  check((await claim.locator("#status-headline").textContent()) === "Refund on its way", "the claim was not taken");
  const started = Date.now();
  while ((await claim.locator("#status-headline").textContent()) !== "Refund paid") {
    check(Date.now() - started < PAID_TIMEOUT_MS, "the refund was not paid in time");
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await claim.reload();
  }
  await screenshot(claim, "refund-paid");
  const shown = await (await fetch(`${api}/v1/refunds/${refund.id}`, { headers: { authorization: `Bearer ${key}` } })).json();
  check(shown.status === "paid" && /^0x[0-9a-f]{64}$/.test(shown.tx_hash), `the refund is not paid: ${JSON.stringify(shown)}`);
  check(shown.address.toLowerCase() === refundAddress, `paid to ${shown.address}`);
  check((await invoice()).status === "refunded", "the invoice is not refunded");
  check(problems.length === 0, problems.join("\n"));
  console.log(`checkout.mjs: refund paid ${shown.amount_minor} wei in ${shown.tx_hash}`);
} finally {
  await browser.close();
}
