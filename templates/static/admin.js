// RiceBall admin: optional conveniences; every page works without them.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  const text = source.value !== undefined ? source.value : source.textContent;
  navigator.clipboard.writeText(text).then(() => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  }, () => { if (source.select) source.select(); });
});

// Choosing another provider lists its models (the same as pressing "Load this provider's models").
document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-reload]")) {
    const reload = document.getElementById("reload-models");
    if (reload) reload.click();
  }
});

// The base URL follows the provider type (its usual URL) until the admin types one, which is never
// overwritten.
document.addEventListener("input", (event) => {
  if (event.target.id === "base_url") event.target.dataset.typed = event.target.value ? "yes" : "";
});
document.addEventListener("change", (event) => {
  if (event.target.id !== "type") return;
  const option = event.target.selectedOptions[0];
  const baseUrl = document.getElementById("base_url");
  if (!baseUrl || baseUrl.dataset.typed === "yes") return;
  const known = [...event.target.options].some((o) => o.dataset.defaultBaseUrl && o.dataset.defaultBaseUrl === baseUrl.value);
  if (!baseUrl.value || known) baseUrl.value = option.dataset.defaultBaseUrl || "";
});

// A form that comes back with problems puts the cursor on the first field to fix.
document.addEventListener("DOMContentLoaded", () => {
  if (!document.querySelector(".error-summary")) return;
  const first = document.querySelector('form [aria-invalid="true"]');
  if (first) first.focus();
  else document.querySelector(".error-summary").scrollIntoView();
});
