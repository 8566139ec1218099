// The buyer's page: loads each view as a server-rendered fragment and posts actions as JSON.
// Inside Telegram every request carries the Mini App's initData (checked by the server);
// elsewhere the session cookie speaks. The cart is the shop's (the same as in the chat).
(function () {
  "use strict";
  var tg = window.Telegram && window.Telegram.WebApp && window.Telegram.WebApp.initData
    ? window.Telegram.WebApp : null;
  var view = document.getElementById("view");
  var nav = document.getElementById("nav");
  var toastEl = document.getElementById("toast");
  var me = null, texts = {}, current = ["shop", {}];

  function cartCount(n) {
    var badge = document.getElementById("cart-count");
    if (badge) badge.textContent = n ? String(n) : "";
  }
  function headers(extra) {
    var h = extra || {};
    if (tg) h["X-Telegram-Init-Data"] = tg.initData;
    return h;
  }
  function toast(text) {
    toastEl.textContent = text; toastEl.hidden = false;
    clearTimeout(toast.timer); toast.timer = setTimeout(function () { toastEl.hidden = true; }, 4000);
  }
  function key() {
    if (window.crypto && crypto.getRandomValues) {
      var a = new Uint8Array(12); crypto.getRandomValues(a);
      return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
    }
    return String(Date.now()) + String(Math.random()).slice(2, 10);
  }
  function fetchText(path) {
    return fetch(path, { headers: headers(), credentials: "same-origin" }).then(function (r) {
      if (r.status === 401 || (r.status === 403 && /json/.test(r.headers.get("content-type") || "")))
        return r.json().then(function (j) { signIn(j); throw new Error("signin"); });
      return r.text();
    });
  }
  function post(path, body) {
    body.csrf = me && me.csrf;
    return fetch(path, { method: "POST", credentials: "same-origin",
      headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) })
      .then(function (r) { return r.json().catch(function () { return { ok: false, error: texts.error }; }); });
  }
  function signIn(answer) {
    if (answer && answer.login) { location.href = answer.login + "?next=" + encodeURIComponent(location.pathname); return; }
    view.innerHTML = ""; var p = document.createElement("p"); p.className = "notice";
    p.textContent = (answer && answer.error) || "Please open the shop from the bot."; view.appendChild(p);
  }
  function show(name, params) {
    current = [name, params || {}];
    var q = new URLSearchParams(params || {});
    Array.prototype.forEach.call(nav.querySelectorAll("[data-view]"), function (b) {
      b.classList.toggle("on", b.getAttribute("data-view") === name);
    });
    return fetchText("/app/v/" + name + "?" + q.toString()).then(function (html) {
      view.innerHTML = html; window.scrollTo(0, 0); view.setAttribute("data-current", name);
    }).catch(function (e) { if (e.message !== "signin") toast(texts.error || "Error"); });
  }
  function loadNav() {
    return fetchText("/app/v/nav").then(function (html) {
      nav.innerHTML = html;
      var holder = nav.querySelector("[data-texts]");
      texts = holder ? JSON.parse(holder.getAttribute("data-texts")) : {};
    });
  }

  function checkout(wallet) {
    return post("/app/api/checkout", { key: key(), wallet: !!wallet }).then(function (r) {
      if (!r.ok) { toast(r.error || texts.error); return; }
      if (r.kind === "paid") { paid(r.message, r.order); return; }
      if (r.kind === "telegram") {
        toast(texts["pay.telegram"]);
        tg.openInvoice(r.link, function (status) {
          if (status === "paid") paid(texts["pay.done"].replace("{order}", r.order), r.order);
          else toast(texts["pay.cancelled"]);
        });
        return;
      }
      if (r.kind === "wechat") {
        toast(texts["pay.wechat"]);
        var go = function () {
          window.WeixinJSBridge.invoke("getBrandWCPayRequest", r.params, function (res) {
            if (res && res.err_msg === "get_brand_wcpay_request:ok") paid(texts["pay.done"].replace("{order}", r.order), r.order);
            else toast(texts["pay.cancelled"]);
          });
        };
        if (window.WeixinJSBridge) go(); else document.addEventListener("WeixinJSBridgeReady", go, false);
      }
    });
  }
  function paid(message, order) {
    toast(message); cartCount(0);
    // the channel's payment is recorded by the bot a moment later: look again until it is
    var tries = 0;
    (function again() {
      show("orders").then(function () {
        var row = view.querySelector('[data-order="' + order + '"]');
        if ((!row || row.getAttribute("data-status") === "awaiting_payment") && ++tries < 15) setTimeout(again, 700);
      });
    })();
  }

  document.addEventListener("click", function (ev) {
    var el = ev.target.closest("[data-view],[data-add],[data-remove],[data-checkout],[data-lang],[data-receive]");
    if (!el) return;
    ev.preventDefault();
    if (el.hasAttribute("data-lang")) {
      document.cookie = "sf_lang=" + el.getAttribute("data-lang") + "; path=/; SameSite=Lax";
      loadNav().then(function () { show(current[0], current[1]); });
    } else if (el.hasAttribute("data-add")) {
      var input = view.querySelector('input[name="qty"]');
      var n = Math.max(1, Math.min(99, parseInt(input && input.value, 10) || 1));
      post("/app/api/cart", { op: "add", sku: el.getAttribute("data-add"), qty: n }).then(function (r) {
        if (r.ok) cartCount(r.count);
        toast(r.ok ? r.message : (r.error || texts.error));
      });
    } else if (el.hasAttribute("data-remove")) {
      post("/app/api/cart", { op: "remove", sku: el.getAttribute("data-remove") }).then(function (r) {
        if (r.ok) cartCount(r.count);
        show("cart");
      });
    } else if (el.hasAttribute("data-receive")) {
      post("/app/api/receive", { order: el.getAttribute("data-receive") }).then(function (r) {
        toast(r.ok ? r.message : (r.error || texts.error)); show("orders");
      });
    } else if (el.hasAttribute("data-checkout")) {
      el.disabled = true;
      checkout(el.getAttribute("data-checkout") === "wallet").then(function () { el.disabled = false; });
    } else {
      var params = {};
      ["sku", "page", "q", "cat"].forEach(function (k) {
        var v = el.getAttribute("data-" + k); if (v) params[k] = v;
      });
      show(el.getAttribute("data-view"), params);
    }
  });
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.hasAttribute("data-search")) {
      ev.preventDefault(); show("shop", { q: form.q.value });
    } else if (form.hasAttribute("data-address")) {
      ev.preventDefault();
      var field = function (n) { return form.elements.namedItem(n).value; };
      post("/app/api/address", { name: field("name"), phone: field("phone"),
        address: field("address") }).then(function (r) { toast(r.ok ? r.message : (r.error || texts.error)); });
    } else if (form.hasAttribute("data-withdraw")) {
      ev.preventDefault();
      post("/app/api/withdraw", { amount: form.amount.value, key: key() }).then(function (r) {
        toast(r.ok ? r.message : (r.error || texts.error)); if (r.ok) show("rebates");
      });
    }
  });

  if (tg) { tg.ready(); tg.expand(); }
  fetch("/app/api/me", { headers: headers(), credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (answer) {
      if (!answer.ok) { signIn(answer); return; }
      me = answer; document.documentElement.lang = me.lang === "zh" ? "zh-CN" : "en";
      return loadNav().then(function () {
        var start = new URLSearchParams(location.search).get("view") || "shop";
        return show(start);
      });
    }).catch(function () { toast("Error"); });
})();
