/* kheops-ohif: the "Copy" button beside a read-only value (templates/launcher/copy_field.html).
 * The clipboard API needs a secure context (HTTPS or localhost); elsewhere the value is
 * selected and copied the old way, or left selected for Ctrl+C. What it says comes
 * translated in the button's data-copied and data-selected attributes. */
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button[data-copy]");
    if (!button) { return; }
    var field = document.getElementById(button.getAttribute("data-copy"));
    var status = button.parentNode.querySelector(".copy-status");
    if (!field) { return; }
    function report(copied) {
      if (status) {
        status.textContent = button.getAttribute(copied ? "data-copied" : "data-selected");
      }
    }
    function byHand() {
      field.focus();
      field.select();
      var copied = false;
      try { copied = document.execCommand("copy"); } catch { copied = false; }
      report(copied);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(function () { report(true); }, byHand);
    } else {
      byHand();
    }
  });
})();
