// Creates an invoice and reads it back through the TypeScript client generated from payrail's
// /openapi.json (openapi-typescript types, openapi-fetch calls). The program is type-checked
// against the generated types before it runs: a field the document misnames fails here.
//
// Usage (tests/clients/run does all of it): openapi-typescript openapi.json -o schema.d.ts; tsc;
// node out/invoice.js BASE_URL API_KEY
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

// Node's process, without its whole type package.
declare const process: { argv: string[] };

const [base, key] = process.argv.slice(2);
if (!base || !key) throw new Error("usage: invoice.js BASE_URL API_KEY");

const client = createClient<paths>({ baseUrl: base, headers: { authorization: `Bearer ${key}` } });

const created = await client.POST("/v1/invoices", {
  body: { amount: "25.00", currency: "USD", order_id: "client-ts", locale: "fr", buyer_email: "payer@example.com" },
});
if (created.error || !created.data) throw new Error(`create failed: ${JSON.stringify(created.error)}`);
const invoice = created.data;

const read = await client.GET("/v1/invoices/{id}", { params: { path: { id: invoice.id } } });
if (read.error || !read.data) throw new Error(`read failed: ${JSON.stringify(read.error)}`);
const shown = read.data;
const same =
  shown.id === invoice.id &&
  shown.status === "open" &&
  shown.amount === "25.00" &&
  shown.order_id === "client-ts" &&
  shown.locale === "fr" &&
  shown.payment_options.length > 0;
if (!same) throw new Error(`read back otherwise: ${JSON.stringify(shown)}`);

const status = await client.GET("/pay/{id}/status", { params: { path: { id: invoice.id } } });
if (status.error || !status.data || status.data.locale !== "fr") throw new Error(`status: ${JSON.stringify(status)}`);

const missing = await client.GET("/v1/invoices/{id}", { params: { path: { id: "inv_doesnotexist0000000000" } } });
if (missing.response.status !== 404 || missing.error?.error.code !== "not_found") {
  throw new Error(`an unknown invoice answered ${missing.response.status}: ${JSON.stringify(missing.error)}`);
}
console.log(`typescript client: created and read back ${invoice.id}`);
