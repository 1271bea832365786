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

// The provider type suggests its usual base URL while the field is empty.
document.addEventListener("change", (event) => {
  if (event.target.id !== "type") return;
  const option = event.target.selectedOptions[0];
  const baseUrl = document.getElementById("base_url");
  if (baseUrl && !baseUrl.value && option.dataset.defaultBaseUrl) baseUrl.value = option.dataset.defaultBaseUrl;
});
