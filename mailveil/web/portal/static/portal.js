// The visitor's time zone, for dates written on the server; one reload when it changes.
(function () {
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone && document.documentElement.dataset.tz !== zone
      && document.cookie.indexOf("mailveil_tz=" + zone) === -1) {
    document.cookie = "mailveil_tz=" + zone + "; path=/portal; SameSite=Lax; max-age=31536000";
    location.reload();
  }
})();

document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  var field = document.getElementById(button.dataset.copy);
  var status = button.parentElement.querySelector(".copied");
  function done() { status.textContent = button.dataset.copied; }
  field.select();
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, function () {
      document.execCommand("copy"); done();
    });
  } else {
    document.execCommand("copy"); done();
  }
});
