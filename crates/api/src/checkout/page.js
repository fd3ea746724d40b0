// The checkout page's live parts: copy buttons, choosing an option without a button press, the
// countdown to expiry and the status, pushed by /pay/{id}/events (Server-Sent Events) or, where
// that is not available, polled from /pay/{id}/status. Everything here only adds to the
// server-rendered page, which is complete without it. Text goes in through textContent only; the
// page's own words come from its data-text-* attributes, in the page's language.
(() => {
  "use strict";
  const root = document.getElementById("checkout");
  if (!root) return;
  const POLL_MS = 3000;
  const POLL_MS_PAID = 15000; // paid can still become overpaid
  const FINAL = new Set(["overpaid", "expired", "void", "refunded"]);
  const TAKES_PAYMENT = new Set(["open", "underpaid"]);
  // Where the "Return to merchant" link is shown (page.rs `settled` keeps the same list).
  const SETTLED = new Set(["paid", "overpaid", "expired", "void", "refunded", "invalid"]);
  const data = root.dataset;
  const byId = (id) => document.getElementById(id);
  // The server's clock minus this one, so the countdown does not trust the payer's clock.
  const skewMs = Date.parse(data.now) - Date.now();
  const expiresAt = Date.parse(data.expiresAt);
  let state = data.state;

  for (const button of document.querySelectorAll("button[data-copy]")) {
    const label = button.textContent;
    button.hidden = false;
    button.addEventListener("click", async () => {
      const ok = await copy(button.dataset.copy);
      button.textContent = ok ? data.textCopied : data.textSelectAndCopy;
      setTimeout(() => { button.textContent = label; }, 1500);
    });
  }

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      // Not a secure context, or no permission: the old way.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      let ok = false;
      try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
      area.remove();
      return ok;
    }
  }

  for (const [selectId, submitId] of [["asset", "choose-submit"], ["locale", "locale-submit"]]) {
    const select = byId(selectId);
    if (select && select.form) {
      const submit = byId(submitId);
      if (submit) submit.hidden = true;
      select.addEventListener("change", () => select.form.submit());
    }
  }

  const countdown = byId("countdown");
  let expiryPolled = false;
  function two(n) { return String(n).padStart(2, "0"); }
  function tick() {
    const left = Math.max(0, Math.floor((expiresAt - (Date.now() + skewMs)) / 1000));
    if (countdown) {
      const h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
      countdown.textContent = left > 0
        ? data.textExpiresIn.replace("{left}", (h > 0 ? h + ":" + two(m) : String(m)) + ":" + two(s))
        : data.textTimeIsUp;
    }
    if (left === 0 && !expiryPolled) {
      expiryPolled = true;
      poll();
    }
  }
  tick();
  const ticker = setInterval(tick, 1000);

  function show(status) {
    if (status.state !== state) {
      root.classList.remove("state-" + state);
      root.classList.add("state-" + status.state);
      state = status.state;
      data.state = state;
    }
    byId("status-headline").textContent = status.headline;
    byId("status-message").textContent = status.message;
    const list = byId("payment-list");
    if (list) {
      // Each line as the server writes it, with its explorer link (an http(s) URL it built).
      const explorerText = list.dataset.textViewTransaction;
      list.replaceChildren(...status.payments.map((p) => {
        const item = document.createElement("li");
        item.textContent = p.summary;
        if (p.explorer_url && /^https?:\/\//.test(p.explorer_url)) {
          const link = document.createElement("a");
          link.className = "explorer";
          link.href = p.explorer_url;
          link.rel = "noreferrer";
          link.target = "_blank";
          link.textContent = explorerText;
          item.append(" ", link);
        }
        return item;
      }));
      byId("payments").hidden = status.payments.length === 0;
    }
    if (FINAL.has(state)) clearInterval(ticker);
    const back = byId("return");
    if (back) back.hidden = !SETTLED.has(state);
    // The amount to send (and so the QR code) changes when part of the invoice is paid: the page
    // shows it as rendered by the server.
    const option = status.payment_options.find((o) => o.asset === data.asset);
    if (option && TAKES_PAYMENT.has(state)) {
      const due = state === "underpaid" ? option.amount_remaining_minor : option.amount_minor;
      if (due !== data.amountMinor) location.reload();
    }
  }

  let timer = null;
  let pushed = false;
  async function poll() {
    clearTimeout(timer);
    try {
      const response = await fetch(data.statusUrl, { cache: "no-store", headers: { accept: "application/json" } });
      if (response.ok) show(await response.json());
    } catch (_) {
      // Offline for a moment: the next poll tries again.
    }
    if (!FINAL.has(state)) timer = setTimeout(poll, state === "paid" || pushed ? POLL_MS_PAID : POLL_MS);
  }

  // Pushed updates: each `status` event is the JSON /status answers. The slow poll stays as a
  // safety net; when the stream fails for good, polling takes over at its usual pace.
  if (window.EventSource && data.eventsUrl) {
    const events = new EventSource(data.eventsUrl);
    events.addEventListener("status", (event) => {
      pushed = true;
      root.dataset.live = "sse";
      try { show(JSON.parse(event.data)); } catch (_) { /* a malformed event changes nothing */ }
      if (FINAL.has(state)) events.close();
    });
    events.addEventListener("error", () => {
      if (events.readyState === EventSource.CLOSED && !FINAL.has(state)) {
        pushed = false;
        delete root.dataset.live;
        poll();
      }
    });
  }
  timer = setTimeout(poll, POLL_MS);
})();
