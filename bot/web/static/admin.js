// The dashboard: inside Telegram, sign in with the Mini App's initData once (the server sets
// the session cookie); a chosen photo is sent as a data: URL in its form.
(function () {
  "use strict";
  var tg = window.Telegram && window.Telegram.WebApp && window.Telegram.WebApp.initData
    ? window.Telegram.WebApp : null;
  if (tg && !document.querySelector("form[action='/admin/signout']") && !document.querySelector("[data-refused]")) {
    fetch("/admin/signin/telegram", { method: "POST", credentials: "same-origin",
      headers: { "X-Telegram-Init-Data": tg.initData } })
      .then(function (r) { if (r.ok) location.reload(); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("form[data-photo]"), function (form) {
    form.querySelector("input[type=file]").addEventListener("change", function (ev) {
      var file = ev.target.files[0]; if (!file) return;
      var reader = new FileReader();
      reader.onload = function () { form.querySelector("input[name=data]").value = reader.result; form.submit(); };
      reader.readAsDataURL(file);
    });
  });
})();
